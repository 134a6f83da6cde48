"""The daemon: one asyncio loop, three owners, and the messages between them.

Each piece of state has one owner: ``ConfigOwner`` (which config is applied, rejected or
pending), ``ServerOwner`` (the policy's machine, the instance, runtime effects) and
``ModelsOwner`` (per-model health, load state, activity). Everything else -- the watcher,
signal handlers, the control socket, probe and effect tasks, the runtime's event stream --
only posts messages. The loop takes one message at a time and hands it to the handler its
type maps to; handlers change their owner's state and never await. Between messages the loop
does its housekeeping (timeouts, probe scheduling, the watchdog) and sleeps until the next
message or the next deadline, whichever is first.
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
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector

from . import __version__, gpumem
from .checkup import offline_findings
from .configuration import ConfigApplied, ConfigOwner, Validated, check
from .doctor import DoctorReport, from_load_log, smoke_findings
from .effects import (
    DRAIN_POLL_SECONDS,
    DrainResult,
    EffectWorker,
    FindDone,
    LaunchDone,
    TerminateDone,
    UnpauseDone,
)
from .engines import Call, engine_for
from .gateway import (
    Arrived,
    DrainRequest,
    Finished,
    GatewayChanged,
    GatewayOwner,
    Left,
    UnloadDone,
)
from .health import Prober, Probing, ask_version
from .metrics import GatewayGauges, GatewayMetrics, ProbeMetrics, StatusCollector
from .modelhealth import ModelState
from .models import (
    ModelProbed,
    ModelRestarted,
    ModelRestored,
    ModelsBusy,
    ModelsOwner,
    Smoked,
)
from .notify import Notifier, ready_reason, start_time_left
from .policy import Escalate, Restart, Start, Stop
from .runtime import (
    InstanceExited,
    InstanceHealth,
    InstancePaused,
    Runtime,
    RuntimeConnection,
    make_runtime,
    program_version,
)
from .server import (
    Diagnosed,
    EngineVersionKnown,
    Observed,
    ProbeCycleDone,
    Probed,
    ServerOwner,
    ServingChanged,
    VersionReported,
    maintenance_file,
)
from .settings import Engine, OnStop, Settings, SettingsError, load_settings
from .status import CheckOutcome, CommandResult, Journal, ReloadResult, Status
from .tasks import TaskSet
from .versions import KnownVersion, Version, VersionSource, at_least
from .vocab import RestartReason
from .watch import Watcher

log = structlog.get_logger("supervisor")

# The loop wakes at least this often for timeouts, probe scheduling and the watchdog.
TICK_SECONDS = 0.5
MIN_WAIT_SECONDS = 0.01
# Shutdown may take drain_timeout + stop_timeout; past that plus this margin it is forced.
SHUTDOWN_MARGIN_SECONDS = 5.0
# A forced shutdown that still has not finished after this long exits regardless.
FORCED_EXIT_SECONDS = 10.0
# Threads for blocking work (config checks, docker-py calls, log reads): at most a runtime
# effect, a diagnosis and a check run at once, so a few suffice on any machine.
IO_THREADS = 4
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2

# How long `logs MODEL` waits for the engine's per-model log.
MODEL_LOG_TIMEOUT = 5.0
# `logs MODEL` on llama-server: this many lines of the router's log are searched.
MODEL_LOG_SCAN = 20_000
# How much of a failing model's own log doctor reads for the cause.
DOCTOR_LOG_LINES = 400
# `logs -f MODEL` on LocalAI: its per-model log is asked for again this often.
MODEL_LOG_POLL_SECONDS = 1.0
# After the gateway's per-request messages, housekeeping runs at most this often.
HOT_HOUSEKEEPING_SECONDS = 0.05
_HOT_MESSAGES = frozenset({Arrived, Finished, Left})

# Settings a reload cannot change: they name the running server or the daemon's own sockets.
_FIXED_SECTIONS = ("supervisor", "process")


def _fixed_server_fields(s: Settings) -> tuple[object, ...]:
    return (s.server.runtime, s.server.engine, s.docker.host, s.docker.container_name,
            s.server.publish_port)


# ---- messages from outside the owners ------------------------------------------------------


@dataclass(frozen=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True)
class FilesChanged:
    paths: frozenset[str]


@dataclass(frozen=True)
class ReloadRequest:
    """``supervisorctl reload`` or SIGHUP; ``reply`` gets the outcome once it is known."""

    reply: asyncio.Future[ReloadResult]


@dataclass(frozen=True)
class SettingsRead:
    reply: asyncio.Future[ReloadResult]
    settings: Settings | None = None
    error: str | None = None


@dataclass(frozen=True)
class MaintenanceRequest:
    """``supervisorctl stop`` (on) or ``start`` (off)."""

    reply: asyncio.Future[CommandResult]
    on: bool


@dataclass(frozen=True)
class RestartRequest:
    reply: asyncio.Future[CommandResult]
    model: str | None = None
    force: bool = False


@dataclass
class _Shutdown:
    signal_name: str
    deadline: float
    forced_at: float | None = None


class Daemon:
    def __init__(self, settings: Settings, *, settings_file: Path | None = None,
                 runtime: Runtime | None = None, prober: Probing | None = None,
                 notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random,
                 drain_poll: float = DRAIN_POLL_SECONDS,
                 versioner: Callable[[Settings], tuple[str, VersionSource] | None]
                 = program_version) -> None:
        self.settings = settings
        self._versioner = versioner
        self._program_version: str | None = None
        self._settings_file = settings_file
        self._clock = clock
        self._started = clock()
        self._engine = engine = engine_for(settings.server.engine)
        self._runtime = runtime or make_runtime(settings)
        self._prober = prober or Prober(settings.probe_base_url, engine,
                                        settings.health.timeout)
        self._notifier = notifier or Notifier()
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        # News from one owner for another, handled in the same turn (before housekeeping), so
        # no owner acts on knowledge another owner has already changed.
        self._notices: deque[Any] = deque()
        self.journal = Journal(wall=wall)
        self.config = ConfigOwner(settings, engine, self.post, self._notices.append,
                                  self.journal, clock, wall)
        # /metrics: the supervisor's state (read from its status at scrape), the process's,
        # and the gateway's per-model series.
        self.metrics = CollectorRegistry(auto_describe=True)
        self.metrics.register(StatusCollector(self.status))
        self.metrics.register(ProcessCollector(registry=None))
        self._probe_metrics = ProbeMetrics(self.metrics)
        self.gateway = (GatewayOwner(settings, engine, self._prober, self.post, clock,
                                     observe=GatewayMetrics(self.metrics),
                                     notify=self._notices.append)
                        if settings.gateway.enabled else None)
        if self.gateway is not None:
            self.metrics.register(GatewayGauges(self.gateway.snapshot))
        self._effects = EffectWorker(self._runtime, self._prober, self.post, clock,
                                     drain_poll=drain_poll,
                                     drainer=self._gateway_drain if self.gateway else None)
        self.server = ServerOwner(settings, self._effects, self._prober, self._runtime.logs,
                                  self._runtime.exit_details, self.post,
                                  self._notices.append, self.journal, clock,
                                  engine=engine, wall=wall, rand=rand)
        self.models = ModelsOwner(settings, engine, self._prober, self.post,
                                  self._notices.append, self.journal, clock, rand)
        self._exit: int | None = None
        self._shutdown: _Shutdown | None = None
        self._stopping_hooks: list[Callable[[], None]] = []
        self._housekeeping_due = 0.0
        self._deferred_restarts: list[RestartRequest] = []
        self._applied_meanwhile = False
        self._status_line = ""
        # READY=1: due once the listeners are up (booted) and the start has settled.
        self._booted = False
        self._ready_sent = False
        self._tasks = TaskSet()
        self._watcher: Watcher | None = None
        # One handler per message type: the whole vocabulary of the loop in one place.
        self._handlers: dict[type, Callable[[Any], None]] = {
            Validated: self._on_validated,
            ConfigApplied: self._on_config_applied,
            FindDone: self.server.on_found,
            LaunchDone: self.server.on_launched,
            TerminateDone: self.server.on_terminated,
            UnpauseDone: self.server.on_unpaused,
            InstanceExited: self.server.on_exited,
            Diagnosed: self.server.on_diagnosed,
            InstanceHealth: self.server.on_health,
            InstancePaused: self.server.on_paused,
            RuntimeConnection: self.server.on_connection,
            Probed: self._on_probed,
            ProbeCycleDone: self.server.on_cycle_done,
            Observed: self._on_observed,
            ServingChanged: self._on_serving_changed,
            VersionReported: self.server.on_version,
            EngineVersionKnown: self._on_engine_version,
            # Policy events from elsewhere (the models owner, operators) go to the machine.
            Escalate: self.server.feed,
            Start: self.server.feed,
            Stop: self.server.feed,
            Restart: self.server.feed,
            ModelProbed: self._on_model_probed,
            ModelRestarted: self.models.on_restarted,
            ModelRestored: self.models.on_restored,
            Smoked: self.models.on_smoked,
            FilesChanged: self._on_files_changed,
            ReloadRequest: self._on_reload,
            SettingsRead: self._on_settings_read,
            RestartRequest: self._on_restart,
            MaintenanceRequest: self._on_maintenance,
            SignalReceived: self._on_signal,
            ModelsBusy: self._on_models_busy,
        }
        if self.gateway is not None:
            self._handlers.update({
                Arrived: self.gateway.on_arrived,
                Finished: self.gateway.on_finished,
                Left: self.gateway.on_left,
                UnloadDone: self.gateway.on_unloaded,
                DrainRequest: self.gateway.on_drain_request,
                GatewayChanged: self._on_gateway_changed,
            })

    # -- messages --------------------------------------------------------------------------

    def post(self, message: object) -> None:
        """The only way in: hand the loop a message (from the loop's thread)."""
        self._inbox.put_nowait(message)

    def handle(self, message: object) -> None:
        """Apply one message, then the housekeeping that follows every change. The gateway's
        per-request messages come thousands a second under load and change nothing the
        housekeeping looks at: after those it runs at most every HOT_HOUSEKEEPING_SECONDS."""
        self._handlers[type(message)](message)
        if type(message) in _HOT_MESSAGES and self._clock() < self._housekeeping_due:
            self._deliver_notices()
            return
        self.housekeeping()

    def _deliver_notices(self) -> None:
        while self._notices:
            notice = self._notices.popleft()
            self._handlers[type(notice)](notice)

    def housekeeping(self) -> None:
        """Timeouts, shutdown progress, probe scheduling, watchdog and STATUS=: after every
        message and whenever the loop wakes for a deadline."""
        self._deliver_notices()
        now = self._clock()
        self._housekeeping_due = now + HOT_HOUSEKEEPING_SECONDS
        self._notifier.watchdog(now)
        if self.config.recheck_due(now):
            self.config.request("re-check of files being written")
        self.server.tick()
        self._check_shutdown(now)
        self._deliver_notices()
        self.server.schedule_probes(now)
        self.models.schedule(now)
        self.models.report_busy()
        if self.gateway is not None:
            self.gateway.tick(now)
        self._deliver_notices()
        self._notify_start(now)
        line = self.status_line()
        if line != self._status_line:
            self._status_line = line
            self._notifier.status(line)

    def listening(self) -> None:
        """The listeners are up: READY=1 follows once the start has settled."""
        self._booted = True
        self.housekeeping()

    def _notify_start(self, now: float) -> None:
        """READY=1 once the start has settled (see notify.py), systemd's start timeout extended
        by the supervisor's own deadline until then."""
        if not self._booted or self._ready_sent:
            return
        m = self.server.machine
        why = ready_reason(m.state, maintenance=self.server.maintenance)
        if why is None:
            self._notifier.extend(now, start_time_left(
                m.state, m.since, m.retry_at, now, self.settings.server.startup_timeout))
            return
        self._ready_sent = True
        self._status_line = self.status_line()
        self._notifier.ready(self._status_line)
        log.info("supervisor.ready", reason=why, state=m.state.value,
                 after_seconds=round(now - self._started, 3))

    def _on_validated(self, msg: Validated) -> None:
        outcome, _ = self.config.on_validated(msg)
        if self._deferred_restarts and outcome is CheckOutcome.APPLIED:
            self._applied_meanwhile = True
        if self._deferred_restarts and not self.config.checking:
            deferred, self._deferred_restarts = self._deferred_restarts, []
            applied, self._applied_meanwhile = self._applied_meanwhile, False
            # A config that was just applied restarts the server onto it anyway: one restart
            # serves those who asked for one meanwhile.
            for request in deferred:
                if applied:
                    if not request.reply.done():
                        request.reply.set_result(CommandResult(
                            ok=True, state=self.server.machine.state))
                else:
                    self._on_restart(request)

    def _on_config_applied(self, msg: ConfigApplied) -> None:
        self._prober.set_api_key(msg.api_key)
        self.models.configure(msg.models, msg.ggufs)
        if self.gateway is not None:
            self.gateway.configure(msg.models, msg.ggufs)
        self.server.configure(msg.spec, first=msg.first, reason=msg.reason)

    def _on_model_probed(self, msg: ModelProbed) -> None:
        result = "skipped" if msg.skipped else "ok" if msg.ok else "failed"
        self._probe_metrics.observe("model", msg.name, result, msg.seconds)
        self.models.on_probed(msg)

    def _on_probed(self, msg: Probed) -> None:
        self._probe_metrics.observe(msg.result.probe.value, "-",
                                    "ok" if msg.result.ok else "failed", msg.seconds)
        if msg.seen is not None:
            self.models.on_seen(msg.result.instance, msg.seen)
        self.server.on_probed(msg)

    def _on_observed(self, msg: Observed) -> None:
        self.models.on_observed(msg.token, msg.at, msg.loaded, msg.work, msg.in_flight)

    def _on_engine_version(self, msg: EngineVersionKnown) -> None:
        self.config.set_engine_version(msg.version)
        self.models.set_engine_version(msg.version)

    def _on_serving_changed(self, msg: ServingChanged) -> None:
        self.models.serving_changed(msg.token, msg.serving)
        if self.gateway is not None:
            self.gateway.serving_changed(msg.token, msg.serving, msg.down)

    def _on_models_busy(self, msg: ModelsBusy) -> None:
        if self.gateway is not None:
            self.gateway.models_busy(msg.models)

    def _on_gateway_changed(self, msg: GatewayChanged) -> None:
        self.models.gateway_changed(msg.unloading, msg.busy)

    async def _gateway_drain(self, timeout: float) -> DrainResult:
        """For the effect worker: ask the gateway (through the loop) to drain; its answer."""
        reply: asyncio.Future[DrainResult] = asyncio.get_running_loop().create_future()
        self.post(DrainRequest(timeout, reply))
        return await reply

    def _on_files_changed(self, msg: FilesChanged) -> None:
        self.config.request(f"{len(msg.paths)} file(s) changed")

    def _on_reload(self, msg: ReloadRequest) -> None:
        if self._settings_file is None:
            self.config.request("reload", msg.reply)
            return
        path = self._settings_file

        async def read() -> None:
            try:
                new = await asyncio.to_thread(load_settings, path)
            except SettingsError as exc:
                self.post(SettingsRead(msg.reply, error=str(exc)))
            else:
                self.post(SettingsRead(msg.reply, settings=new))

        self._tasks.spawn(read())

    def _on_settings_read(self, msg: SettingsRead) -> None:
        error = msg.error
        new = msg.settings
        if new is not None:
            fixed = [s for s in _FIXED_SECTIONS if getattr(new, s) != getattr(self.settings, s)]
            if _fixed_server_fields(new) != _fixed_server_fields(self.settings):
                fixed.append("server.runtime/engine/publish_port or docker.host/name")
            if fixed:
                error = (f"settings {', '.join(fixed)} changed: they apply only after "
                         "`systemctl restart localai-supervisor`")
        if error is not None or new is None:
            log.error("settings.rejected", error=error, action="kept current settings")
            if not msg.reply.done():
                msg.reply.set_result(ReloadResult(applied=False, restarting=False,
                                                  errors=[error or "unreadable"]))
            return
        new = self._with_program_version(new)
        self.settings = new
        self.config.set_settings(new)
        self.server.set_settings(new)
        self.models.set_settings(new)
        if self.gateway is not None:
            self.gateway.set_settings(new)
        self.config.request("reload", msg.reply)

    def _on_maintenance(self, msg: MaintenanceRequest) -> None:
        if msg.on:
            self.server.operator_stop()
        elif self.config.spec is None:
            if not msg.reply.done():
                msg.reply.set_result(CommandResult(ok=False, error="no valid configuration to "
                                                   "start; fix it and run `supervisorctl "
                                                   "reload`"))
            return
        else:
            self.server.operator_start()
        if not msg.reply.done():
            msg.reply.set_result(CommandResult(ok=True, state=self.server.machine.state))

    def _on_restart(self, msg: RestartRequest) -> None:
        if msg.model:
            error = self.models.operator_restart(msg.model)
            result = CommandResult(ok=error is None, state=self.server.machine.state,
                                   model=msg.model, error=error)
        elif self.config.checking:
            # A reload (or a file change) is being checked: restart after it, onto what it
            # decides, rather than now onto what is about to be replaced.
            self._deferred_restarts.append(msg)
            return
        elif self.config.spec is None:
            result = CommandResult(ok=False, error="no valid configuration to start; fix it "
                                   "and run `supervisorctl reload`")
        else:
            reason = "operator: supervisorctl restart" + (" --force" if msg.force else "")
            self.server.feed(Restart(reason, force=msg.force, cause=RestartReason.OPERATOR))
            result = CommandResult(ok=True, state=self.server.machine.state)
        if not msg.reply.done():
            msg.reply.set_result(result)

    def _on_signal(self, msg: SignalReceived) -> None:
        if msg.signum == signal.SIGHUP:
            self.reload_from_signal()
            return
        name = signal.Signals(msg.signum).name
        if self._shutdown is not None:
            self._force(f"second {name}")
            return
        on_stop = self.settings.supervisor.on_stop
        log.info("supervisor.stopping", signal=name, on_stop=on_stop.value)
        self._notifier.stopping()
        if self.gateway is not None:
            self.gateway.stopping()
        for hook in self._stopping_hooks:
            hook()
        budget = (self.settings.health.drain_timeout + self.settings.server.stop_timeout
                  + SHUTDOWN_MARGIN_SECONDS)
        self._shutdown = _Shutdown(name, self._clock() + budget)

    def on_stopping(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` (it must not block) as soon as a stop signal arrives."""
        self._stopping_hooks.append(hook)

    def reload_from_signal(self) -> None:
        self._notifier.reloading()
        reply: asyncio.Future[ReloadResult] = asyncio.get_running_loop().create_future()

        def done(fut: asyncio.Future[ReloadResult]) -> None:
            if not fut.cancelled():
                log.info("supervisor.reloaded", trigger="SIGHUP", **fut.result().model_dump())
            self._notifier.reloaded(self.status_line())

        reply.add_done_callback(done)
        self._on_reload(ReloadRequest(reply))

    # -- shutdown --------------------------------------------------------------------------

    def _check_shutdown(self, now: float) -> None:
        sd = self._shutdown
        if sd is None or self._exit is not None:
            return
        if self.settings.supervisor.on_stop is OnStop.LEAVE:
            self._exit = EXIT_OK
            return
        self.server.shut_down(f"supervisor received {sd.signal_name}")
        if self.server.quiescent:
            self._exit = EXIT_OK
        elif sd.forced_at is None and now >= sd.deadline:
            self._force("shutdown took longer than drain_timeout + stop_timeout")
        elif sd.forced_at is not None and now - sd.forced_at >= FORCED_EXIT_SECONDS:
            log.error("supervisor.exit_forced", cause="the runtime did not finish stopping "
                      f"within {FORCED_EXIT_SECONDS:g}s of a forced stop",
                      action="exiting anyway; the server may still run (it is adopted or "
                      "cleaned up at the next start)")
            self._exit = EXIT_RUNTIME

    def _force(self, why: str) -> None:
        sd = self._shutdown
        assert sd is not None
        if sd.forced_at is not None:
            return
        sd.forced_at = self._clock()
        log.warning("supervisor.stop_forced", cause=why,
                    action="no more draining; the server is killed after "
                    "1s instead of its graceful stop timeout")
        self.server.force()

    # -- views -----------------------------------------------------------------------------

    def status(self) -> Status:
        """One consistent snapshot: taken on the loop's thread between two messages."""
        now = self._clock()
        return Status.assemble(
            version=__version__, engine=self._engine.kind,
            runtime=self.settings.server.runtime,
            server_url=self.settings.probe_base_url,
            supervisor_uptime=now - self._started, server=self.server.snapshot(now),
            config=self.config.snapshot(), models=self.models.snapshot(now),
            recent=self.journal.recent(10),
            gateway=self.gateway.snapshot() if self.gateway is not None else None)

    async def engine_version(self) -> str | None:
        """What the running engine says its version is (None: it does not answer)."""
        return await ask_version(self._prober, self._engine)

    async def doctor(self, model: str | None = None) -> DoctorReport:
        """The quiet failures explained for the version running: the config and host
        (checked off the loop), the smoke check's verdicts, and each failing model's own log."""
        st = self.status()
        known = st.engine_version
        version = Version.parse(known.version) if known else None
        found = await asyncio.to_thread(offline_findings, self.settings, version, model)
        loaded = [m.name for m in st.models if m.loaded]
        hides = self._engine.kind is Engine.LOCALAI and not at_least(version, 3, 10,
                                                                      unknown=True)
        for m in st.models:
            if model is not None and m.name != model:
                continue
            found += smoke_findings(m.name, m.output_warning)
            if m.last_error or m.health in (ModelState.FAILED, ModelState.FAILING):
                lines = await self.model_log(m.name, DOCTOR_LOG_LINES)
                finding = from_load_log(m.name, m.last_error, lines,
                                        [n for n in loaded if n != m.name], hides)
                if finding is not None:
                    found.append(finding)
        # llama-server's build ("b11434-…") is no release version: shown as it says it.
        reported = known.reported if known else await self.engine_version()
        return DoctorReport(engine=self._engine.kind, engine_version=reported,
                            version_source=known.source.value if known else
                            ("server" if reported else None),
                            live=True, findings=found)

    async def server_log(self, lines: int) -> list[str]:
        """The last ``lines`` of the server's log (read by the runtime off the loop)."""
        return await self._runtime.logs(lines)

    def follow_server_log(self) -> AsyncIterator[str]:
        return self._runtime.follow_logs()

    async def model_log(self, model: str, lines: int) -> list[str]:
        """One model's log: the engine's own per-model log (LocalAI), or its lines picked
        out of the server's (llama-server's router)."""
        call = self._engine.model_log_call(model)
        entries = await self._model_log_entries(call) if call is not None else None
        if entries:
            return [text for _, text in entries][-lines:] if lines > 0 else []
        accept = self._engine.model_log_filter(model)
        picked = [line for line in await self._runtime.logs(MODEL_LOG_SCAN) if accept(line)]
        if not picked and lines > 0:
            note = self._engine.model_log_missing(model, entries is not None)
            return [note] if note else []
        return picked[-lines:] if lines > 0 else []

    async def follow_model_log(self, model: str) -> AsyncIterator[str]:
        call = self._engine.model_log_call(model)
        first = await self._model_log_entries(call) if call is not None else None
        if call is not None and first is not None:
            # A per-model log: ask for it again, print what is new.
            seen = max((ts for ts, _ in first), default="")
            while True:
                await asyncio.sleep(MODEL_LOG_POLL_SECONDS)
                for ts, text in await self._model_log_entries(call) or []:
                    if ts > seen:
                        seen = ts
                        yield text
        accept = self._engine.model_log_filter(model)
        for line in await self._runtime.logs(MODEL_LOG_SCAN):
            accept(line)  # learn which child is this model's
        async for line in self._runtime.follow_logs():
            if accept(line):
                yield line

    async def _model_log_entries(self, call: Call) -> list[tuple[str, str]] | None:
        """None: the engine keeps no such log (this version, or it is switched off)."""
        status, text = await self._prober.call(call, MODEL_LOG_TIMEOUT)
        if status != 200:
            return None
        try:
            return self._engine.model_log_lines(json.loads(text))
        except ValueError:
            return []

    def status_line(self) -> str:
        """The systemd STATUS= text: server state, models ready, the last error."""
        ready, total = self.models.ready_count()
        line = self.server.describe() + self.config.describe() + \
            f"; models ready {ready}/{total}"
        failed = self.models.failed()
        if failed:
            line += f"; model(s) {', '.join(failed)} FAILED"
        return line

    @property
    def exit_code(self) -> int | None:
        return self._exit

    def next_wake(self) -> float:
        """Seconds until the loop must wake even without a message."""
        now = self._clock()
        deadlines = [now + TICK_SECONDS, self.server.next_deadline(),
                     self.config.next_deadline(),
                     self.gateway.next_deadline() if self.gateway is not None else None]
        if self._shutdown is not None:
            deadlines.append(self._shutdown.deadline)
        return max(0.0, min(d for d in deadlines if d is not None) - now)

    # -- lifecycle -------------------------------------------------------------------------

    async def _learn_program_version(self) -> None:
        """LocalAI's environment depends on its version (engines/localai.environment): with
        no ``localai.version`` set, read it from the image label or the binary before the
        first start, and keep it for every later render (settings reloads included), so the
        spec never changes because the version was learnt later."""
        if self._engine.kind is not Engine.LOCALAI or self.settings.localai.version:
            return
        try:
            found = await asyncio.to_thread(self._versioner, self.settings)
        except Exception as exc:  # optional knowledge: never a reason not to start
            log.warning("engine.version_unreadable", error=f"{type(exc).__name__}: {exc}",
                        action="starting with the environment every version accepts")
            found = None
        version = Version.parse(found[0]) if found else None
        if found is None or version is None:
            log.info("engine.version", version=None, reported=found[0] if found else None,
                     action="no version in the image label or the binary's --help: the "
                     "environment every version accepts; set localai.version to choose")
            return
        raw, source = found
        self._program_version = raw
        self.settings = self._with_program_version(self.settings)
        self.config.set_settings(self.settings)
        self.models.set_settings(self.settings)
        self.server.set_program_version(KnownVersion(version, source, raw[:100]))
        log.info("engine.version", version=str(version), reported=raw[:100],
                 source=source.value)

    def _with_program_version(self, settings: Settings) -> Settings:
        if self._program_version is None or settings.localai.version:
            return settings
        return settings.model_copy(update={"localai": settings.localai.model_copy(
            update={"version": self._program_version})})

    async def start(self) -> int | None:
        """Check the config, connect the runtime, start the effect worker.

        Returns an exit code when the daemon must not run (invalid config at boot).
        """
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="supervisor-io"))
        await self._learn_program_version()
        checked = await asyncio.to_thread(check, self.settings, self._engine)
        outcome, _ = self.config.on_validated(Validated(0, "supervisor start", checked))
        if outcome is CheckOutcome.REJECTED:
            log.error("supervisor.start_failed", cause="invalid model configuration",
                      action="exiting; fix the file and start again")
            return EXIT_CONFIG
        log.info("supervisor.started", version=__version__, pid=os.getpid(),
                 engine=str(self._engine.kind), runtime=str(self.settings.server.runtime),
                 revision=self.config.models.revision if self.config.models else None,
                 spec=self.config.spec.digest() if self.config.spec else None)
        if self.gateway is not None:
            self.gateway.set_gpu_total(await asyncio.to_thread(gpumem.total_bytes))
        self.server.set_maintenance(
            await asyncio.to_thread(maintenance_file(self.settings).exists))
        await self._runtime.open(self.post)
        self._tasks.spawn(self._effects.run())
        self.housekeeping()  # act on the boot's outcome (start or adopt) at once
        return None

    async def run(self, *, servers: Callable[[Daemon], Awaitable[Callable[[], Awaitable[None]]]]
                  | None = None) -> int:
        """Boot, loop until stopped, shut down in bounded stages. Returns the exit code."""
        code = await self.start()
        if code is not None:
            return code
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.post, SignalReceived(sig))
        try:
            close_servers = await servers(self) if servers is not None else None
        except OSError as exc:  # a port or socket path taken, or not permitted
            log.error("supervisor.listen_failed", error=str(exc),
                      action="exiting with 1 (systemd restarts the supervisor)")
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.close()
            return EXIT_RUNTIME
        self.listening()
        if self.settings.watch.enabled:
            srv = self.settings.server
            self._watcher = Watcher(
                srv.model_config_file, srv.models_dir,
                lambda paths: self.post(FilesChanged(frozenset(paths))),
                step_ms=self.settings.watch.step_ms, debounce_ms=self.settings.watch.debounce_ms)
            self._tasks.spawn(self._watcher.run())
        try:
            while self._exit is None:
                # A floor, so a deadline that cannot be acted on yet never becomes a busy loop.
                await self.process(max(self.next_wake(), MIN_WAIT_SECONDS))
        except Exception:
            # A bug of ours: state can no longer be trusted. Leave the server as it is (the
            # next start adopts or replaces it) and let systemd restart the supervisor.
            log.exception("supervisor.crashed", action="exiting with 1; the server is left "
                          "running for the next start to adopt")
            self._exit = EXIT_RUNTIME
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.close(close_servers)
        return self._exit

    async def process(self, wait: float) -> bool:
        """Handle the next message; if none comes within ``wait`` seconds, do the
        housekeeping instead. True when a message was handled."""
        if self._inbox.empty():
            try:
                message = await asyncio.wait_for(self._inbox.get(), wait)
            except TimeoutError:
                self.housekeeping()
                return False
        else:
            message = self._inbox.get_nowait()
        self.handle(message)
        return True

    @property
    def queued(self) -> int:
        """Messages waiting for the loop."""
        return self._inbox.qsize()

    async def close(self, close_servers: Callable[[], Awaitable[None]] | None = None) -> None:
        """Bounded stages: stop listening, detach (on_stop = leave), cancel tasks, close."""
        if self._watcher is not None:
            self._watcher.stop()
        if self.gateway is not None:
            self.gateway.seal()
        if close_servers is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close_servers(), 5)
        if self.settings.supervisor.on_stop is OnStop.LEAVE:
            await self._runtime.detach()
        await self.config.close()
        await self.server.close()
        await self.models.close()
        if self.gateway is not None:
            await self.gateway.close()
        await self._tasks.close()
        await self._prober.close()
        await self._runtime.close()
        log.info("supervisor.exited", state=self.server.machine.state.value)
