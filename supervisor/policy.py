"""The server's state machine and restart policy: pure decisions, no I/O, no clock reads.

``step(machine, event, now, rules)`` returns the next machine and the actions the daemon loop
must perform. Every legal transition is listed in ``_TABLE``; an event with no entry for the
current state is ignored (and the decision says so), never half-applied.

Giving up follows supervisord: ``FATAL`` only when retrying cannot help without a change --
``restart.start_retries`` starts in a row never became ready, or a launch error that says so
(an image that is not there). A server that was serving and then fails is restarted without
end, first at once, then with a capped exponential backoff that resets after
``restart.stable_after`` of serving (Docker: 10 s). An unreachable container engine is not a
failure of the server at all: nothing is launched and nothing counts until it is back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from .settings import RestartSection
from .vocab import Level, ProbeKind, RestartReason


class State(StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    UNHEALTHY = "UNHEALTHY"
    BACKOFF = "BACKOFF"
    # The container engine is unreachable: the server starts as soon as it is back.
    WAITING = "WAITING"
    STOPPING = "STOPPING"
    FATAL = "FATAL"


# States in which a server instance exists and is watched by probes.
LIVE_STATES = frozenset({State.STARTING, State.RUNNING, State.UNHEALTHY})

# This many failures within restart.failure_window: status and logs say "crash-looping".
CRASH_LOOP_FAILURES = 3
# WAITING relaunches when the runtime reports its engine back. When the runtime never said it
# was gone (a launch could not connect, yet the event stream did not break), that report may
# never come: then it tries again this often, one failed connect each time, counted as nothing.
WAITING_RETRY_SECONDS = 30.0
# An exit followed this soon by a launch that cannot reach the engine: the engine's shutdown
# stopped the server (dockerd stops its containers first), so the exit is not a failure.
OUTAGE_EXIT_SECONDS = 5.0


class Intent(StrEnum):
    """Why a stop was asked for, which decides what follows it."""

    RESTART = "restart"
    STOP = "stop"
    FAILURE = "failure"


# ---- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Operator or boot asks for a running server; also clears FATAL."""

    reason: str = "start"


@dataclass(frozen=True)
class Stop:
    reason: str = "stop"


@dataclass(frozen=True)
class Restart:
    """A planned restart (config change, operator): not a failure, no backoff.

    Requests in flight are drained first unless ``force``.
    """

    reason: str
    force: bool = False
    cause: RestartReason = RestartReason.OPERATOR


@dataclass(frozen=True)
class Escalate:
    """Something inside the live server failed beyond repair in place (a model that
    model restarts did not fix): restart the server, as a failure (with backoff)."""

    instance: str
    reason: str
    rand: float = 0.5


@dataclass(frozen=True)
class Adopted:
    """An already running instance matching the spec was taken over at boot."""

    instance: str
    # Container id or pid, for the log line.
    ident: str = ""


@dataclass(frozen=True)
class Launched:
    """A launch the policy asked for has produced this instance."""

    instance: str


@dataclass(frozen=True)
class LaunchFailed:
    """A launch produced no instance.

    ``permanent``: retrying cannot help without a change (the image is missing).
    ``engine_down``: the container engine did not answer; not the server's failure.
    """

    reason: str
    rand: float = 0.5
    permanent: bool = False
    engine_down: bool = False


@dataclass(frozen=True)
class Exited:
    """The instance stopped without being asked to (crash, OOM, kill).

    Only the current instance's exit counts: the server owner holds back an exit reported
    before its launch outcome, so the two always arrive in that order. ``outage``: it was
    found dead after the container engine came back (the engine's restart stopped it).
    """

    instance: str
    reason: str
    rand: float = 0.5
    outage: bool = False


@dataclass(frozen=True)
class Paused:
    """The container engine froze the instance (``docker pause``): it cannot answer."""

    instance: str
    rand: float = 0.5


@dataclass(frozen=True)
class Unpaused:
    """The outcome of the ``Unpause`` the policy asked for; ``error`` None when it worked."""

    instance: str
    error: str | None = None
    rand: float = 0.5


@dataclass(frozen=True)
class Stopped:
    """A stop the supervisor asked for has completed."""

    instance: str | None


@dataclass(frozen=True)
class ProbeResult:
    instance: str
    probe: ProbeKind
    ok: bool
    detail: str = ""
    rand: float = 0.5


@dataclass(frozen=True)
class EngineDown:
    """The runtime lost its container engine."""

    detail: str = ""


@dataclass(frozen=True)
class EngineUp:
    """The runtime reaches its container engine again (and has re-checked the instance)."""

    detail: str = ""


@dataclass(frozen=True)
class Tick:
    rand: float = 0.5


Event = (
    Start | Stop | Restart | Escalate | Adopted | Launched | LaunchFailed | Exited | Paused
    | Unpaused | Stopped | ProbeResult | EngineDown | EngineUp | Tick
)

# ---- actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """Start an instance of the current spec; ``restart`` says why, None for a first start."""

    reason: str
    restart: RestartReason | None = None


@dataclass(frozen=True)
class Terminate:
    """Stop the current instance (bounded by the stop timeout, then killed).

    ``drain``: first wait (bounded) for requests in flight; planned stops only.
    ``hung``: the server stopped answering; a graceful stop would only wait out the timeout.
    """

    reason: str
    drain: bool = False
    hung: bool = False


@dataclass(frozen=True)
class Unpause:
    """Thaw the instance: it keeps its loaded models and the requests it holds."""

    instance: str


@dataclass(frozen=True)
class Announce:
    """A state change worth one structured log event and a systemd STATUS= line."""

    event: str
    reason: str
    level: Level = Level.INFO


Action = Launch | Terminate | Unpause | Announce


# ---- state --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    state: State = State.STOPPED
    since: float = 0.0
    instance: str | None = None
    intent: Intent | None = None
    # Monotonic times of failures within restart.failure_window: "crash-looping".
    failures: tuple[float, ...] = ()
    # Consecutive failures since the server last served `stable_after`; drives the backoff.
    attempt: int = 0
    # Consecutive starts that failed before becoming ready: give up at start_retries.
    unready: int = 0
    retry_at: float | None = None
    # Instances that replaced an earlier one (counted when the launch produced one).
    restarts: int = 0
    # Why the launch in flight happens; None for a first start.
    launching: RestartReason | None = None
    # Why the machine is in its state (cleared when it is serving again).
    last_reason: str | None = None
    # Why the next launch happens (a failure's kind, or a planned restart's).
    cause: RestartReason | None = None
    liveness_failures: int = 0
    readiness_failures: int = 0
    # The current instance has been ready (reached RUNNING) at least once.
    ready: bool = False
    stable: bool = False
    unhealthy_since: float | None = None
    # What the runtime reports about its container engine (EngineDown / EngineUp).
    engine_up: bool = True
    # A launch could not reach the engine since the runtime last reported it up.
    unreachable: bool = False
    # (failures, attempt, unready) before the last exit was counted: undone if the relaunch
    # finds the engine gone (the exit was the engine's shutdown, not the server's fault).
    before_exit: tuple[tuple[float, ...], int, int] | None = None

    @property
    def crash_looping(self) -> bool:
        return len(self.failures) >= CRASH_LOOP_FAILURES


@dataclass(frozen=True)
class Rules:
    """The numbers the policy needs; built from settings, kept plain for tests."""

    restart: RestartSection = field(default_factory=RestartSection)
    failure_threshold: int = 3
    startup_timeout: float = 600.0
    unhealthy_grace: float = 120.0


@dataclass(frozen=True)
class Decision:
    machine: Machine
    actions: tuple[Action, ...] = ()
    ignored: bool = False


def backoff_delay(attempt: int, restart: RestartSection, rand: float) -> float:
    """Delay before the retry after the n-th consecutive failure: none after the first (only
    the relaunch is on the critical path), then exponential from ``backoff_initial``, capped,
    with +/- jitter."""
    if attempt <= 1:
        return 0.0
    # Cap the exponent before computing: a slow crash loop can run for thousands of attempts.
    exponent = min(attempt - 2, 64)
    base = min(restart.backoff_initial * restart.backoff_multiplier**exponent, restart.backoff_max)
    spread = base * restart.jitter
    return max(0.0, min(restart.backoff_max, base - spread + 2 * spread * rand))


def _enter(m: Machine, state: State, now: float, **changes: object) -> Machine:
    return replace(m, state=state, since=now, **changes)  # type: ignore[arg-type]


def _fail(m: Machine, now: float, rules: Rules, reason: str, rand: float,
          cause: RestartReason | None, *, needs_stop: bool, hung: bool = False,
          permanent: bool = False) -> Decision:
    """A failure: retry (at once, then backing off), or give up when retrying cannot help."""
    window = rules.restart.failure_window
    failures = (*(t for t in m.failures if now - t < window), now)
    attempt = m.attempt + 1
    # A server that became ready started fine: only starts that never did count to FATAL.
    unready = 0 if m.ready else m.unready + 1
    base = replace(m, failures=failures, attempt=attempt, unready=unready, last_reason=reason,
                   cause=cause, liveness_failures=0, readiness_failures=0, ready=False,
                   unhealthy_since=None)
    if permanent or unready >= rules.restart.start_retries:
        why = ("retrying cannot help" if permanent else
               f"not ready after {unready} start(s) in a row")
        actions: list[Action] = [Announce("server.fatal", f"{why}, last: {reason}", Level.ERROR)]
        if needs_stop:
            actions.insert(0, Terminate(reason, hung=hung))
            return Decision(_enter(base, State.STOPPING, now, intent=Intent.FAILURE,
                                   retry_at=None), tuple(actions))
        return Decision(_enter(base, State.FATAL, now, instance=None, retry_at=None,
                               intent=None), tuple(actions))
    delay = backoff_delay(attempt, rules.restart, rand)
    loop = (f"; crash-looping: {len(failures)} failures in {window:g}s"
            if base.crash_looping else "")
    announce = Announce("server.failed", f"{reason}; retrying in {delay:.1f}s{loop}",
                        Level.WARNING)
    if needs_stop:
        return Decision(
            _enter(base, State.STOPPING, now, intent=Intent.FAILURE, retry_at=now + delay),
            (Terminate(reason, hung=hung), announce),
        )
    return Decision(_enter(base, State.BACKOFF, now, instance=None, retry_at=now + delay,
                           intent=None), (announce,))


def _launch(m: Machine, now: float, reason: str, restart: RestartReason | None) -> Decision:
    return Decision(
        _enter(m, State.STARTING, now, instance=None, intent=None, retry_at=None,
               launching=restart, liveness_failures=0, readiness_failures=0, ready=False,
               stable=False, unhealthy_since=None, cause=None),
        (Launch(reason, restart),),
    )


def _counted(m: Machine) -> Machine:
    """The launch in flight produced an instance: a restart, unless it was the first start."""
    return replace(m, restarts=m.restarts + (m.launching is not None), launching=None)


def _exit_was_the_outage(m: Machine, now: float) -> Machine:
    """The engine went away within OUTAGE_EXIT_SECONDS of the last failure after an exit:
    that exit was its shutdown. Uncount it and the failed relaunches since."""
    if m.before_exit is None or not m.failures or now - m.failures[-1] >= OUTAGE_EXIT_SECONDS:
        return m
    failures, attempt, unready = m.before_exit
    return replace(m, failures=failures, attempt=attempt, unready=unready, before_exit=None,
                   cause=RestartReason.ENGINE_OUTAGE,
                   launching=None if m.launching is None else RestartReason.ENGINE_OUTAGE)


def _wait(m: Machine, now: float, reason: str) -> Decision:
    """Nothing can be launched while the engine is away: wait for it, counting nothing."""
    return Decision(
        _enter(m, State.WAITING, now, instance=None, intent=None,
               retry_at=now + WAITING_RETRY_SECONDS,
               last_reason=f"container engine unreachable ({reason}): starting when it is back"),
        (Announce("server.waiting", reason, Level.WARNING),),
    )


# ---- handlers: (machine, event, now, rules) -> Decision -----------------------------------


def _start_from_idle(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Start | Restart)
    fresh = replace(m, failures=(), attempt=0, unready=0, last_reason=None)
    restart = None
    if m.state is not State.STOPPED:  # FATAL, BACKOFF, WAITING: an earlier instance ran
        restart = e.cause if isinstance(e, Restart) else RestartReason.OPERATOR
    return _launch(fresh, now, e.reason, restart)


def _adopt(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Adopted)
    return Decision(
        _enter(m, State.STARTING, now, instance=e.instance, liveness_failures=0,
               readiness_failures=0, ready=False, last_reason="adopted at start"),
        (Announce("server.adopted",
                  f"instance {e.ident or e.instance} already runs the current spec"),),
    )


def _launched(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Launched)
    # Stay in STARTING; the since-timestamp restarts the startup timeout from here. The engine
    # answered, so an exit before this one was the server's own.
    return Decision(replace(_counted(m), instance=e.instance, since=now, before_exit=None,
                            unreachable=False))


def _launched_while_stopping(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Launched)
    # A stop decided while the launch was in flight: the Terminate queued behind the launch
    # stops exactly this instance, so track it until Stopped says it is gone.
    return Decision(replace(_counted(m), instance=e.instance))


def _launch_failed(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, LaunchFailed)
    if e.engine_down or not m.engine_up:
        # Nothing was started: the next launch is the same restart (or first start) again.
        m2 = _exit_was_the_outage(replace(m, unreachable=True, cause=m.launching), now)
        return _wait(replace(m2, before_exit=None), now, e.reason)
    return _fail(m, now, rules, f"launch failed: {e.reason}", e.rand, m.launching,
                 needs_stop=False, permanent=e.permanent)


def _exited(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Exited)
    if m.instance is None or e.instance != m.instance:
        return Decision(m, ignored=True)
    if e.outage:
        # Stopped with the container engine, not by a fault of its own: start it again.
        m2 = replace(m, cause=RestartReason.ENGINE_OUTAGE, instance=None)
        reason = f"stopped during a container engine outage ({e.reason})"
        if not m.engine_up:
            return _wait(m2, now, reason)
        return _launch(m2, now, reason, RestartReason.ENGINE_OUTAGE)
    d = _fail(m, now, rules, f"exited: {e.reason}", e.rand, RestartReason.CRASH,
              needs_stop=False)
    return replace(d, machine=replace(d.machine, before_exit=(m.failures, m.attempt, m.unready)))


def _paused(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Paused)
    if e.instance != m.instance:
        return Decision(m, ignored=True)
    # Known at once, and undone at once: thawed, the server still has its models loaded and
    # answers what it held; a relaunch would load them all again.
    return Decision(m, (Unpause(e.instance),))


def _unpaused(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Unpaused)
    if e.instance != m.instance:
        return Decision(m, ignored=True)
    if e.error is None:
        return Decision(replace(m, liveness_failures=0))
    # Frozen for good: as good as hung.
    return _fail(m, now, rules, f"paused by the container engine and cannot be unpaused: "
                 f"{e.error}", e.rand, RestartReason.HANG, needs_stop=True, hung=True)


def _probe(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, ProbeResult)
    if e.instance != m.instance:
        return Decision(m, ignored=True)
    if e.probe is ProbeKind.LIVENESS:
        if e.ok:
            return Decision(replace(m, liveness_failures=0))
        failures = m.liveness_failures + 1
        if m.state is State.STARTING:
            # A server that is still loading may not answer yet: the startup timeout decides.
            return Decision(replace(m, liveness_failures=failures, last_reason=e.detail))
        if failures >= rules.failure_threshold and m.engine_up:
            return _fail(m, now, rules, f"liveness probe failed {failures}x: {e.detail}",
                         e.rand, RestartReason.HANG, needs_stop=True, hung=True)
        # With the engine away nothing could be done; its return re-checks the instance.
        return Decision(replace(m, liveness_failures=failures))
    # readiness
    if e.ok:
        m2 = replace(m, readiness_failures=0, liveness_failures=0, ready=True, unready=0,
                     unhealthy_since=None)
        if m.state is State.RUNNING:
            return Decision(m2)
        event = "server.ready" if m.state is State.STARTING else "server.recovered"
        # The reason explained STARTING or UNHEALTHY; a serving server needs none.
        return Decision(_enter(m2, State.RUNNING, now, last_reason=None),
                        (Announce(event, e.detail or "all models listed"),))
    failures = m.readiness_failures + 1
    m2 = replace(m, readiness_failures=failures, last_reason=e.detail)
    if m.state is State.RUNNING and failures >= rules.failure_threshold:
        return Decision(_enter(m2, State.UNHEALTHY, now, unhealthy_since=now),
                        (Announce("server.unhealthy", e.detail, Level.WARNING),))
    return Decision(m2)


def _stop(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Stop)
    if m.state in (State.BACKOFF, State.FATAL, State.WAITING):
        return Decision(_enter(m, State.STOPPED, now, instance=None, retry_at=None,
                               last_reason=e.reason),
                        (Announce("server.stopped", e.reason),))
    return Decision(_enter(m, State.STOPPING, now, intent=Intent.STOP, retry_at=None,
                           last_reason=e.reason), (Terminate(e.reason, drain=True),))


def _restart(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Restart)
    if m.state in (State.BACKOFF, State.FATAL, State.STOPPED, State.WAITING):
        return _start_from_idle(m, e, now, rules)
    return Decision(
        _enter(m, State.STOPPING, now, intent=Intent.RESTART, retry_at=None, last_reason=e.reason,
               cause=e.cause),
        (Terminate(e.reason, drain=not e.force),),
    )


def _escalate(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Escalate)
    if e.instance != m.instance:
        return Decision(m, ignored=True)
    return _fail(m, now, rules, e.reason, e.rand, RestartReason.MODEL_ESCALATION,
                 needs_stop=True)


def _restart_while_stopping(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Restart | Start)
    # Whatever was going to follow the stop, a start follows it now; an operator's start
    # forgives earlier failures, exactly as it does from FATAL.
    cause = e.cause if isinstance(e, Restart) else RestartReason.OPERATOR
    return Decision(replace(m, intent=Intent.RESTART, last_reason=e.reason, failures=(),
                            attempt=0, unready=0, retry_at=None, cause=cause))


def _stop_while_stopping(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Stop)
    # A shutdown wins over whatever the stop was for (a restart, a backoff).
    return Decision(replace(m, intent=Intent.STOP, retry_at=None, last_reason=e.reason))


def _stopped(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Stopped)
    if m.intent is Intent.RESTART:
        restart = m.cause or RestartReason.OPERATOR
        if not m.engine_up:
            return _wait(replace(m, cause=restart), now, "after a planned stop")
        return _launch(m, now, m.last_reason or "restart", restart)
    if m.intent is Intent.FAILURE:
        if m.retry_at is None:
            return Decision(_enter(m, State.FATAL, now, instance=None, intent=None))
        return Decision(_enter(m, State.BACKOFF, now, instance=None, intent=None))
    return Decision(_enter(m, State.STOPPED, now, instance=None, intent=None),
                    (Announce("server.stopped", m.last_reason or "stopped"),))


def _engine_down(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, EngineDown)
    # dockerd stops its containers, then answers errors for a moment, then goes: the exit and
    # the relaunches that failed in that moment were its shutdown.
    return Decision(_exit_was_the_outage(replace(m, engine_up=False), now))


def _engine_up(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, EngineUp)
    m2 = replace(m, engine_up=True, unreachable=False)
    if m.state is State.WAITING:
        return _launch(m2, now, f"container engine back: {e.detail}" if e.detail
                       else "container engine back", m.cause)
    # A live instance keeps its clocks: what the engine's return found is reported separately.
    return Decision(m2)


def _tick(m: Machine, e: Event, now: float, rules: Rules) -> Decision:
    assert isinstance(e, Tick)
    if m.state is State.BACKOFF and m.retry_at is not None and now >= m.retry_at:
        if not m.engine_up or m.unreachable:
            return _wait(m, now, "the retry is due")
        return _launch(m, now, f"retry after: {m.last_reason}", m.cause)
    if (m.state is State.WAITING and m.engine_up and m.retry_at is not None
            and now >= m.retry_at):
        return _launch(m, now, "trying whether the container engine answers again", m.cause)
    if not m.engine_up:
        return Decision(m)  # timeouts wait for the engine: nothing could be done anyway
    if m.state is State.STARTING and now - m.since >= rules.startup_timeout:
        # Stop even when the launch has not reported back yet: the runtime performs the
        # Terminate after the launch, so a slow launch's instance is never left behind.
        return _fail(m, now, rules,
                     f"not ready within startup timeout {rules.startup_timeout:g}s"
                     + (f" ({m.last_reason})" if m.last_reason else ""),
                     e.rand, RestartReason.STARTUP_TIMEOUT, needs_stop=True)
    if m.state is State.RUNNING and not m.stable and now - m.since >= rules.restart.stable_after:
        return Decision(replace(m, stable=True, attempt=0))
    if (m.state is State.UNHEALTHY and m.unhealthy_since is not None
            and now - m.unhealthy_since >= rules.unhealthy_grace):
        return _fail(m, now, rules, f"unhealthy for {rules.unhealthy_grace:g}s: {m.last_reason}",
                     e.rand, RestartReason.UNHEALTHY, needs_stop=True)
    return Decision(m)


Handler = Callable[[Machine, Event, float, Rules], Decision]

_LIVE = (State.STARTING, State.RUNNING, State.UNHEALTHY)
_ALL = tuple(State)
_TABLE: dict[tuple[State, type], Handler] = {
    (State.STOPPED, Start): _start_from_idle,
    (State.STOPPED, Restart): _start_from_idle,
    (State.STOPPED, Adopted): _adopt,
    (State.FATAL, Start): _start_from_idle,
    (State.FATAL, Restart): _start_from_idle,
    (State.FATAL, Stop): _stop,
    (State.BACKOFF, Start): _start_from_idle,
    (State.BACKOFF, Restart): _start_from_idle,
    (State.BACKOFF, Stop): _stop,
    (State.BACKOFF, Tick): _tick,
    (State.WAITING, Start): _start_from_idle,
    (State.WAITING, Restart): _start_from_idle,
    (State.WAITING, Stop): _stop,
    (State.WAITING, Tick): _tick,
    (State.STARTING, Launched): _launched,
    (State.STARTING, LaunchFailed): _launch_failed,
    (State.STOPPING, Stopped): _stopped,
    (State.STOPPING, Launched): _launched_while_stopping,
    (State.STOPPING, Restart): _restart_while_stopping,
    (State.STOPPING, Start): _restart_while_stopping,
    (State.STOPPING, Stop): _stop_while_stopping,
    **{(s, Exited): _exited for s in _LIVE},
    **{(s, Paused): _paused for s in _LIVE},
    **{(s, Unpaused): _unpaused for s in _LIVE},
    **{(s, ProbeResult): _probe for s in _LIVE},
    **{(s, Stop): _stop for s in _LIVE},
    **{(s, Restart): _restart for s in _LIVE},
    **{(s, Escalate): _escalate for s in _LIVE},
    **{(s, Tick): _tick for s in _LIVE},
    # The engine's coming and going is recorded in every state.
    **{(s, EngineDown): _engine_down for s in _ALL},
    **{(s, EngineUp): _engine_up for s in _ALL},
}


def step(m: Machine, event: Event, now: float, rules: Rules) -> Decision:
    """Apply one event; unknown (state, event) pairs are ignored, not errors."""
    handler = _TABLE.get((m.state, type(event)))
    if handler is None:
        return Decision(m, ignored=True)
    return handler(m, event, now, rules)


def legal_transitions() -> dict[State, set[str]]:
    """Which events each state reacts to (for docs and tests)."""
    out: dict[State, set[str]] = {s: set() for s in State}
    for state, event_type in _TABLE:
        out[state].add(event_type.__name__)
    return out
