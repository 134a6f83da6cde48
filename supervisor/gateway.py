"""The swap-aware gateway's owner, and the messages between it and the proxy.

``GatewayOwner`` lives in the daemon loop: it owns the scheduler (queues, in-flight counts,
residency), the replies of waiting requests and the gateway's counters, and it learns the
server's state from the server owner's notices only. The HTTP side is ``proxy.py``: each
request's handler posts ``Arrived``, waits for its ``Ticket`` and reports ``Finished`` or
``Left``; it decides nothing. Admission, refusal and unloads are the owner's.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

from . import gpumem
from .effects import DrainResult
from .engines import EngineAdapter
from .engines.llamaserver import DEFAULT_MODELS_MAX
from .ggufinfo import GGUFInfo
from .gpumem import FreedWait
from .health import Probing
from .lint import footprint_bytes, llamacpp_parallel, slots_for
from .modelconfig import ModelSet
from .scheduler import (
    Action,
    Admit,
    Arrive,
    Close,
    Configure,
    Drain,
    Drained,
    Event,
    Finish,
    Leave,
    ModelLimits,
    Phase,
    PhaseChanged,
    Refusal,
    Refuse,
    Rules,
    Scheduler,
    Seal,
    Tick,
    Unload,
    Unloaded,
)
from .settings import Engine, Settings
from .status import GatewayModelStatus, GatewaySnapshot
from .tasks import TaskSet
from .versions import Version

log = structlog.get_logger("supervisor.gateway")

# Retry-After (seconds) by refusal: a full queue clears quickly, a restart takes longer.
RETRY_AFTER = {Refusal.QUEUE_FULL: 2, Refusal.QUEUE_TIMEOUT: 10,
               Refusal.SERVER_UNAVAILABLE: 10, Refusal.SERVER_DOWN: 30,
               Refusal.SUPERVISOR_STOPPING: 1}
NO_MODEL = "-"


class Outcome(StrEnum):
    """How a request through the gateway ended (a closed vocabulary: a metric label)."""

    COMPLETED = "completed"
    CLIENT_GONE = "client-gone"
    CUT_OFF = "cut-off"
    UPSTREAM_FAILED = "upstream-failed"
    QUEUE_FULL = "queue-full"
    QUEUE_TIMEOUT = "queue-timeout"
    SERVER_UNAVAILABLE = "server-unavailable"
    SERVER_DOWN = "server-down"
    SUPERVISOR_STOPPING = "supervisor-stopping"


# ---- messages (posted to the daemon loop) ----------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """The owner's answer to ``Arrived``: go (``refusal`` None), or the reason not to."""

    refusal: Refusal | None = None
    waited: float = 0.0
    swap_began: float | None = None


@dataclass(frozen=True)
class Arrived:
    rid: int
    model: str | None
    arrived: float
    reply: asyncio.Future[Ticket]


@dataclass(frozen=True)
class Finished:
    rid: int
    outcome: Outcome
    # Seconds from admission to the answer's first byte (None: no answer came).
    ttfb: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # False for an attempt that never reached the server and is queued again: not an outcome.
    counted: bool = True


@dataclass(frozen=True)
class Left:
    rid: int


@dataclass(frozen=True)
class UnloadDone:
    epoch: int
    models: tuple[str, ...]
    seconds: float
    error: str | None = None
    # The wait for NVML to show the memory free (None: no NVML, nothing waited for).
    freed: FreedWait | None = None


@dataclass(frozen=True)
class GatewayChanged:
    """For the models owner: models being unloaded for a swap, and whether any request is in
    flight or waiting (the models owner then neither probes those models nor load-tests)."""

    unloading: frozenset[str]
    busy: bool


@dataclass(frozen=True)
class DrainRequest:
    """A planned stop wants every request through the gateway finished (bounded)."""

    timeout: float
    reply: asyncio.Future[DrainResult]


# ---- the owner ---------------------------------------------------------------------------------


def rules_from(settings: Settings, models: ModelSet | None,
               ggufs: Mapping[str, GGUFInfo], gpu_total: int | None = None) -> Rules:
    """The scheduler's rules; the memory budget is ``server.gpu_memory_gb``, else what NVML
    says the GPUs have (``gpu_total``), else none."""
    g = settings.gateway
    srv = settings.server
    limits: dict[str, ModelLimits] = {}
    if models is not None:
        sizes = {f.name: f.size for f in models.files}
        for entry in models.entries:
            limits[entry.name] = ModelLimits(
                slots=slots_for(entry.options or (), srv.engine, llamacpp_parallel(settings),
                                Version.parse(settings.localai.version)),
                footprint=footprint_bytes(sizes.get(entry.name), entry.context_size,
                                          ggufs.get(entry.name)))
    max_resident: int | None = None  # LocalAI without a single active backend: no count
    if srv.single_active_backend:
        max_resident = 1
    elif srv.engine is Engine.LLAMA_SERVER:
        max_resident = settings.llama_server.models_max or DEFAULT_MODELS_MAX
    budget = int(srv.gpu_memory_gb * 1024**3) if srv.gpu_memory_gb else gpu_total
    return Rules(models=limits, max_resident=max_resident, memory_budget=budget,
                 queue_max=g.queue_max, queue_timeout=g.queue_timeout, max_hold=g.max_hold)


@dataclass
class _ModelCounts:
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    admitted: int = 0
    swaps: int = 0
    held: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wait_sum: float = 0.0
    wait_max: float = 0.0


@dataclass
class _Pending:
    reply: asyncio.Future[Ticket]
    model: str | None
    arrived: float
    # Arrived while the server was not serving: a held request.
    held: bool = False


@dataclass
class _Drain:
    reply: asyncio.Future[DrainResult]
    started: float
    deadline: float
    first: int


class GatewayOwner:
    """Owns the scheduler and everything the gateway counts; see the module docstring."""

    def __init__(self, settings: Settings, engine: EngineAdapter, prober: Probing,
                 post: Callable[[Any], None], clock: Callable[[], float],
                 observe: GatewayObserver | None = None,
                 notify: Callable[[Any], None] = lambda notice: None,
                 gpu_used: Callable[[], int | None] = gpumem.used_bytes) -> None:
        self._settings = settings
        self._engine = engine
        self._prober = prober
        self._post = post
        self._clock = clock
        self._observe = observe or GatewayObserver()
        self.sched = Scheduler(rules_from(settings, None, {}))
        self._models: tuple[ModelSet | None, Mapping[str, GGUFInfo]] = (None, {})
        self._gpu_total: int | None = None
        self._pending: dict[int, _Pending] = {}
        self._admitted: dict[int, tuple[str | None, float, float | None]] = {}
        self._counts: dict[str, _ModelCounts] = {}
        self._token: str | None = None
        self._drains: list[_Drain] = []
        self._tasks = TaskSet()
        self._notify = notify
        self._told = GatewayChanged(frozenset(), False)
        self._gpu_used = gpu_used
        # Models the models owner is probing; an unload waits until none of its models is.
        self._probing: frozenset[str] = frozenset()
        self._held_unload: tuple[Unload, int] | None = None

    # -- inputs ----------------------------------------------------------------------------

    def configure(self, models: ModelSet, ggufs: Mapping[str, GGUFInfo]) -> None:
        self._models = (models, ggufs)
        self._step(Configure(rules_from(self._settings, models, ggufs, self._gpu_total)))

    def set_settings(self, settings: Settings) -> None:
        self._settings = settings
        self._step(Configure(rules_from(settings, *self._models, self._gpu_total)))

    def set_gpu_total(self, total: int | None) -> None:
        """What NVML says the GPUs hold (read off the loop at start): the budget when
        ``server.gpu_memory_gb`` is unset."""
        self._gpu_total = total
        self._step(Configure(rules_from(self._settings, *self._models, total)))

    def serving_changed(self, token: str | None, serving: bool, down: bool) -> None:
        phase = Phase.OPEN if serving else Phase.DOWN if down else Phase.HELD
        fresh = serving and token != self._token
        if serving:
            self._token = token
        if phase is not self.sched.phase or fresh:
            log.info("gateway.phase", old=self.sched.phase.value, new=phase.value,
                     waiting=self.sched.waiting, in_flight=self.sched.admitted)
        self._step(PhaseChanged(phase, fresh=fresh))

    def on_arrived(self, msg: Arrived) -> None:
        if msg.reply.done():  # the client left before the loop saw it
            return
        self._pending[msg.rid] = _Pending(msg.reply, msg.model, msg.arrived,
                                          held=self.sched.phase is not Phase.OPEN)
        self._step(Arrive(msg.rid, msg.model, msg.arrived))

    def on_finished(self, msg: Finished) -> None:
        admitted = self._admitted.pop(msg.rid, None)
        if admitted is not None and msg.counted:
            model, at, swap_began = admitted
            label = model or NO_MODEL
            counts = self._counts.setdefault(label, _ModelCounts())
            counts.outcomes[msg.outcome] += 1
            counts.prompt_tokens += msg.prompt_tokens or 0
            counts.completion_tokens += msg.completion_tokens or 0
            swap = None
            if swap_began is not None and msg.ttfb is not None:
                swap = at + msg.ttfb - swap_began
            self._observe.finished(label, msg.ttfb, swap)
            if msg.outcome is Outcome.CUT_OFF:
                log.warning("gateway.cut_off", model=label,
                            cause="the server closed the stream mid-answer",
                            action="ended the client's stream with an error event")
            elif msg.outcome is Outcome.UPSTREAM_FAILED:
                log.warning("gateway.upstream_failed", model=label,
                            cause="the server closed the connection before answering",
                            action="answered 502")
        self._step(Finish(msg.rid))

    def on_left(self, msg: Left) -> None:
        pending = self._pending.pop(msg.rid, None)
        admitted = self._admitted.pop(msg.rid, None)
        model = pending.model if pending else admitted[0] if admitted else None
        if pending is not None or admitted is not None:
            label = model if model is not None and model in self.sched.rules.models \
                else NO_MODEL
            self._counts.setdefault(label, _ModelCounts()).outcomes[Outcome.CLIENT_GONE] += 1
        self._step(Leave(msg.rid))

    def on_unloaded(self, msg: UnloadDone) -> None:
        if msg.error:
            log.warning("gateway.unload_failed", models=list(msg.models), error=msg.error,
                        action="swapping anyway: the engine unloads by itself")
        else:
            log.info("gateway.unloaded", models=list(msg.models), seconds=round(msg.seconds, 3))
        freed = msg.freed
        if freed is not None and freed.freed is not None:
            if freed.reached:
                log.info("gateway.gpu_memory_freed", models=list(msg.models),
                         freed_mib=freed.freed >> 20, seconds=round(freed.seconds, 3))
            else:
                log.warning("gateway.gpu_memory_not_freed", models=list(msg.models),
                            freed_mib=freed.freed >> 20, seconds=round(freed.seconds, 3),
                            cause="NVML still shows most of the unloaded model's memory used",
                            action="letting the next model in anyway")
        self._step(Unloaded(msg.epoch))

    def stopping(self) -> None:
        """The supervisor received its stop signal: refuse what waits and what comes (503,
        Retry-After 1, Connection: close), so clients ask again, of the next daemon."""
        self._step(Close())

    def seal(self) -> None:
        """The loop is ending: refuse what still waits now (with on_stop = leave the daemon
        exits at once, and nothing would answer those requests)."""
        self._step(Seal())

    def on_drain_request(self, msg: DrainRequest) -> None:
        now = self._clock()
        self._drains.append(_Drain(msg.reply, now, now + msg.timeout, self.sched.admitted))
        self._step(Drain())

    def tick(self, now: float) -> None:
        for d in [d for d in self._drains if now >= d.deadline]:
            self._drains.remove(d)
            left = self.sched.admitted
            if not d.reply.done():
                d.reply.set_result(DrainResult(d.first, drained=max(0, d.first - left),
                                               cut_off=left, seconds=now - d.started))
        if self.sched.waiting:
            # Not only at next_deadline: a hold that just ended drops out of it once acted on.
            self._step(Tick())

    def next_deadline(self) -> float | None:
        times = [d.deadline for d in self._drains]
        due = self.sched.next_deadline(self._clock())
        if due is not None:
            times.append(due)
        return min(times) if times else None

    # -- actions ---------------------------------------------------------------------------

    def _step(self, event: Event) -> None:
        now = self._clock()
        for action in self.sched.step(event, now):
            self._perform(action, now)
        news = GatewayChanged(frozenset(self.sched.unloading),
                              bool(self.sched.admitted or self.sched.waiting))
        if news != self._told:
            self._told = news
            self._notify(news)

    def _perform(self, action: Action, now: float) -> None:
        if isinstance(action, Admit):
            pending = self._pending.pop(action.rid, None)
            self._admitted[action.rid] = (action.model, now, action.swap_began)
            label = action.model or NO_MODEL
            counts = self._counts.setdefault(label, _ModelCounts())
            counts.admitted += 1
            counts.wait_sum += action.waited
            counts.wait_max = max(counts.wait_max, action.waited)
            if pending is not None and pending.held:
                counts.held += 1
            self._observe.admitted(label, action.waited)
            if pending is None or pending.reply.done():
                # Its client left before the ticket: nobody will report it finished.
                self._post(Left(action.rid))
            else:
                pending.reply.set_result(Ticket(None, action.waited, action.swap_began))
        elif isinstance(action, Refuse):
            pending = self._pending.pop(action.rid, None)
            label = action.model or NO_MODEL
            outcome = Outcome(action.why.value)
            self._counts.setdefault(label, _ModelCounts()).outcomes[outcome] += 1
            log.warning("gateway.refused", model=label, why=action.why.value,
                        waited=round(action.waited, 3), status=action.why.status,
                        action=f"answered {action.why.status} with Retry-After "
                        f"{RETRY_AFTER[action.why]}s")
            if pending is not None and not pending.reply.done():
                pending.reply.set_result(Ticket(action.why, action.waited))
        elif isinstance(action, Unload):
            self._counts.setdefault(action.for_model, _ModelCounts()).swaps += 1
            log.info("gateway.swap", unload=list(action.models), load=action.for_model)
            expected = sum(self.sched.rules.models[m].footprint or 0
                           for m in action.models if m in self.sched.rules.models)
            self._held_unload = (action, expected)
            self._release_unload()
        elif isinstance(action, Drained):
            for d in self._drains:
                if not d.reply.done():
                    d.reply.set_result(DrainResult(d.first, drained=d.first,
                                                   seconds=now - d.started))
            self._drains.clear()

    def models_busy(self, models: frozenset[str]) -> None:
        self._probing = models
        self._release_unload()

    def _release_unload(self) -> None:
        """Start the unload the scheduler asked for once no probe talks to its models (new
        probes of them are not started meanwhile: ``GatewayChanged.unloading``)."""
        if self._held_unload is None:
            return
        action, expected = self._held_unload
        if action.epoch != self.sched.unloading_epoch:
            self._held_unload = None  # a new instance: nothing of the old one to unload
            return
        if self._probing & set(action.models):
            return
        self._held_unload = None
        self._tasks.spawn(self._unload(action, expected))

    async def _unload(self, action: Unload, expected: int) -> None:
        """Unload, then wait (bounded) until the GPU shows the memory free."""
        started = self._clock()
        before = await asyncio.to_thread(self._gpu_used)
        errors = []
        for model in action.models:
            status, text = await self._prober.call(self._engine.unload_call(model),
                                                   self._settings.gateway.unload_timeout)
            # Not loaded (400/404, or 500 before LocalAI v4.8.0) is as good as unloaded.
            if status not in (200, 400, 404, 500):
                errors.append(f"{model}: HTTP {status}: {text[:200]}")
        seconds = self._clock() - started
        freed = await gpumem.wait_freed(lambda: asyncio.to_thread(self._gpu_used), before,
                                        expected, self._clock)
        self._post(UnloadDone(action.epoch, action.models, seconds, "; ".join(errors) or None,
                              freed))

    async def close(self) -> None:
        await self._tasks.close()

    # -- views -----------------------------------------------------------------------------

    def snapshot(self) -> GatewaySnapshot:
        models = sorted(set(self.sched.rules.models) | set(self._counts))
        out = []
        for m in models:
            c = self._counts.get(m, _ModelCounts())
            key = None if m == NO_MODEL else m
            out.append(GatewayModelStatus(
                model=m, resident=m in self.sched.resident,
                in_flight=self.sched.in_flight[key], queued=self.sched.queued(key),
                requests={o.value: n for o, n in sorted(c.outcomes.items()) if n},
                swaps=c.swaps, held=c.held, prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens,
                mean_wait_seconds=round(c.wait_sum / c.admitted, 4) if c.admitted else 0.0,
                max_wait_seconds=round(c.wait_max, 4)))
        return GatewaySnapshot(phase=self.sched.phase, listen=self._settings.gateway.listen,
                               upstream=self._settings.probe_base_url,
                               unloading=list(self.sched.unloading), models=out)


class GatewayObserver:
    """Where the owner reports the durations it sees (histograms for /metrics; its counts
    are in the snapshot); no-op by default."""

    def admitted(self, model: str, waited: float) -> None:
        pass

    def finished(self, model: str, ttfb: float | None, swap_seconds: float | None) -> None:
        pass
