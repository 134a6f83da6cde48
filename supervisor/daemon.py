"""The daemon: one asyncio loop owns all state; everything else sends it messages.

File watcher, probes, the runtime's event stream, signals and the control socket only post
messages to ``Daemon._inbox``. The loop applies them to the pure policy (``policy.step``) and
performs the actions it returns; slow actions (launch, stop) run as tasks that post their
outcome back as events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from . import __version__
from . import modelhealth as mh
from .classify import Diagnosis, diagnose
from .engines import Activity, Call, engine_for
from .ggufinfo import GGUFInfo
from .health import ModelsSeen, Prober, loaded_names
from .lint import END_MARKERS, context_for
from .modelconfig import ModelSet, Pending, Problem, Validation, validate
from .notify import Notifier
from .policy import (
    LIVE_STATES,
    Adopted,
    Announce,
    Escalate,
    Event,
    Exited,
    Launch,
    Launched,
    LaunchFailed,
    Machine,
    Probe,
    ProbeResult,
    Restart,
    Rules,
    Start,
    State,
    Stop,
    Stopped,
    Terminate,
    Tick,
    step,
)
from .runtime import (
    EngineConnection,
    Instance,
    InstanceExited,
    InstanceHealth,
    LaunchError,
    RuntimeEvent,
    make_runtime,
    program_for,
)
from .settings import OnStop, Settings, SettingsError, load_settings
from .spec import ServerSpec, build_spec, rendered_dir, write_rendered
from .watch import Observation, Watcher, unsettled

log = structlog.get_logger("supervisor")

TICK_SECONDS = 0.5
RECHECK_SECONDS = 1.0
DRAIN_POLL_SECONDS = 0.25
HUNG_STOP_SECONDS = 2.0
FAILING_PROBE_SECONDS = 1.0
# What one model probe may add to the engine's work counter (n_decode / api_call count).
PROBE_WORK = 2.0
EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_RUNTIME = 1


@dataclass
class Command:
    """A control-socket request for the loop; ``reply`` is resolved by the loop."""

    name: str
    args: dict[str, Any]
    reply: asyncio.Future[dict[str, Any]]


@dataclass
class _FilesChanged:
    paths: set[str]


@dataclass
class _Signal:
    signum: int


@dataclass
class _Probed:
    result: Any
    models: ModelsSeen | None = None


@dataclass
class _Observed:
    """Which models are loaded and how busy the server is, as the probe loop saw it."""

    token: str
    at: float
    loaded: dict[str, str] | None
    activity: Activity


@dataclass
class _ModelProbed:
    token: str
    name: str
    ok: bool
    detail: str
    skipped: bool = False


@dataclass
class _ModelRestarted:
    token: str
    name: str
    ok: bool
    detail: str


@dataclass
class _Smoked:
    token: str
    name: str
    warning: str | None


@dataclass
class _Diagnosed:
    exited: InstanceExited
    diagnosis: Diagnosis


Message = (
    Event | RuntimeEvent | Command | _FilesChanged | _Signal | _Probed | _Observed
    | _ModelProbed | _ModelRestarted | _Diagnosed | _Smoked
)


@dataclass
class Rejection:
    revision_time: float
    problems: list[Problem]


@dataclass
class RecentEvent:
    at: float
    event: str
    detail: str


@dataclass
class _Counters:
    restarts_by_reason: dict[str, int] = field(default_factory=dict)
    model_restarts: int = 0
    drained_requests: int = 0
    cut_off_requests: int = 0
    drains: int = 0


def probe_rules_from(settings: Settings) -> mh.ProbeRules:
    h = settings.health
    return mh.ProbeRules(
        interval=h.model_interval, timeout=h.model_timeout, load_timeout=h.model_load_timeout,
        failure_threshold=h.model_failure_threshold,
        unloaded=h.probe_unloaded, idle_seconds=h.idle_seconds,
        model_restarts=h.model_restarts,
    )


def rules_from(settings: Settings) -> Rules:
    return Rules(
        restart=settings.restart,
        failure_threshold=settings.health.failure_threshold,
        startup_timeout=settings.server.startup_timeout,
        unhealthy_grace=settings.health.unhealthy_grace,
    )


class Daemon:
    def __init__(self, settings: Settings, *, settings_file: Path | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._settings_file = settings_file
        self._clock = clock
        self._engine = engine_for(settings.server.engine)
        self._runtime = make_runtime(settings)
        self._prober = Prober(settings.server.probe_base_url, self._engine,
                              settings.health.timeout)
        self._notifier = Notifier()
        self._rules = rules_from(settings)
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.machine = Machine(since=clock())
        self.models: ModelSet | None = None
        self.spec: ServerSpec | None = None
        self.instance: Instance | None = None
        self.rejection: Rejection | None = None
        self.models_seen: dict[str, str | None] = {}
        self.engine_connected = True
        self.recent: deque[RecentEvent] = deque(maxlen=50)
        self.started_wall = time.time()
        self._started_mono = clock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._exit: int | None = None
        self._ready_sent = False
        self._watcher: Watcher | None = None
        self._pending_reloads: list[asyncio.Future[dict[str, Any]]] = []
        self._last_launch: float | None = None
        self._exit_when_stopped = False
        self._counters = _Counters()
        self.warnings: list[Problem] = []
        self.pending: list[Pending] = []
        self._last_warnings: tuple[str, ...] = ()
        self._last_dropped: tuple[tuple[str, tuple[str, ...]], ...] = ()
        self._seen_files: dict[str, Observation] = {}
        self._recheck_at: float | None = None
        self._probe_rules = probe_rules_from(settings)
        self.model_health: dict[str, mh.ModelHealth] = {}
        self.loaded: dict[str, str] = {}
        # (time, work counter less our own probes' share, requests in flight)
        self._samples: deque[tuple[float, float | None, int | None]] = deque(maxlen=512)
        self._own_work = 0.0
        self._model_tasks: set[str] = set()
        self.last_failure: Diagnosis | None = None
        self._probe_wake = asyncio.Event()
        self.smoke: dict[str, tuple[float, str | None]] = {}
        self._ggufs: dict[str, GGUFInfo] = {}

    # -- helpers ---------------------------------------------------------------------------

    def post(self, message: Message) -> None:
        """The only way other tasks change state: hand the loop a message."""
        self._inbox.put_nowait(message)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _note(self, event: str, detail: str) -> None:
        self.recent.append(RecentEvent(time.time(), event, detail))

    def _status_line(self) -> str:
        m = self.machine
        line = f"{m.state.value}"
        if self.models is not None:
            line += f", revision {self.models.revision}, {len(self.models.entries)} model(s)"
        if m.state in (State.BACKOFF, State.FATAL) and m.last_reason:
            line += f": {m.last_reason}"
        if self.rejection is not None:
            line += "; config change rejected"
        if self.pending:
            line += f"; waiting for {len(self.pending)} model file(s) being written"
        return line

    # -- config ----------------------------------------------------------------------------

    def _load(self) -> tuple[ModelSet, ServerSpec] | Validation:
        """Validate config + models dir; a spec only when valid, complete and settled."""
        srv = self.settings.server
        result = validate(srv.model_config_file, srv.models_dir, context_for(self.settings))
        self._report_warnings(result)
        self._ggufs = dict(result.ggufs)
        if result.models is None:
            return result
        waiting = self._unsettled(result.models)
        if waiting:
            return Validation(None, result.problems, tuple(waiting))
        try:
            spec, launch = build_spec(self.settings, result.models, self._engine,
                                      program_for(self.settings, self._engine))
        except ValueError as exc:
            return Validation(None, (Problem(srv.model_config_file, str(exc)),), ())
        dropped = tuple(launch.dropped)
        if dropped != self._last_dropped:
            self._last_dropped = dropped
            for name, fields in dropped:
                log.warning("engine.fields_dropped", model=name, fields=list(fields),
                            engine=str(self._engine.kind),
                            action="not passed to llama-server (it uses the GGUF's own chat "
                            "template and stop tokens)")
        return result.models, spec

    def _report_warnings(self, result: Validation) -> None:
        """Log lint warnings once per distinct set, not on every re-check."""
        warnings = tuple(str(w) for w in result.warnings)
        if warnings == self._last_warnings:
            return
        self._last_warnings = warnings
        self.warnings = list(result.warnings)
        for w in result.warnings:
            log.warning("config.warning", code=w.code, file=str(w.file), line=w.line,
                        model=w.model, field=w.field, warning=w.message, hint=w.hint,
                        action="applied anyway (a warning, not an error)")

    def _unsettled(self, models: ModelSet) -> list[Pending]:
        """Referenced model files that changed within watch.settle_seconds."""
        stats: dict[str, tuple[int, int]] = {}
        for f in models.files:
            path = self.settings.server.models_dir / f.relpath
            try:
                st = path.stat()
            except OSError:
                continue
            stats[str(path)] = (st.st_size, st.st_mtime_ns)
        changing, self._seen_files = unsettled(
            stats, self._seen_files, now=self._clock(), wall_now=time.time(),
            quiet=self.settings.watch.settle_seconds)
        return [Pending(next((f.name for f in models.files if str(
            self.settings.server.models_dir / f.relpath) == p), "?"), Path(p),
            f"modified within the last {self.settings.watch.settle_seconds:g}s "
            "(still being written?)") for p in changing]

    def _reject(self, problems: list[Problem], keeping: str) -> None:
        self.rejection = Rejection(time.time(), problems)
        self.pending = []
        for p in problems:
            log.error("config.rejected", file=str(p.file), line=p.line, column=p.column,
                      field=p.field, error=p.message, hint=p.hint, action=keeping)
        self._note("config.rejected", "; ".join(str(p) for p in problems))
        self._notifier.status(self._status_line())

    def _wait_for(self, pending: list[Pending], keeping: str) -> None:
        """Files still being copied: apply nothing yet, look again in a second."""
        if [str(p.path) for p in pending] != [str(p.path) for p in self.pending]:
            for p in pending:
                log.info("config.pending", model=p.model, file=str(p.path), reason=p.reason,
                         action=f"{keeping}; re-checking every {RECHECK_SECONDS:g}s")
        self.pending = pending
        self.rejection = None
        self._recheck_at = self._clock() + RECHECK_SECONDS

    def _apply_config(self, reason: str) -> dict[str, Any]:
        """Re-read config and models; restart onto the result only if the spec changed."""
        self._recheck_at = None
        loaded = self._load()
        keeping = (f"kept revision {self.models.revision} running" if self.models
                   else "server not started")
        if isinstance(loaded, Validation):
            if loaded.errors:
                self._reject(loaded.errors, keeping)
                return {"applied": False, "restarting": False,
                        "errors": [str(p) for p in loaded.errors]}
            self._wait_for(list(loaded.pending), keeping)
            return {"applied": False, "restarting": False, "pending": [
                f"{p.model}: {p.path}: {p.reason}" for p in loaded.pending]}
        models, spec = loaded
        self.rejection = None
        self.pending = []
        if self.spec is not None and spec.digest() == self.spec.digest():
            log.debug("config.unchanged", revision=models.revision, reason=reason)
            self.models = models
            return {"applied": True, "restarting": False, "revision": models.revision}
        old = self.models.revision if self.models else None
        self.models, self.spec = models, spec
        # A new configuration deserves a fresh start for every model, FAILED ones included.
        self.model_health = {}
        log.info("config.applied", revision=models.revision, previous=old, reason=reason,
                 models=list(models.names))
        self._note("config.applied", f"revision {old} -> {models.revision} ({reason})")
        if old is None:
            self._feed(Start(f"config ready ({reason})"))
        else:
            self._feed(Restart(f"config changed ({reason}): revision {old} -> "
                               f"{models.revision}"))
        return {"applied": True, "restarting": True, "revision": models.revision}

    # -- the policy and its actions --------------------------------------------------------

    def _feed(self, event: Event) -> None:
        before = self.machine
        decision = step(before, event, self._clock(), self._rules)
        self.machine = decision.machine
        if decision.ignored:
            return
        if before.state is not self.machine.state or before.instance != self.machine.instance:
            self._probe_wake.set()  # a new state or instance: probe it now, not next interval
        if before.state is not self.machine.state:
            log.info("server.state", old=before.state.value, new=self.machine.state.value,
                     trigger=type(event).__name__, reason=self.machine.last_reason)
            self._notifier.status(self._status_line())
            if self.machine.state is State.STOPPED or self.machine.state is State.FATAL:
                self.instance = None
        for action in decision.actions:
            self._perform(action)
        retry_at = self.machine.retry_at
        if retry_at is not None and retry_at != before.retry_at:
            # Wake exactly when the backoff ends instead of at the next 0.5 s tick.
            delay = max(0.0, retry_at - self._clock()) + 0.005
            asyncio.get_running_loop().call_later(
                delay, self.post, Tick(random.random()))  # noqa: S311 - jitter only

    def _perform(self, action: Launch | Terminate | Announce) -> None:
        if isinstance(action, Launch):
            self._spawn(self._do_launch(action.reason), "launch")
        elif isinstance(action, Terminate):
            self._spawn(self._do_terminate(action.reason, action.drain, action.hung),
                        "terminate")
        else:
            logger = getattr(log, action.level)
            logger(action.event, reason=action.reason, state=self.machine.state.value,
                   restarts=self.machine.restarts)
            self._note(action.event, action.reason)
            if action.event == "server.fatal":
                self._notifier.status(f"FATAL: {action.reason}; "
                                      "run `supervisorctl restart` after fixing the cause")

    async def _do_launch(self, reason: str) -> None:
        spec = self.spec
        assert spec is not None
        try:
            write_rendered(spec, rendered_dir(self.settings))
            instance = await self._runtime.launch(spec)
        except (LaunchError, OSError) as exc:
            log.error("server.launch_failed", error=str(exc), reason=reason,
                      action="backing off before the next attempt")
            self.post(LaunchFailed(str(exc), random.random()))  # noqa: S311 - jitter only
            return
        self._last_launch = self._clock()
        self.instance = instance
        key = reason.split(":")[0]
        counts = self._counters.restarts_by_reason
        counts[key] = counts.get(key, 0) + 1
        log.info("server.launched", instance=instance.ident[:12], pid=instance.pid,
                 spec=spec.digest(), revision=spec.revision, reason=reason)
        self._note("server.launched", reason)
        self.post(Launched(instance.token))
        self._fresh_instance()

    async def _do_terminate(self, reason: str, drain: bool, hung: bool) -> None:
        token = self.instance.token if self.instance else None
        if drain and token is not None and self.settings.health.drain_timeout > 0:
            await self._drain(reason)
        timeout = self.settings.server.stop_timeout
        if hung:
            # It answers nothing: waiting the full graceful timeout only prolongs the outage.
            timeout = min(timeout, HUNG_STOP_SECONDS)
        await self._runtime.terminate(timeout)
        log.info("server.terminated", reason=reason)
        self.post(Stopped(token))

    async def _diagnose(self, exited: InstanceExited) -> None:
        """Read the dead instance's last log lines so the failure event can name a cause."""
        try:
            lines = await asyncio.wait_for(self._runtime.logs(80), 5)
        except (TimeoutError, OSError):
            lines = []
        self.post(_Diagnosed(exited, diagnose(exited.exit_code, exited.oom_killed, lines)))

    async def _loaded_now(self) -> list[str]:
        """Ask the engine which models are loaded right now (not the last observation)."""
        return loaded_names(await self._prober.loaded())

    async def _drain(self, reason: str) -> None:
        """Wait (bounded) until no request is in flight, so a planned stop cuts nothing."""
        timeout = self.settings.health.drain_timeout
        start = self._clock()
        loaded = await self._loaded_now()
        first = (await self._prober.activity(loaded)).in_flight
        if first is None:
            log.warning("drain.unknown", reason=reason, cause="the engine does not report "
                        "requests in flight", action="stopping without waiting")
            return
        if first == 0:
            return
        self._counters.drains += 1
        log.info("drain.started", in_flight=first, timeout=timeout, reason=reason)
        left: int | None = first
        while self._clock() - start < timeout:
            await asyncio.sleep(DRAIN_POLL_SECONDS)
            left = (await self._prober.activity(loaded)).in_flight
            if left == 0:
                self._counters.drained_requests += first
                log.info("drain.done", requests=first,
                         seconds=round(self._clock() - start, 3), action="stopping now")
                return
        cut = left or 0
        self._counters.drained_requests += max(0, first - cut)
        self._counters.cut_off_requests += cut
        log.warning("drain.timeout", in_flight=cut, timeout=timeout, reason=reason,
                    action="stopping anyway: these requests are cut off")

    # -- per-model health ------------------------------------------------------------------

    def _fresh_instance(self) -> None:
        names = self.models.names if self.models else ()
        self.model_health = mh.reset(names, self.model_health)
        self.loaded = {}
        self._samples.clear()
        self._own_work = 0.0

    def _schedule_model_probes(self) -> None:
        m = self.machine
        if (not self.settings.health.model_probes or m.instance is None
                or m.state not in (State.RUNNING, State.UNHEALTHY)):
            return
        now = self._clock()
        idle = mh.idle_for(list(self._samples), now, PROBE_WORK)
        health = {k: v for k, v in self.model_health.items() if k not in self._model_tasks}
        self._schedule_smoke(m.instance, now)
        for probe in mh.due(health, self.loaded, idle, now, self._probe_rules):
            self.model_health[probe.name] = mh.probe_started(self.model_health[probe.name], now)
            self._model_tasks.add(probe.name)
            self._own_work += PROBE_WORK
            self._spawn(self._probe_model(m.instance, probe), f"probe-{probe.name}")

    def _schedule_smoke(self, token: str, now: float) -> None:
        every = self.settings.health.smoke_interval
        if not every:
            return
        for name, state in self.loaded.items():
            key = f"smoke:{name}"
            last = self.smoke.get(name)
            if state != "loaded" or key in self._model_tasks or (last and now - last[0] < every):
                continue
            self.smoke[name] = (now, last[1] if last else None)
            self._model_tasks.add(key)
            self._spawn(self._smoke_model(token, name), key)

    async def _smoke_model(self, token: str, name: str) -> None:
        limit = self.settings.health.smoke_max_tokens
        call = self._engine.probe_call(name, False)
        body = dict(call.body or {}, max_tokens=limit, messages=[
            {"role": "user", "content": "Say hello in one short sentence."}])
        status, text = await self._prober.call(
            Call(call.method, call.path, body), self._probe_rules.timeout)
        warning = None
        if status == 200:
            try:
                data = json.loads(text)
                choice = data["choices"][0]
                content = str(choice.get("message", {}).get("content") or "")
                used = data.get("usage", {}).get("completion_tokens")
                gguf = self._ggufs.get(name)
                ends = [t for t in (gguf.eos_token, gguf.eot_token) if t] if gguf else []
                warning = mh.smoke_verdict(content, choice.get("finish_reason"), used, limit,
                                           [*ends, *END_MARKERS])
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                warning = f"unexpected answer shape: {exc}"
        self.post(_Smoked(token, name, warning))

    async def _probe_model(self, token: str, probe: mh.ProbeModel) -> None:
        entry = next((e for e in self.models.entries if e.name == probe.name), None) \
            if self.models else None
        call = self._engine.probe_call(probe.name, bool(entry and entry.embeddings),
                                       allow_load=probe.allow_load)
        status, text = await self._prober.call(call, probe.timeout)
        if status == 200:
            self.post(_ModelProbed(token, probe.name, True, ""))
        elif status == 400 and "not loaded" in text:
            # Unloaded since we looked: autoload=false refused instead of swapping it in.
            self.post(_ModelProbed(token, probe.name, False, text[:200], skipped=True))
        else:
            detail = f"HTTP {status}: {text[:300]}" if status else text
            self.post(_ModelProbed(token, probe.name, False, detail))

    async def _restart_model(self, token: str, name: str, reason: str) -> None:
        ok, detail = True, ""
        for call in self._engine.restart_model_calls(name):
            status, text = await self._prober.call(call, self._probe_rules.load_timeout)
            # "not running" / "already running" answers still leave the model restartable.
            if status not in (200, 400, 404):
                ok, detail = False, f"{call.method} {call.path}: HTTP {status}: {text[:200]}"
                break
        self.post(_ModelRestarted(token, name, ok, detail or reason))

    def _on_model_probed(self, msg: _ModelProbed) -> None:
        self._model_tasks.discard(msg.name)
        h = self.model_health.get(msg.name)
        if h is None or msg.token != self.machine.instance or msg.skipped:
            return
        h2, action = mh.probe_result(h, msg.ok, msg.detail, self._clock(), self._probe_rules)
        self.model_health[msg.name] = h2
        if not msg.ok:
            log.warning("probe.failed", probe="model", model=msg.name, error=msg.detail,
                        failures=h2.failures, state=h2.state.value)
        elif h.state is mh.ModelState.FAILING:
            log.info("model.recovered", model=msg.name)
        if isinstance(action, mh.RestartModel):
            diag = diagnose(None, False, [msg.detail])
            self._counters.model_restarts += 1
            log.warning("model.restart", model=msg.name, reason=action.reason,
                        cause=diag.cause.value, hint=diag.hint,
                        action="restarting this model alone; the server keeps serving")
            self._note("model.restart", f"{msg.name}: {action.reason}")
            self._spawn(self._restart_model(msg.token, msg.name, action.reason),
                        f"restart-{msg.name}")
        elif isinstance(action, mh.RestartServer):
            log.error("model.escalate", model=msg.name, reason=action.reason,
                      action="restarting the whole server")
            self._feed(Escalate(msg.token, action.reason, random.random()))  # noqa: S311
        elif isinstance(action, mh.GiveUp):
            diag = diagnose(None, False, [msg.detail])
            log.error("model.failed", model=msg.name, reason=action.reason,
                      cause=diag.cause.value, hint=diag.hint,
                      action="stopped probing it; other models keep serving; "
                      f"`supervisorctl restart {msg.name}` to try again")
            self._note("model.failed", action.reason)
            self._notifier.status(self._status_line() + f"; model {msg.name} FAILED")

    # -- message handling ------------------------------------------------------------------

    async def _handle(self, msg: Message) -> None:
        if isinstance(msg, Tick):
            self._notifier.watchdog(self._clock())
            if self._recheck_at is not None and self._clock() >= self._recheck_at:
                self._apply_config("re-check of files being written")
            self._feed(msg)
            self._schedule_model_probes()
        elif isinstance(msg, InstanceExited):
            self._spawn(self._diagnose(msg), "diagnose")
        elif isinstance(msg, _Diagnosed):
            d = msg.diagnosis
            self.last_failure = d
            log.warning("server.exited", reason=msg.exited.reason, cause=d.cause.value,
                        hint=d.hint, evidence=d.evidence, state=self.machine.state.value,
                        action="treated as a failure: restart with backoff")
            self._feed(Exited(msg.exited.token, f"{msg.exited.reason} ({d.cause.value})",
                              random.random()))  # noqa: S311
        elif isinstance(msg, _Observed):
            if msg.token == self.machine.instance:
                if msg.loaded is not None:
                    newly_failed = [n for n, st in msg.loaded.items()
                                    if st == "failed" and self.loaded.get(n) != "failed"]
                    self.loaded = msg.loaded
                    for name in newly_failed:
                        if name in self.model_health and name not in self._model_tasks:
                            self._on_model_probed(_ModelProbed(
                                msg.token, name, False, f"model name={name} failed to load "
                                "(the engine reports its load as failed)"))
                work = msg.activity.work
                self._samples.append((msg.at, None if work is None else work - self._own_work,
                                      msg.activity.in_flight))
        elif isinstance(msg, _ModelProbed):
            self._on_model_probed(msg)
        elif isinstance(msg, _Smoked):
            self._model_tasks.discard(f"smoke:{msg.name}")
            at, before = self.smoke.get(msg.name, (self._clock(), None))
            self.smoke[msg.name] = (at, msg.warning)
            if msg.warning and msg.warning != before:
                log.warning("smoke.warning", model=msg.name, warning=msg.warning,
                            action="reported only; nothing restarted")
        elif isinstance(msg, _ModelRestarted):
            self._model_tasks.discard(msg.name)
            h = self.model_health.get(msg.name)
            if h is not None and msg.token == self.machine.instance:
                self.model_health[msg.name] = mh.restart_done(h, msg.ok, msg.detail)
                log.info("model.restarted", model=msg.name, ok=msg.ok, detail=msg.detail)
        elif isinstance(msg, InstanceHealth):
            if not msg.healthy:
                log.warning("probe.failed", probe="docker-healthcheck", error=msg.detail,
                            state=self.machine.state.value)
                self._feed(ProbeResult(msg.token, Probe.LIVENESS, False, msg.detail,
                                       random.random()))  # noqa: S311
        elif isinstance(msg, EngineConnection):
            self.engine_connected = msg.connected
            if msg.connected:
                log.info("runtime.reconnected", detail=msg.detail)
            else:
                log.error("runtime.disconnected", error=msg.detail,
                          action="keeping state; reconnecting with backoff")
            self._note("runtime.reconnected" if msg.connected else "runtime.disconnected",
                       msg.detail)
        elif isinstance(msg, _Probed):
            if msg.models is not None and msg.result.instance == self.machine.instance:
                self.models_seen = msg.models.models
            if not msg.result.ok and self.machine.state is not State.STARTING:
                log.warning("probe.failed", probe=msg.result.probe.value,
                            error=msg.result.detail, state=self.machine.state.value)
            self._feed(msg.result)
        elif isinstance(msg, _FilesChanged):
            self._apply_config(f"{len(msg.paths)} file(s) changed")
        elif isinstance(msg, _Signal):
            await self._on_signal(msg.signum)
        elif isinstance(msg, Command):
            await self._on_command(msg)
        else:
            self._feed(msg)

    async def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self._notifier.reloading()
            result = self._reload()
            log.info("supervisor.reloaded", trigger="SIGHUP", **result)
            self._notifier.reloaded(self._status_line())
            return
        log.info("supervisor.stopping", signal=signal.Signals(signum).name,
                 on_stop=self.settings.supervisor.on_stop.value)
        self._notifier.stopping()
        if self._exit is not None:
            return
        if self.settings.supervisor.on_stop is OnStop.LEAVE or self.machine.state not in (
            *LIVE_STATES, State.STOPPING
        ):
            self._exit = EXIT_OK
            return
        self._feed(Stop(f"supervisor received {signal.Signals(signum).name}"))
        self._exit_when_stopped = True

    def _reload(self) -> dict[str, Any]:
        """Re-read the settings file and the model config; apply what can be applied live."""
        if self._settings_file is not None:
            try:
                new = load_settings(self._settings_file)
            except SettingsError as exc:
                log.error("settings.rejected", error=str(exc), action="kept current settings")
                return {"applied": False, "restarting": False, "errors": [str(exc)]}
            fixed = ("supervisor", "process")
            changed_fixed = [s for s in fixed if getattr(new, s) != getattr(self.settings, s)]
            if (new.server.runtime != self.settings.server.runtime
                    or new.server.engine != self.settings.server.engine
                    or new.docker.host != self.settings.docker.host
                    or new.docker.container_name != self.settings.docker.container_name
                    or new.server.publish_port != self.settings.server.publish_port):
                changed_fixed.append("server.runtime/engine/publish_port or docker.host/name")
            if changed_fixed:
                msg = (f"settings {', '.join(changed_fixed)} changed: they apply only after "
                       "`systemctl restart localai-supervisor`")
                log.error("settings.rejected", error=msg, action="kept current settings")
                return {"applied": False, "restarting": False, "errors": [msg]}
            self.settings = new
            self._rules = rules_from(new)
        return self._apply_config("reload")

    async def _on_command(self, cmd: Command) -> None:
        try:
            if cmd.name == "status":
                result = self.status()
            elif cmd.name == "reload":
                self._notifier.reloading()
                result = self._reload()
                self._notifier.reloaded(self._status_line())
            elif cmd.name == "restart" and cmd.args.get("model"):
                result = self._operator_restart_model(str(cmd.args["model"]))
            elif cmd.name == "restart":
                if self.spec is None:
                    result = {"ok": False, "error": "no valid configuration to start; "
                              "fix it and run `supervisorctl reload`"}
                else:
                    force = bool(cmd.args.get("force"))
                    self._feed(Restart("operator: supervisorctl restart"
                                       + (" --force" if force else ""), force=force))
                    result = {"ok": True, "state": self.machine.state.value}
            else:
                result = {"ok": False, "error": f"unknown command {cmd.name!r}"}
        except Exception as exc:
            log.exception("control.command_failed", command=cmd.name)
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if not cmd.reply.done():
            cmd.reply.set_result(result)

    def _operator_restart_model(self, name: str) -> dict[str, Any]:
        token = self.machine.instance
        if name not in self.model_health:
            return {"ok": False, "error": f"no model named {name!r}; known: "
                    f"{', '.join(self.model_health) or 'none'}"}
        if token is None or self.machine.state not in (State.RUNNING, State.UNHEALTHY):
            return {"ok": False, "error": f"the server is {self.machine.state.value}: "
                    "restart the server instead"}
        self.model_health[name] = mh.ModelHealth(name, state=mh.ModelState.RESTARTING)
        self._model_tasks.add(name)
        self._counters.model_restarts += 1
        log.info("model.restart", model=name, reason="operator: supervisorctl restart MODEL",
                 action="restarting this model alone")
        self._spawn(self._restart_model(token, name, "operator"), f"restart-{name}")
        return {"ok": True, "state": self.machine.state.value, "model": name}

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        m = self.machine
        now = self._clock()
        inst = self.instance
        up = m.state in (State.RUNNING, State.UNHEALTHY) and self._last_launch is not None
        models = []
        if self.models is not None:
            files = {f.name: f for f in self.models.files}
            for entry in self.models.entries:
                f = files.get(entry.name)
                h = self.model_health.get(entry.name)
                models.append({
                    "name": entry.name,
                    "file": f.relpath if f else None,
                    "size": f.size if f else None,
                    "listed": entry.name in self.models_seen,
                    "state": self.models_seen.get(entry.name),
                    "loaded": self.loaded.get(entry.name) == "loaded",
                    "health": h.state.value if h else None,
                    "last_probe_seconds_ago": round(now - h.last_probe, 3)
                    if h and h.last_probe is not None else None,
                    "last_error": h.last_error if h else None,
                    "restarts": len(h.restarts) if h else 0,
                    "output_warning": self.smoke.get(entry.name, (0.0, None))[1],
                })
        rejection = None
        if self.rejection is not None:
            rejection = {"at": self.rejection.revision_time,
                         "errors": [str(p) for p in self.rejection.problems]}
        return {
            "version": __version__,
            "state": m.state.value,
            "since_seconds": round(now - m.since, 3),
            "reason": m.last_reason,
            "engine": str(self.settings.server.engine),
            "runtime": str(self.settings.server.runtime),
            "runtime_connected": self.engine_connected,
            "server_url": self.settings.server.probe_base_url,
            "instance": None if inst is None else {
                "id": inst.ident, "pid": inst.pid, "image": inst.image,
                "spec": inst.spec_digest, "started_at": inst.started_at,
            },
            "uptime_seconds": round(now - m.since, 3) if up else None,
            "supervisor_uptime_seconds": round(now - self._started_mono, 3),
            "restarts": m.restarts,
            "restarts_by_reason": dict(self._counters.restarts_by_reason),
            "consecutive_failures": m.attempt,
            "last_failure": None if self.last_failure is None else {
                "cause": self.last_failure.cause.value, "hint": self.last_failure.hint,
                "evidence": self.last_failure.evidence},
            "model_restarts": self._counters.model_restarts,
            "drain": {"drains": self._counters.drains,
                      "drained_requests": self._counters.drained_requests,
                      "cut_off_requests": self._counters.cut_off_requests},
            "idle_seconds": None if not self._samples else mh.idle_for(
                list(self._samples), now, PROBE_WORK),
            "retry_in_seconds": round(m.retry_at - now, 3) if m.retry_at is not None else None,
            "config": {
                "file": str(self.settings.server.model_config_file),
                "models_dir": str(self.settings.server.models_dir),
                "revision": self.models.revision if self.models else None,
                "spec": self.spec.digest() if self.spec else None,
                "rejected": rejection,
                "pending": [{"model": p.model, "file": str(p.path), "reason": p.reason}
                            for p in self.pending],
                "warnings": [w.as_dict() for w in self.warnings],
            },
            "models": models,
            "recent_events": [
                {"at": e.at, "event": e.event, "detail": e.detail} for e in list(self.recent)[-10:]
            ],
        }

    # -- tasks that feed the loop ----------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.post(Tick(random.random()))  # noqa: S311 - jitter only

    async def _probe_loop(self) -> None:
        """Probe the current instance; results carry its token, so stale ones are dropped."""
        while True:
            m = self.machine
            interval = self.settings.health.interval
            if m.state in LIVE_STATES and m.instance is not None and self.models is not None:
                token = m.instance
                live = await self._prober.liveness(token)
                self.post(_Probed(live))
                if live.ok:
                    ready, seen = await self._prober.readiness(token, self.models.names)
                    self.post(_Probed(ready, seen))
                    if ready.ok and m.state is not State.STARTING:
                        # llama-server's readiness answer already says what is loaded.
                        loaded = (seen.loaded if seen.loaded is not None
                                  else await self._prober.loaded())
                        activity = await self._prober.activity(loaded_names(loaded))
                        self.post(_Observed(token, self._clock(), loaded, activity))
                if m.state is State.STARTING:
                    interval = min(interval, 0.5)
                elif not live.ok:
                    # Confirm a failure quickly: a hung server is an outage while we wait.
                    interval = min(interval, FAILING_PROBE_SECONDS)
            else:
                interval = min(interval, 0.5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._probe_wake.wait(), interval)
            self._probe_wake.clear()

    def _on_runtime_event(self, event: RuntimeEvent) -> None:
        self.post(event)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.post, _Signal(sig))

    # -- lifecycle -------------------------------------------------------------------------

    async def _boot(self, models: ModelSet, spec: ServerSpec) -> None:
        """Adopt a running instance that already matches the spec, or start one."""
        self.models, self.spec = models, spec
        log.info("supervisor.started", version=__version__, pid=os.getpid(),
                 engine=str(self.settings.server.engine),
                 runtime=str(self.settings.server.runtime),
                 revision=models.revision, spec=spec.digest())
        try:
            existing = await self._runtime.find(spec.digest())
        except Exception as exc:
            log.warning("runtime.find_failed", error=str(exc), action="starting a new instance")
            existing = None
        if existing is not None:
            self.instance = existing
            self._last_launch = self._clock()
            self._feed(Adopted(existing.token, existing.ident[:12]))
            self._fresh_instance()
        else:
            self._feed(Start("supervisor start"))

    async def run(self, *, servers: Callable[[Daemon], Awaitable[Callable[[], Awaitable[None]]]]
                  | None = None) -> int:
        """Boot, loop until stopped, shut down in bounded stages. Returns the exit code."""
        loaded = self._load()
        if isinstance(loaded, Validation) and loaded.errors:
            self._reject(loaded.errors, "server not started")
            log.error("supervisor.start_failed", cause="invalid model configuration",
                      action="exiting; fix the file and start again")
            return EXIT_CONFIG
        self._install_signals()
        await self._runtime.open(self._on_runtime_event)
        close_servers: Callable[[], Awaitable[None]] | None = None
        if servers is not None:
            close_servers = await servers(self)
        if isinstance(loaded, Validation):
            log.info("supervisor.started", version=__version__, pid=os.getpid(),
                     engine=str(self.settings.server.engine),
                     runtime=str(self.settings.server.runtime), revision=None)
            self._wait_for(list(loaded.pending), "server not started yet")
        else:
            await self._boot(*loaded)
        self._notifier.ready(self._status_line())
        self._spawn(self._ticker(), "ticker")
        self._spawn(self._probe_loop(), "probes")
        if self.settings.watch.enabled:
            self._watcher = Watcher(
                self.settings.server.model_config_file, self.settings.server.models_dir,
                lambda paths: self.post(_FilesChanged(paths)),
                step_ms=self.settings.watch.step_ms, debounce_ms=self.settings.watch.debounce_ms,
            )
            self._spawn(self._watcher.run(), "watcher")
        try:
            while self._exit is None:
                msg = await self._inbox.get()
                await self._handle(msg)
                if self._exit_when_stopped and self.machine.state in (State.STOPPED,
                                                                       State.FATAL):
                    self._exit = EXIT_OK
        finally:
            await self._shutdown(close_servers)
        return self._exit

    async def _shutdown(self, close_servers: Callable[[], Awaitable[None]] | None) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        if close_servers is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close_servers(), 5)
        if self.settings.supervisor.on_stop is OnStop.LEAVE:
            await self._runtime.detach()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._prober.close()
        await self._runtime.close()
        log.info("supervisor.exited", state=self.machine.state.value)
