"""Per-model health: which model to probe now, and what a failed probe leads to. Pure.

With one active backend (LocalAI's single active backend, llama-server's --models-max 1),
asking an unloaded model for anything swaps it in: slow, and it evicts the model users are
talking to. So loaded models are probed freely (llama-server: with autoload off, so even a
race cannot load anything). An unloaded model's ability to load is tested once per revision
of its config entry and file, only after the server has been idle long enough (or never);
the caller then restores what was loaded before. A model already failing is probed again
until its failure is resolved either way (restarted, escalated, or given up).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

# The setting's own enum: one vocabulary for "when-idle" / "never".
from .settings import ProbeUnloaded as UnloadedPolicy
from .vocab import LoadState


class ModelState(StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    FAILING = "failing"
    RESTARTING = "restarting"
    # The engine refuses to load it for a while after a failed load (LocalAI v4.7.0+: 503
    # for 10 s, doubling to 5 min): probes wait it out instead of counting failures.
    COOLDOWN = "cooldown"
    # Gave up: restarts (of the model, then of the server) did not help. Operator clears it.
    FAILED = "failed"


@dataclass(frozen=True)
class ProbeRules:
    interval: float = 30.0
    timeout: float = 10.0
    # A model's first load (first probe, or after a restart) may take this long.
    load_timeout: float = 300.0
    failure_threshold: int = 2
    unloaded: UnloadedPolicy = UnloadedPolicy.WHEN_IDLE
    idle_seconds: float = 60.0
    model_restarts: int = 2
    # Model restarts older than this are forgiven.
    restart_window: float = 900.0


@dataclass(frozen=True)
class ModelHealth:
    name: str
    state: ModelState = ModelState.UNKNOWN
    failures: int = 0
    last_probe: float | None = None
    last_ok: float | None = None
    last_error: str | None = None
    restarts: tuple[float, ...] = ()
    escalated: bool = False
    # True until a probe succeeded since the last (re)start: allows the long load timeout.
    cold: bool = True
    # COOLDOWN until then (monotonic).
    cooldown_until: float | None = None


@dataclass(frozen=True)
class ProbeModel:
    name: str
    # The probe may load the model: a load test of an unloaded one (a swap).
    allow_load: bool
    timeout: float


@dataclass(frozen=True)
class RestartModel:
    name: str
    reason: str


@dataclass(frozen=True)
class RestartServer:
    """A model still fails after model restarts: restart the whole server once."""

    name: str
    reason: str


@dataclass(frozen=True)
class GiveUp:
    name: str
    reason: str


ModelAction = RestartModel | RestartServer | GiveUp


def due(
    health: Mapping[str, ModelHealth],
    loaded: Mapping[str, LoadState],
    idle_for: float | None,
    now: float,
    rules: ProbeRules,
    load_tested: Collection[str] = (),
) -> list[ProbeModel]:
    """Models to probe now. At most one unloaded model per call: each one is a swap, and
    one that loaded fine for its current revision (``load_tested``) is not swapped in again."""
    out: list[ProbeModel] = []
    unloaded_taken = False
    for name, h in sorted(health.items()):
        if h.state in (ModelState.FAILED, ModelState.RESTARTING):
            continue
        if h.cooldown_until is not None and now < h.cooldown_until:
            continue
        if h.last_probe is not None and now - h.last_probe < rules.interval:
            continue
        state = loaded.get(name, LoadState.UNLOADED)
        timeout = rules.load_timeout if h.cold else rules.timeout
        if state == LoadState.LOADED:
            out.append(ProbeModel(name, allow_load=False, timeout=timeout))
        elif state == LoadState.LOADING:
            continue
        elif (rules.unloaded is UnloadedPolicy.WHEN_IDLE and not unloaded_taken
              and idle_for is not None and idle_for >= rules.idle_seconds
              and (name not in load_tested or h.state is ModelState.FAILING)):
            unloaded_taken = True
            out.append(ProbeModel(name, allow_load=True, timeout=rules.load_timeout))
    return out


def cooling_down(h: ModelHealth, seconds: float, detail: str, now: float) -> ModelHealth:
    """The engine said it will not load the model for ``seconds``: no failure counted (the
    failed load before it was), the next probe after it."""
    return replace(h, state=ModelState.COOLDOWN, cooldown_until=now + seconds,
                   last_error=detail)


def probe_started(h: ModelHealth, now: float) -> ModelHealth:
    return replace(h, last_probe=now)


def probe_result(
    h: ModelHealth, ok: bool, detail: str, now: float, rules: ProbeRules
) -> tuple[ModelHealth, ModelAction | None]:
    """Count a result; after ``failure_threshold`` failures restart the model, then the
    server once, then give up on the model (the other models keep serving)."""
    h = replace(h, cooldown_until=None)
    if ok:
        return replace(h, state=ModelState.HEALTHY, failures=0, last_ok=now,
                       last_error=None, cold=False, escalated=False), None
    failures = h.failures + 1
    h = replace(h, failures=failures, last_error=detail, state=ModelState.FAILING)
    if failures < rules.failure_threshold:
        return h, None
    recent = tuple(t for t in h.restarts if now - t < rules.restart_window)
    reason = f"{failures} failed probes: {detail}"
    if len(recent) < rules.model_restarts:
        return (replace(h, state=ModelState.RESTARTING, restarts=(*recent, now), failures=0,
                        cold=True), RestartModel(h.name, reason))
    if not h.escalated:
        return (replace(h, escalated=True, failures=0, cold=True, restarts=recent),
                RestartServer(h.name, f"model {h.name} still failing after {len(recent)} "
                              f"model restart(s): {detail}"))
    return (replace(h, state=ModelState.FAILED),
            GiveUp(h.name, f"model {h.name} still failing after model and server restarts: "
                   f"{detail}"))


def restart_done(h: ModelHealth, ok: bool, detail: str) -> ModelHealth:
    """The model restart calls returned; probes resume (cold: a reload may be slow)."""
    return replace(h, state=ModelState.FAILING, last_error=None if ok else detail, cold=True)


def reset(names: Sequence[str], old: Mapping[str, ModelHealth]) -> dict[str, ModelHealth]:
    """Fresh records for a (re)started server; FAILED and restart history survive a restart
    the supervisor chose for the model (``escalated``), nothing else does."""
    out = {}
    for name in names:
        prev = old.get(name)
        if prev is not None and prev.escalated:
            out[name] = ModelHealth(name, restarts=prev.restarts, escalated=True,
                                    state=prev.state if prev.state is ModelState.FAILED
                                    else ModelState.UNKNOWN)
        else:
            out[name] = ModelHealth(name)
    return out


def idle_for(samples: Sequence[tuple[float, float | None, int | None]], now: float,
             own_work: float) -> float | None:
    """Seconds the server has been idle, from (time, work counter, in-flight) samples.

    ``own_work`` is how much the supervisor's own probes may have added between samples;
    more than that, or anything in flight, is user traffic. A sample whose work could not
    be read (a model being swapped while its counters were asked for) counts as busy at
    that moment: it must not make the server look idle, nor keep it "unknown" for as long
    as the sample stays in the window (it did: a model failing one probe during a swap was
    never probed again while the window lasted). None: unknown now (the latest reading is
    missing, or there is none).
    """
    if not samples or samples[-1][1] is None:
        return None
    last_busy: float | None = None
    prev_work: float | None = None
    for t, work, flight in samples:
        busy = bool(flight) or work is None or (
            prev_work is not None and work - prev_work > own_work)
        if work is not None:
            prev_work = work
        if busy:
            last_busy = t
    start = samples[0][0]
    return now - (last_busy if last_busy is not None else start)


def smoke_verdict(content: str, finish_reason: str | None, completion_tokens: int | None,
                  max_tokens: int, end_tokens: Sequence[str], prompt_tokens: int | None = None,
                  budget: int | None = None) -> str | None:
    """What is wrong with a fixed-prompt answer, if anything (a warning, never a restart).

    ``budget``: the tokens one request gets (the slot's share of context_size). An answer
    that stops where prompt + answer fill it was cut, whatever ``finish_reason`` says:
    LocalAI reports "stop" there (LOCALAI-NOTES, failure 2)."""
    tail = content.rstrip()
    leaked = next((t for t in end_tokens if t and tail.endswith(t)), None)
    if leaked:
        return (f"the answer ends with the special token {leaked!r}: add it to stopwords or set "
                "template.use_tokenizer_template: true")
    if (budget is not None and prompt_tokens is not None and completion_tokens is not None
            and completion_tokens < max_tokens and prompt_tokens + completion_tokens >= budget - 1):
        return (f"the answer was cut off after {completion_tokens} tokens: prompt "
                f"({prompt_tokens}) + answer filled the {budget} tokens a request gets, though "
                f"finish_reason says {finish_reason!r} (raise context_size or lower the "
                "parallel slots)")
    if (finish_reason == "length" and completion_tokens is not None
            and completion_tokens < max_tokens):
        return (f"the answer was cut off after {completion_tokens} of {max_tokens} tokens: the "
                "slot's context is full (raise context_size or lower the parallel slots)")
    return None
