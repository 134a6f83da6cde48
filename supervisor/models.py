"""The models owner: one record per configured model (health, load state, smoke warning) and
the server's recent activity, which decides when an unloaded model may be probed.

It learns which instance serves from ``ServingChanged`` events and what the server lists and
loads from probe events; it never reads the server owner. Probes, in-place restarts and
smoke checks run as tasks that report back; only this owner turns their answers into state.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from . import modelhealth as mh
from .classify import diagnose
from .engines import Call, EngineAdapter
from .engines.base import RestartAnswer
from .ggufinfo import GGUFInfo
from .health import ModelsSeen, Probing
from .lint import END_MARKERS, context_for, request_budget
from .modelconfig import ModelSet
from .policy import Escalate
from .settings import Settings
from .status import Journal, ModelsSnapshot, ModelStatus
from .tasks import TaskSet
from .versions import Version
from .vocab import LoadState

log = structlog.get_logger("supervisor")

# What one model probe may add to the engine's work counter (n_decode / api_call count).
PROBE_WORK = 2.0
# After a probe timed out, the model's progress counter is watched this long (at least) for
# any advance: a long prompt advances it one batch at a time, seconds apart; a hung model not
# at all. The readings themselves may wait for the batch being decoded.
PROGRESS_WINDOW_MIN = 10.0
PROGRESS_POLL_SECONDS = 1.0
SMOKE_PROMPT = "Say hello in one short sentence."


def model_keys(models: ModelSet) -> dict[str, str]:
    """Each model's config entry and file, as one key: a load test holds while it is equal."""
    files = {f.name: f for f in models.files}
    out = {}
    for entry in models.entries:
        f = files.get(entry.name)
        raw = entry.model_dump_json(exclude_none=True) + (f"{f.relpath}:{f.size}:"
                                                          f"{f.fingerprint}" if f else "")
        out[entry.name] = hashlib.sha256(raw.encode()).hexdigest()[:16]
    return out


def probe_rules_from(settings: Settings) -> mh.ProbeRules:
    h = settings.health
    return mh.ProbeRules(
        interval=h.model_interval, timeout=h.model_timeout, load_timeout=h.model_load_timeout,
        failure_threshold=h.model_failure_threshold,
        unloaded=h.probe_unloaded, idle_seconds=h.idle_seconds,
        model_restarts=h.model_restarts,
    )


# ---- outcome events of this owner's tasks --------------------------------------------------


@dataclass(frozen=True)
class ModelProbed:
    token: str
    name: str
    ok: bool
    detail: str
    # Says nothing about the model's health: autoload=false refused (it was unloaded since
    # we looked), or it timed out while the model was visibly working (busy, not hung).
    skipped: bool = False
    # A load test of an unloaded model: what was loaded before it is restored afterwards.
    load_test: bool = False
    restore: tuple[str, ...] = ()
    # How long the probe request took (for /metrics).
    seconds: float | None = None
    # The engine refuses to load it for this many seconds after a failed load.
    cooldown: float | None = None
    # No answer at all within the timeout, and no sign of work: hung, not failing.
    hung: bool = False


@dataclass(frozen=True)
class ModelRestored:
    token: str
    name: str
    ok: bool
    detail: str
    # The last of the restore: the next load test may start.
    last: bool = True


@dataclass(frozen=True)
class ModelRestarted:
    token: str
    name: str
    ok: bool
    detail: str
    # The engine refused to stop it with work in flight (or hung): only a server restart helps.
    busy: bool = False


@dataclass(frozen=True)
class Smoked:
    token: str
    name: str
    warning: str | None


@dataclass(frozen=True)
class _Record:
    """Everything known about one model; replaced whole, never mutated."""

    health: mh.ModelHealth
    listed: LoadState | None = None
    is_listed: bool = False
    load: LoadState = LoadState.UNKNOWN
    # A probe or restart task for this model is running.
    busy: bool = False
    smoke_at: float | None = None
    smoke_busy: bool = False
    smoke_warning: str | None = None


@dataclass(frozen=True)
class ModelsBusy:
    """For the gateway: models a probe, restart or smoke check is talking to right now."""

    models: frozenset[str]


class ModelsOwner:
    def __init__(self, settings: Settings, engine: EngineAdapter, prober: Probing,
                 post: Callable[[Any], None], notify: Callable[[Any], None], journal: Journal,
                 clock: Callable[[], float], rand: Callable[[], float] = random.random) -> None:
        self._settings = settings
        self._rules = probe_rules_from(settings)
        self._engine = engine
        self._prober = prober
        self._post = post
        self._notify = notify
        self._journal = journal
        self._clock = clock
        self._rand = rand
        self._models: ModelSet | None = None
        self._ggufs: Mapping[str, GGUFInfo] = {}
        self._records: dict[str, _Record] = {}
        self._token: str | None = None
        self._serving = False
        # (time, work counter less our own probes' share, requests in flight)
        self._samples: deque[tuple[float, float | None, int | None]] = deque(maxlen=512)
        self._own_work = 0.0
        self._model_restarts = 0
        # Model -> key of its config entry and file; the keys whose load test passed.
        self._keys: dict[str, str] = {}
        self._load_tested: dict[str, str] = {}
        # A load test (or the restore after it) is under way: one swap at a time.
        self._swapping = False
        # From the gateway: models it is unloading (never probed meanwhile: a request that
        # reaches a llama-server child being stopped holds its exit up to its stop-timeout),
        # and whether it has requests in flight or waiting (then no load test swaps a model).
        self._gateway_unloading: frozenset[str] = frozenset()
        self._gateway_busy = False
        # The engine's version: from the setting until the running server reports its own.
        self._version: Version | None = Version.parse(settings.localai.version)
        self._version_reported = False
        self._told_busy: frozenset[str] = frozenset()
        self._tasks = TaskSet()

    # -- inputs from other owners --------------------------------------------------------

    def set_settings(self, settings: Settings) -> None:
        self._settings = settings
        self._rules = probe_rules_from(settings)
        if not self._version_reported:
            self._version = Version.parse(settings.localai.version)

    def configure(self, models: ModelSet, ggufs: Mapping[str, GGUFInfo]) -> None:
        """A new configuration deserves a fresh start for every model, FAILED ones included;
        a load test that passed stays valid while the model's entry and file are the same."""
        self._models = models
        self._ggufs = ggufs
        self._records = {name: _Record(mh.ModelHealth(name)) for name in models.names}
        self._keys = model_keys(models)
        self._load_tested = {n: k for n, k in self._load_tested.items()
                             if self._keys.get(n) == k}

    def serving_changed(self, token: str | None, serving: bool) -> None:
        if token != self._token:
            self._swapping = False
            # A new instance (or none): what the old one had loaded is gone with it.
            names = self._models.names if self._models else ()
            fresh = mh.reset(names, {n: r.health for n, r in self._records.items()})
            self._records = {n: _Record(h) for n, h in fresh.items()}
            self._samples.clear()
            self._own_work = 0.0
        self._token, self._serving = token, serving

    def gateway_changed(self, unloading: frozenset[str], busy: bool) -> None:
        self._gateway_unloading, self._gateway_busy = unloading, busy

    def report_busy(self) -> None:
        """Tell the gateway which models a probe, restart or smoke check is talking to: it
        unloads none of them until that is over (a llama-server child being stopped holds its
        exit for a request that reaches it, up to its 10 s stop-timeout)."""
        busy = frozenset(n for n, r in self._records.items() if r.busy or r.smoke_busy)
        if busy != self._told_busy:
            self._told_busy = busy
            self._notify(ModelsBusy(busy))

    def on_seen(self, token: str, seen: ModelsSeen) -> None:
        if token != self._token:
            return
        for name, rec in self._records.items():
            self._records[name] = replace(rec, is_listed=name in seen.models,
                                          listed=seen.models.get(name))

    def on_observed(self, token: str, at: float, loaded: Mapping[str, LoadState] | None,
                    work: float | None, in_flight: int | None) -> None:
        if token != self._token or not self._serving:
            return
        if loaded is not None:
            newly_failed = []
            for name, rec in self._records.items():
                state = loaded.get(name, LoadState.UNLOADED)
                if state is LoadState.FAILED and rec.load is not LoadState.FAILED:
                    newly_failed.append(name)
                self._records[name] = replace(rec, load=state)
            for name in newly_failed:
                if not self._records[name].busy:
                    self._judge(ModelProbed(token, name, False, f"model name={name} failed to "
                                            "load (the engine reports its load as failed)"))
        self._samples.append((at, None if work is None else work - self._own_work, in_flight))

    # -- scheduling ----------------------------------------------------------------------

    def schedule(self, now: float) -> None:
        if not self._settings.health.model_probes or not self._serving or self._token is None:
            return
        token = self._token
        self._schedule_smoke(token, now)
        if self._swapping:
            # A load test or its restore is swapping models: a probe now would find the
            # model it swaps out going away and count that against it (seen: the model just
            # load-tested failed its next probe while the restore evicted it).
            return
        idle = None if self._gateway_busy else \
            mh.idle_for(list(self._samples), now, PROBE_WORK)
        health = {n: r.health for n, r in self._records.items()
                  if not r.busy and n not in self._gateway_unloading}
        loaded = {n: r.load for n, r in self._records.items()}
        for probe in mh.due(health, loaded, idle, now, self._rules, self._load_tested):
            rec = self._records[probe.name]
            self._records[probe.name] = replace(
                rec, busy=True, health=mh.probe_started(rec.health, now))
            self._own_work += PROBE_WORK
            # A load test swaps the model in: put back what was loaded before, afterwards.
            restore = tuple(n for n, state in loaded.items()
                            if state is LoadState.LOADED) if probe.allow_load else ()
            self._swapping = self._swapping or probe.allow_load
            self._tasks.spawn(self._probe(token, probe, restore))

    def _schedule_smoke(self, token: str, now: float) -> None:
        every = self._settings.health.smoke_interval
        if not every:
            return
        for name, rec in self._records.items():
            if (rec.load is not LoadState.LOADED or rec.smoke_busy
                    or name in self._gateway_unloading
                    or (rec.smoke_at is not None and now - rec.smoke_at < every)):
                continue
            self._records[name] = replace(rec, smoke_at=now, smoke_busy=True)
            self._tasks.spawn(self._smoke(token, name))

    # -- tasks (effects only: they post what they found) ---------------------------------

    async def _probe(self, token: str, probe: mh.ProbeModel, restore: tuple[str, ...]) -> None:
        name = probe.name
        embeddings = any(e.embeddings for e in (self._models.entries if self._models else ())
                         if e.name == name)
        call = self._engine.probe_call(name, embeddings, allow_load=probe.allow_load)
        # How much the model has done so far: a timeout while it keeps working is "busy".
        window = max(2 * self._rules.timeout, PROGRESS_WINDOW_MIN)
        before = None if probe.allow_load else (
            await self._prober.activity([name], timeout=window)).work
        started = self._clock()
        status, text = await self._prober.call(call, probe.timeout)
        took = self._clock() - started
        if status == 200:
            self._post(ModelProbed(token, name, True, "", load_test=probe.allow_load,
                                   restore=restore, seconds=took))
            return
        cooldown = self._engine.cooldown_seconds(status, text)
        if cooldown is not None:
            self._post(ModelProbed(token, name, False, text[:200], cooldown=cooldown,
                                   seconds=took))
            return
        if status == 400 and "not loaded" in text:
            self._post(ModelProbed(token, name, False, text[:200], skipped=True, seconds=took))
            return
        detail = f"HTTP {status}: {text[:300]}" if status else text
        if status == 0 and before is not None:
            moved = await self._progress(name, before, window)
            if moved:
                self._post(ModelProbed(token, name, False, f"busy, not hung: {detail} while "
                                       f"it decoded {moved:g} more batch(es)", skipped=True,
                                       seconds=took))
                return
        self._post(ModelProbed(token, name, False, detail, load_test=probe.allow_load,
                               restore=restore, seconds=took, hung=status == 0))

    async def _progress(self, name: str, before: float, window: float) -> float:
        """How far the model's decode counter moved past ``before`` within ``window``
        seconds (0: not at all, or it could not be read)."""
        deadline = asyncio.get_running_loop().time() + window
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return 0.0
            work = (await self._prober.activity([name], timeout=left)).work
            if work is not None and work > before:
                return work - before
            await asyncio.sleep(min(PROGRESS_POLL_SECONDS, max(0.0, left)))

    async def _restore(self, token: str, names: tuple[str, ...], after: str) -> None:
        """Load again what a load test of ``after`` swapped out (one request each)."""
        for i, name in enumerate(names):
            call = self._engine.probe_call(name, False, allow_load=True)
            status, text = await self._prober.call(call, self._rules.load_timeout)
            self._post(ModelRestored(token, name, status == 200,
                                     f"after the load test of {after}" if status == 200
                                     else f"HTTP {status}: {text[:200]}",
                                     last=i == len(names) - 1))

    async def _smoke(self, token: str, name: str) -> None:
        limit = self._settings.health.smoke_max_tokens
        call = self._engine.probe_call(name, False)
        body = dict(call.body or {}, max_tokens=limit,
                    messages=[{"role": "user", "content": SMOKE_PROMPT}])
        status, text = await self._prober.call(Call(call.method, call.path, body),
                                               self._rules.timeout)
        warning = None
        if status == 200:
            try:
                data = json.loads(text)
                choice = data["choices"][0]
                content = str(choice.get("message", {}).get("content") or "")
                used = data.get("usage", {}).get("completion_tokens")
                gguf = self._ggufs.get(name)
                ends = [t for t in (gguf.eos_token, gguf.eot_token) if t] if gguf else []
                entry = next((e for e in self._models.entries if e.name == name), None) \
                    if self._models else None
                budget = request_budget(entry.context_size, entry.options or (),
                                        context_for(self._settings, self._version)) \
                    if entry else None
                warning = mh.smoke_verdict(content, choice.get("finish_reason"), used, limit,
                                           [*ends, *END_MARKERS],
                                           data.get("usage", {}).get("prompt_tokens"), budget)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                warning = f"unexpected answer shape: {exc}"
        self._post(Smoked(token, name, warning))

    async def _restart(self, token: str, name: str, reason: str) -> None:
        ok, busy, detail = True, False, ""
        for call in self._engine.restart_model_calls(name):
            # The timeout covers LocalAI's own 30 s wait for a busy model (load_timeout > 30 s).
            status, text = await self._prober.call(call, self._rules.load_timeout)
            answer = self._engine.restart_answer(status, text)
            if answer in (RestartAnswer.BUSY, RestartAnswer.FAILED):
                ok, busy = False, answer is RestartAnswer.BUSY
                detail = f"{call.method} {call.path}: HTTP {status}: {text[:200]}"
                break
        self._post(ModelRestarted(token, name, ok, detail or reason, busy))

    # -- outcomes ------------------------------------------------------------------------

    def on_probed(self, msg: ModelProbed) -> None:
        rec = self._records.get(msg.name)
        if rec is None:
            return
        self._records[msg.name] = replace(rec, busy=False)
        # An answer from an instance that is no longer serving (being stopped, or gone) says
        # nothing about the model.
        if msg.token != self._token or not self._serving:
            self._swapping = self._swapping and not msg.load_test
            return
        if msg.skipped:
            log.debug("probe.skipped", probe="model", model=msg.name, detail=msg.detail)
            return
        if msg.cooldown is not None:
            rec = self._records[msg.name]
            self._records[msg.name] = replace(rec, health=mh.cooling_down(
                rec.health, msg.cooldown, msg.detail, self._clock()))
            if rec.health.state is not mh.ModelState.COOLDOWN:
                log.warning("model.cooldown", model=msg.name, seconds=msg.cooldown,
                            detail=msg.detail, action="probing it again once the engine "
                            "loads it again; not counted as a failure")
            return
        if msg.load_test:
            if msg.ok:
                # It answered, so it is loaded now (the next readiness answer will say so).
                self._records[msg.name] = replace(self._records[msg.name],
                                                  load=LoadState.LOADED)
            if msg.ok and msg.name in self._keys:
                self._load_tested[msg.name] = self._keys[msg.name]
                log.info("model.load_tested", model=msg.name,
                         action="not swapped in by probes again until its config entry or "
                         "file changes" + (f"; restoring {', '.join(msg.restore)}"
                                           if msg.restore else ""))
            if msg.restore:
                self._tasks.spawn(self._restore(msg.token, msg.restore, msg.name))
            else:
                self._swapping = False
        self._judge(msg)

    def on_restored(self, msg: ModelRestored) -> None:
        self._swapping = self._swapping and not msg.last
        if msg.token == self._token and msg.ok and msg.name in self._records:
            self._records[msg.name] = replace(self._records[msg.name], load=LoadState.LOADED)
        if msg.ok:
            log.info("model.restored", model=msg.name, reason=msg.detail)
        else:
            log.warning("model.restore_failed", model=msg.name, error=msg.detail,
                        action="left unloaded; the next request for it loads it")

    def _judge(self, msg: ModelProbed) -> None:
        rec = self._records[msg.name]
        h2, action = mh.probe_result(rec.health, msg.ok, msg.detail, self._clock(), self._rules)
        self._records[msg.name] = replace(rec, health=h2)
        if not msg.ok:
            log.warning("probe.failed", probe="model", model=msg.name, error=msg.detail,
                        failures=h2.failures, state=h2.state.value)
        elif rec.health.state is mh.ModelState.FAILING:
            log.info("model.recovered", model=msg.name)
        refused = (self._engine.restart_alone_refused(self._version, msg.hung)
                   if isinstance(action, mh.RestartModel) else None)
        if refused is not None and action is not None:
            self._records[msg.name] = replace(self._records[msg.name], health=replace(
                h2, state=mh.ModelState.FAILING, escalated=True))
            log.error("model.escalate", model=msg.name, reason=f"{action.reason}; not "
                      f"restarted alone: {refused}", action="restarting the whole server")
            self._notify(Escalate(msg.token, f"model {msg.name} hung: {refused}",
                                  self._rand()))
        elif isinstance(action, mh.RestartModel):
            diag = diagnose(None, False, [msg.detail])
            self._start_restart(msg.token, msg.name, action.reason)
            log.warning("model.restart", model=msg.name, reason=action.reason,
                        cause=diag.cause.value, hint=diag.hint,
                        action="restarting this model alone; the server keeps serving")
            self._journal.note("model.restart", f"{msg.name}: {action.reason}")
        elif isinstance(action, mh.RestartServer):
            log.error("model.escalate", model=msg.name, reason=action.reason,
                      action="restarting the whole server")
            self._notify(Escalate(msg.token, action.reason, self._rand()))
        elif isinstance(action, mh.GiveUp):
            diag = diagnose(None, False, [msg.detail])
            log.error("model.failed", model=msg.name, reason=action.reason,
                      cause=diag.cause.value, hint=diag.hint,
                      action="stopped probing it; other models keep serving; "
                      f"`supervisorctl restart {msg.name}` to try again")
            self._journal.note("model.failed", action.reason)

    def _start_restart(self, token: str, name: str, reason: str) -> None:
        self._records[name] = replace(self._records[name], busy=True)
        self._model_restarts += 1
        self._tasks.spawn(self._restart(token, name, reason))

    def set_engine_version(self, version: Version | None) -> None:
        """The running server reported its version (it decides how a model is restarted)."""
        if version is not None:
            self._version, self._version_reported = version, True

    def on_restarted(self, msg: ModelRestarted) -> None:
        rec = self._records.get(msg.name)
        if rec is None:
            return
        rec = replace(rec, busy=False)
        if msg.token == self._token and msg.busy:
            # Asking again would wait the same 30 s for the same answer.
            rec = replace(rec, health=replace(mh.restart_done(rec.health, False, msg.detail),
                                              escalated=True))
            log.error("model.escalate", model=msg.name, reason=f"the engine would not stop it "
                      f"while busy or hung: {msg.detail}", action="restarting the whole server")
            self._notify(Escalate(msg.token, f"model {msg.name} busy or hung: the engine "
                                  "refused to stop it", self._rand()))
        elif msg.token == self._token:
            rec = replace(rec, health=mh.restart_done(rec.health, msg.ok, msg.detail))
            log.info("model.restarted", model=msg.name, ok=msg.ok, detail=msg.detail)
        self._records[msg.name] = rec

    def on_smoked(self, msg: Smoked) -> None:
        rec = self._records.get(msg.name)
        if rec is None:
            return
        before = rec.smoke_warning
        self._records[msg.name] = replace(rec, smoke_busy=False, smoke_warning=msg.warning)
        if msg.warning and msg.warning != before:
            log.warning("smoke.warning", model=msg.name, warning=msg.warning,
                        action="reported only; nothing restarted")

    # -- operator ------------------------------------------------------------------------

    def operator_restart(self, name: str) -> str | None:
        """Restart one model in place; the error to show when that cannot be done."""
        if name not in self._records:
            return f"no model named {name!r}; known: {', '.join(self._records) or 'none'}"
        if self._token is None or not self._serving:
            return "the server is not serving: restart the server instead"
        rec = self._records[name]
        self._records[name] = replace(
            rec, health=mh.ModelHealth(name, state=mh.ModelState.RESTARTING))
        self._start_restart(self._token, name, "operator")
        log.info("model.restart", model=name, reason="operator: supervisorctl restart MODEL",
                 action="restarting this model alone")
        return None

    # -- tasks ---------------------------------------------------------------------------

    async def close(self) -> None:
        await self._tasks.close()

    # -- views ---------------------------------------------------------------------------

    @property
    def serving(self) -> tuple[str | None, bool]:
        """The instance this owner believes serves, and whether it does (for tests)."""
        return self._token, self._serving

    def ready_count(self) -> tuple[int, int]:
        """(models the server lists and no probe has failed, models configured)."""
        total = len(self._models.entries) if self._models is not None else 0
        ok = (mh.ModelState.UNKNOWN, mh.ModelState.HEALTHY)
        ready = sum(1 for r in self._records.values() if r.is_listed and r.health.state in ok)
        return ready, total

    def failed(self) -> list[str]:
        return [n for n, r in self._records.items() if r.health.state is mh.ModelState.FAILED]

    def snapshot(self, now: float) -> ModelsSnapshot:
        out = []
        if self._models is not None:
            files = {f.name: f for f in self._models.files}
            for entry in self._models.entries:
                f = files.get(entry.name)
                rec = self._records.get(entry.name) or _Record(mh.ModelHealth(entry.name))
                h = rec.health
                g = self._ggufs.get(entry.name)
                out.append(ModelStatus(
                    name=entry.name, file=f.relpath if f else None, size=f.size if f else None,
                    listed=rec.is_listed, state=rec.listed,
                    loaded=rec.load is LoadState.LOADED, health=h.state,
                    last_probe_seconds_ago=round(now - h.last_probe, 3)
                    if h.last_probe is not None else None,
                    last_error=h.last_error, restarts=len(h.restarts),
                    cooldown_seconds=round(h.cooldown_until - now, 3)
                    if h.state is mh.ModelState.COOLDOWN and h.cooldown_until is not None
                    and h.cooldown_until > now else None,
                    output_warning=rec.smoke_warning,
                    architecture=g.architecture if g else None,
                    context_size=entry.context_size,
                    trained_context=g.context_length if g else None,
                    quantization=(g.quantization or g.file_type_name) if g else None))
        idle = mh.idle_for(list(self._samples), now, PROBE_WORK) if self._samples else None
        return ModelsSnapshot(models=out, model_restarts=self._model_restarts, idle_seconds=idle)
