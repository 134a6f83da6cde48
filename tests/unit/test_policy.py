"""The server state machine: ``step(machine, event, now, rules)`` with a fake monotonic clock."""

from __future__ import annotations

import typing
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from supervisor.policy import (
    LIVE_STATES,
    Action,
    Adopted,
    Announce,
    Decision,
    Escalate,
    Event,
    Exited,
    Intent,
    Launch,
    Launched,
    LaunchFailed,
    Machine,
    ProbeResult,
    Restart,
    Rules,
    Start,
    State,
    Stop,
    Stopped,
    Terminate,
    Tick,
    backoff_delay,
    legal_transitions,
    step,
)
from supervisor.settings import RestartSection
from supervisor.vocab import ProbeKind, RestartReason

RESTART = RestartSection(
    backoff_initial=1.0, backoff_max=60.0, backoff_multiplier=2.0, jitter=0.2,
    max_failures=5, failure_window=300.0, stable_after=120.0,
)
RULES = Rules(restart=RESTART, failure_threshold=3, startup_timeout=600.0, unhealthy_grace=120.0)


# ---- helpers ------------------------------------------------------------------------------


def feed(m: Machine, *timed: tuple[float, Event], rules: Rules = RULES
         ) -> tuple[Machine, list[Action]]:
    """Apply events in order; every one of them must be handled (not ignored)."""
    actions: list[Action] = []
    for now, event in timed:
        d = step(m, event, now, rules)
        assert not d.ignored, f"{event!r} ignored in {m.state}"
        m = d.machine
        actions.extend(d.actions)
    return m, actions


def live_fail(instance: str = "i1", detail: str = "connection refused",
              rand: float = 0.5) -> ProbeResult:
    return ProbeResult(instance, ProbeKind.LIVENESS, False, detail, rand)


def live_ok(instance: str = "i1") -> ProbeResult:
    return ProbeResult(instance, ProbeKind.LIVENESS, True)


def ready_fail(instance: str = "i1", detail: str = "model b not listed") -> ProbeResult:
    return ProbeResult(instance, ProbeKind.READINESS, False, detail)


def ready_ok(instance: str = "i1", detail: str = "") -> ProbeResult:
    return ProbeResult(instance, ProbeKind.READINESS, True, detail)


def starting() -> Machine:
    """Booted at t=0, launch still in flight."""
    return step(Machine(), Start("boot"), 0.0, RULES).machine


def launched(instance: str = "i1") -> Machine:
    """STARTING with instance ``instance`` launched at t=1."""
    return feed(starting(), (1.0, Launched(instance)))[0]


def running(instance: str = "i1") -> Machine:
    """RUNNING since t=2."""
    return feed(launched(instance), (2.0, ready_ok(instance)))[0]


def unhealthy(instance: str = "i1") -> Machine:
    """UNHEALTHY since t=12 (readiness failed at 10, 11, 12)."""
    return feed(running(instance), *[(t, ready_fail(instance)) for t in (10.0, 11.0, 12.0)])[0]


def crash_cycles(m: Machine, n: int, now: float, rules: Rules = RULES
                 ) -> tuple[Machine, float, list[Action]]:
    """From a live machine: crash, back off, relaunch; ``n`` times. Ends on the n-th crash."""
    actions: list[Action] = []
    for k in range(n):
        assert m.instance is not None
        d = step(m, Exited(m.instance, "crash", 0.5), now, rules)
        m = d.machine
        actions.extend(d.actions)
        if k == n - 1 or m.state is not State.BACKOFF:
            break
        assert m.retry_at is not None
        now = m.retry_at
        m, more = feed(m, (now, Tick()), (now, Launched(f"i{k + 2}")), rules=rules)
        actions.extend(more)
    return m, now, actions


def fatal() -> Machine:
    m, _, _ = crash_cycles(running(), RESTART.max_failures, 100.0)
    assert m.state is State.FATAL
    return m


# ---- boot, launch, readiness ------------------------------------------------------------


def test_boot_start_launches() -> None:
    d = step(Machine(), Start("boot"), 0.0, RULES)
    assert d.machine.state is State.STARTING
    assert d.machine.since == 0.0
    assert d.machine.instance is None
    assert d.machine.restarts == 0
    assert d.actions == (Launch("boot"),)
    assert not d.ignored


def test_launched_records_instance_and_restarts_the_startup_clock() -> None:
    m = starting()
    d = step(m, Launched("i1"), 42.0, RULES)
    assert d.machine.state is State.STARTING
    assert d.machine.instance == "i1"
    assert d.machine.since == 42.0
    assert d.actions == ()


@pytest.mark.parametrize(("detail", "reason"),
                         [("", "all models listed"), ("2 models", "2 models")])
def test_readiness_ok_in_starting_announces_ready(detail: str, reason: str) -> None:
    d = step(launched(), ready_ok(detail=detail), 5.0, RULES)
    assert d.machine.state is State.RUNNING
    assert d.machine.since == 5.0
    assert d.machine.ready is True
    assert d.actions == (Announce("server.ready", reason),)


def test_readiness_ok_while_running_changes_nothing_visible() -> None:
    m = running()
    d = step(m, ready_ok(), 50.0, RULES)
    assert d.machine.state is State.RUNNING
    assert d.machine.since == m.since
    assert d.actions == ()


def test_launch_failed_backs_off() -> None:
    d = step(starting(), LaunchFailed("image not found", 0.5), 3.0, RULES)
    assert d.machine.state is State.BACKOFF
    assert d.machine.retry_at == 4.0
    assert d.machine.attempt == 1
    assert d.machine.last_reason == "launch failed: image not found"
    assert d.actions == (
        Announce("server.failed", "launch failed: image not found; retrying in 1.0s", "warning"),
    )


# ---- liveness ---------------------------------------------------------------------------


def test_liveness_failures_below_threshold_keep_running_and_success_resets_them() -> None:
    m = running()
    for count in range(1, RULES.failure_threshold):
        d = step(m, live_fail(), 10.0 + count, RULES)
        m = d.machine
        assert m.state is State.RUNNING
        assert m.liveness_failures == count
        assert d.actions == ()
    d = step(m, live_ok(), 20.0, RULES)
    assert d.machine.state is State.RUNNING
    assert d.machine.liveness_failures == 0


def test_liveness_failures_at_threshold_stop_then_back_off() -> None:
    m = feed(running(), (10.0, live_fail()), (15.0, live_fail()))[0]
    d = step(m, live_fail(detail="timeout"), 20.0, RULES)
    reason = "liveness probe failed 3x: timeout"
    assert d.machine.state is State.STOPPING
    assert d.machine.intent is Intent.FAILURE
    assert d.machine.instance == "i1"
    assert d.machine.retry_at == 20.0 + backoff_delay(1, RESTART, 0.5) == 21.0
    assert d.machine.failures == (20.0,)
    assert d.machine.attempt == 1
    assert d.machine.liveness_failures == 0
    assert d.machine.ready is False
    # A failure stop never drains; a server that stopped answering is killed without grace.
    assert d.actions == (
        Terminate(reason, drain=False, hung=True),
        Announce("server.failed", f"{reason}; retrying in 1.0s", "warning"),
    )

    d2 = step(d.machine, Stopped("i1"), 22.0, RULES)
    assert d2.machine.state is State.BACKOFF
    assert d2.machine.since == 22.0
    assert d2.machine.instance is None
    assert d2.machine.intent is None
    assert d2.machine.retry_at == 21.0
    assert d2.actions == ()


def test_liveness_failures_while_starting_never_fail_the_server() -> None:
    m = launched()
    for k in range(10 * RULES.failure_threshold):
        d = step(m, live_fail(detail="503 loading"), 2.0 + k, RULES)
        m = d.machine
        assert d.actions == ()
    assert m.state is State.STARTING
    assert m.liveness_failures == 10 * RULES.failure_threshold
    assert m.last_reason == "503 loading"
    assert m.failures == ()


def test_liveness_failures_count_while_unhealthy() -> None:
    m = feed(unhealthy(), (13.0, live_fail()), (14.0, live_fail()))[0]
    assert m.state is State.UNHEALTHY
    d = step(m, live_fail(), 15.0, RULES)
    assert d.machine.state is State.STOPPING
    assert d.machine.intent is Intent.FAILURE


# ---- startup timeout --------------------------------------------------------------------


def test_startup_timeout_is_measured_from_launch() -> None:
    m = launched()  # since 1.0
    d = step(m, Tick(), 1.0 + RULES.startup_timeout - 0.001, RULES)
    assert d.machine == m
    assert d.actions == ()
    d = step(m, Tick(0.5), 1.0 + RULES.startup_timeout, RULES)
    reason = "not ready within startup timeout 600s"
    assert d.machine.state is State.STOPPING
    assert d.machine.intent is Intent.FAILURE
    assert d.actions[0] == Terminate(reason)
    assert d.machine.last_reason == reason


def test_startup_timeout_reason_carries_the_last_probe_detail() -> None:
    m = feed(launched(), (5.0, live_fail(detail="503 loading model")))[0]
    d = step(m, Tick(), 601.0, RULES)
    assert d.machine.last_reason == "not ready within startup timeout 600s (503 loading model)"


def test_startup_timeout_during_a_slow_launch_stops_what_the_launch_produces() -> None:
    # The launch has not reported back: the Terminate is performed after it, on its instance.
    d = step(starting(), Tick(0.5), RULES.startup_timeout, RULES)
    assert d.machine.state is State.STOPPING
    assert d.machine.intent is Intent.FAILURE
    assert d.machine.cause is RestartReason.STARTUP_TIMEOUT
    assert any(isinstance(a, Terminate) for a in d.actions)
    assert d.machine.retry_at == RULES.startup_timeout + 1.0
    m = feed(d.machine, (601.0, Launched("late")))[0]
    assert m.instance == "late" and m.state is State.STOPPING
    m = feed(m, (602.0, Stopped("late")))[0]
    assert m.state is State.BACKOFF and m.instance is None


def test_launch_failure_after_a_stop_was_decided_is_ignored() -> None:
    m = step(starting(), Stop("shutdown"), 1.0, RULES).machine
    assert step(m, LaunchFailed("image missing"), 2.0, RULES).ignored


# ---- exits, backoff ---------------------------------------------------------------------


def test_exit_while_running_backs_off() -> None:
    d = step(running(), Exited("i1", "exit code 137, OOM-killed", 0.5), 30.0, RULES)
    assert d.machine.state is State.BACKOFF
    assert d.machine.instance is None
    assert d.machine.retry_at == 31.0
    assert d.machine.failures == (30.0,)
    assert d.machine.last_reason == "exited: exit code 137, OOM-killed"
    assert d.actions == (
        Announce("server.failed", "exited: exit code 137, OOM-killed; retrying in 1.0s",
                 "warning"),
    )


def test_exit_of_an_instance_not_launched_yet_is_ignored() -> None:
    # The server owner holds such an exit back until the launch reports its instance.
    assert step(starting(), Exited("i9", "exit code 1"), 1.0, RULES).ignored


def test_backoff_waits_for_retry_at_then_launches() -> None:
    m = step(running(), Exited("i1", "exit code 1", 0.5), 10.0, RULES).machine
    assert m.retry_at == 11.0
    d = step(m, Tick(), 10.999, RULES)
    assert d.machine == m
    assert d.actions == ()
    assert not d.ignored
    d = step(m, Tick(), 11.0, RULES)
    assert d.machine.state is State.STARTING
    assert d.machine.retry_at is None
    assert d.machine.restarts == 1
    assert d.machine.attempt == 1  # only stability resets the backoff
    assert d.actions == (Launch("retry after: exited: exit code 1", RestartReason.CRASH),)


def test_consecutive_failures_double_the_delay_up_to_the_cap() -> None:
    rules = replace(RULES, restart=RESTART.model_copy(update={"max_failures": 100}))
    m, now = running(), 100.0
    delays = []
    for k in range(9):
        assert m.instance is not None
        m = step(m, Exited(m.instance, "crash", 0.5), now, rules).machine
        assert m.retry_at is not None
        delays.append(m.retry_at - now)
        now = m.retry_at
        m = feed(m, (now, Tick()), (now, Launched(f"j{k}")), rules=rules)[0]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (0, 0.5, 1.0),  # attempt 0 is treated like the first
        (1, 0.5, 1.0),
        (2, 0.5, 2.0),
        (3, 0.5, 4.0),
        (6, 0.5, 32.0),
        (7, 0.5, 60.0),  # 64 capped
        (30, 0.5, 60.0),
        (1, 0.0, 0.8),  # -20% jitter
        (1, 1.0, 1.2),  # +20% jitter
        (3, 0.0, 3.2),
        (3, 1.0, 4.8),
        (30, 0.0, 48.0),  # jitter below the cap still applies
        (30, 1.0, 60.0),  # but never above the cap
    ],
)
def test_backoff_delay_table(attempt: int, rand: float, expected: float) -> None:
    assert backoff_delay(attempt, RESTART, rand) == pytest.approx(expected)


def test_backoff_delay_without_jitter_is_exact() -> None:
    restart = RESTART.model_copy(update={"jitter": 0.0})
    assert [backoff_delay(n, restart, 0.99) for n in range(1, 5)] == [1.0, 2.0, 4.0, 8.0]


@hsettings(max_examples=150, deadline=None, database=None)
@given(
    attempt=st.integers(1, 60),
    rand=st.floats(0.0, 1.0),
    initial=st.floats(0.01, 100.0),
    cap=st.floats(0.01, 1000.0),
    multiplier=st.floats(1.0, 4.0),
    jitter=st.floats(0.0, 1.0),
)
def test_backoff_delay_bounds(attempt: int, rand: float, initial: float, cap: float,
                              multiplier: float, jitter: float) -> None:
    restart = RestartSection(backoff_initial=initial, backoff_max=cap,
                             backoff_multiplier=multiplier, jitter=jitter)
    base = min(initial * multiplier ** (attempt - 1), cap)
    delay = backoff_delay(attempt, restart, rand)
    assert 0.0 <= delay <= cap
    assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9
    # More failures never shorten the wait (for the same random draw).
    assert backoff_delay(attempt + 1, restart, rand) >= delay - 1e-9


def test_backoff_delay_for_a_very_long_crash_loop_stays_capped() -> None:
    assert backoff_delay(1100, RESTART, 0.5) == RESTART.backoff_max


def test_slow_crash_loop_does_not_crash_the_policy() -> None:
    m = Machine(state=State.STARTING, since=0.0, instance="i1", attempt=1100)
    d = step(m, Tick(0.5), RULES.startup_timeout, RULES)
    assert d.machine.state is State.STOPPING
    assert d.machine.retry_at == RULES.startup_timeout + RESTART.backoff_max


# ---- crash loops -> FATAL ---------------------------------------------------------------


def test_too_many_exits_within_the_window_are_fatal() -> None:
    m, now, actions = crash_cycles(running(), RESTART.max_failures, 100.0)
    assert m.state is State.FATAL
    assert m.instance is None
    assert m.retry_at is None
    assert m.intent is None
    assert len(m.failures) == RESTART.max_failures
    assert actions[-1] == Announce("server.fatal", "5 failures within 300s, last: exited: crash",
                                   "error")
    # Nothing but an operator leaves FATAL.
    for event in (Tick(), Exited("i5", "x"), live_fail("i5"), Launched("i9")):
        assert step(m, event, now + 10_000, RULES).ignored


def test_fatal_with_a_live_instance_stops_it_first() -> None:
    m, now, _ = crash_cycles(running(), RESTART.max_failures - 1, 100.0)
    assert m.state is State.BACKOFF and m.retry_at is not None
    now = m.retry_at
    m = feed(m, (now, Tick()), (now, Launched("last")), (now + 1, ready_ok("last")),
             (now + 2, live_fail("last")), (now + 3, live_fail("last")))[0]
    d = step(m, live_fail("last", detail="timeout"), now + 4, RULES)
    reason = "liveness probe failed 3x: timeout"
    assert d.machine.state is State.STOPPING
    assert d.machine.intent is Intent.FAILURE
    assert d.machine.retry_at is None
    assert d.actions == (
        Terminate(reason, drain=False, hung=True),
        Announce("server.fatal", f"5 failures within 300s, last: {reason}", "error"),
    )
    d2 = step(d.machine, Stopped("last"), now + 5, RULES)
    assert d2.machine.state is State.FATAL
    assert d2.machine.instance is None
    assert d2.machine.intent is None
    assert d2.actions == ()


@pytest.mark.parametrize(
    ("now", "state", "failures"),
    [
        (299.0, State.FATAL, (0.0, 1.0, 2.0, 3.0, 299.0)),
        (300.0, State.BACKOFF, (1.0, 2.0, 3.0, 300.0)),  # exactly window-old is forgotten
        (302.5, State.BACKOFF, (3.0, 302.5)),
        (1000.0, State.BACKOFF, (1000.0,)),
    ],
)
def test_failures_older_than_the_window_are_forgotten(
        now: float, state: State, failures: tuple[float, ...]) -> None:
    m = Machine(state=State.RUNNING, since=0.0, instance="i1",
                failures=(0.0, 1.0, 2.0, 3.0), attempt=4)
    d = step(m, Exited("i1", "crash"), now, RULES)
    assert d.machine.state is state
    assert d.machine.failures == failures


def test_failures_spread_out_back_off_forever_with_growing_attempt() -> None:
    m, now = running(), 0.0
    for k in range(1, 8):
        now += RESTART.failure_window  # every failure is alone in its window
        m = step(m, Exited(m.instance or "", "crash", 0.5), now, RULES).machine
        assert m.state is State.BACKOFF
        assert m.attempt == k
        assert m.failures == (now,)
        m = feed(m, (now + 60, Tick()), (now + 60, Launched(f"k{k}")))[0]


def test_staying_up_stable_after_resets_the_backoff() -> None:
    m = replace(running(), attempt=3, failures=(1.0,))  # RUNNING since 2.0
    d = step(m, Tick(), 2.0 + RESTART.stable_after - 0.1, RULES)
    assert d.machine == m
    d = step(m, Tick(), 2.0 + RESTART.stable_after, RULES)
    assert d.machine.stable is True
    assert d.machine.attempt == 0
    assert d.machine.failures == (1.0,)  # the crash-loop window is time-based, kept
    assert d.actions == ()
    # The next failure starts the backoff from the beginning again.
    d = step(d.machine, Exited("i1", "crash", 0.5), 200.0, RULES)
    assert d.machine.retry_at == 201.0


def test_stability_is_measured_from_ready_not_from_launch() -> None:
    m = replace(launched(), attempt=2)  # launched at 1.0
    m = feed(m, (100.0, ready_ok()))[0]
    assert step(m, Tick(), 1.0 + RESTART.stable_after, RULES).machine.attempt == 2
    assert step(m, Tick(), 100.0 + RESTART.stable_after, RULES).machine.attempt == 0


# ---- leaving FATAL ----------------------------------------------------------------------


@pytest.mark.parametrize("event", [Start("operator"), Restart("operator: supervisorctl restart")])
def test_start_or_restart_leaves_fatal_with_counters_cleared(event: Start | Restart) -> None:
    m = fatal()
    d = step(m, event, 5000.0, RULES)
    assert d.machine.state is State.STARTING
    assert d.machine.since == 5000.0
    assert d.machine.failures == ()
    assert d.machine.attempt == 0
    assert d.machine.last_reason is None
    assert d.machine.restarts == m.restarts + 1
    assert d.actions == (Launch(event.reason, RestartReason.OPERATOR),)


def test_stop_in_fatal_goes_to_stopped() -> None:
    d = step(fatal(), Stop("shutdown"), 5000.0, RULES)
    assert d.machine.state is State.STOPPED
    assert d.machine.instance is None
    assert d.actions == (Announce("server.stopped", "shutdown"),)


def test_restart_during_the_stop_before_fatal_clears_the_crash_counters() -> None:
    m, now, _ = crash_cycles(running(), RESTART.max_failures - 1, 100.0)
    assert m.retry_at is not None
    now = m.retry_at
    m = feed(m, (now, Tick()), (now, Launched("last")), (now + 1, ready_ok("last")),
             *[(now + 2, live_fail("last"))] * RULES.failure_threshold)[0]
    assert m.state is State.STOPPING and m.retry_at is None  # heading for FATAL
    m = feed(m, (now + 3, Restart("operator: supervisorctl restart")),
             (now + 4, Stopped("last")))[0]
    assert m.state is State.STARTING
    assert m.failures == ()
    assert m.attempt == 0


# ---- planned restarts and stops ---------------------------------------------------------


@pytest.mark.parametrize("make", [launched, running, unhealthy])
def test_planned_restart_stops_then_relaunches_without_a_failure(make: typing.Any) -> None:
    m = replace(make(), attempt=2, failures=(1.5,))
    d = step(m, Restart("config changed", cause=RestartReason.CONFIG_CHANGE), 50.0, RULES)
    assert d.machine.state is State.STOPPING
    assert d.machine.intent is Intent.RESTART
    assert d.machine.retry_at is None
    assert d.actions == (Terminate("config changed", drain=True),)

    d2 = step(d.machine, Stopped("i1"), 51.0, RULES)
    assert d2.machine.state is State.STARTING
    assert d2.machine.since == 51.0
    assert d2.machine.instance is None
    assert d2.machine.intent is None
    assert d2.machine.restarts == m.restarts + 1
    assert d2.machine.failures == (1.5,)
    assert d2.machine.attempt == 2
    assert d2.machine.ready is False
    assert d2.machine.unhealthy_since is None
    assert d2.actions == (Launch("config changed", RestartReason.CONFIG_CHANGE),)


@pytest.mark.parametrize("make", [launched, running, unhealthy])
def test_forced_restart_does_not_drain(make: typing.Any) -> None:
    d = step(make(), Restart("operator: restart --force", force=True), 50.0, RULES)
    assert d.machine.state is State.STOPPING
    assert d.machine.intent is Intent.RESTART
    assert d.actions == (Terminate("operator: restart --force", drain=False),)


def test_restart_in_backoff_launches_at_once() -> None:
    m = step(running(), Exited("i1", "crash", 0.5), 10.0, RULES).machine
    d = step(m, Restart("config changed"), 10.2, RULES)
    assert d.machine.state is State.STARTING
    assert d.machine.retry_at is None
    assert d.actions == (Launch("config changed"),)


def test_stop_while_running_terminates_then_stops() -> None:
    d = step(running(), Stop("shutdown"), 50.0, RULES)
    assert d.machine.state is State.STOPPING
    assert d.machine.intent is Intent.STOP
    assert d.actions == (Terminate("shutdown", drain=True),)
    d2 = step(d.machine, Stopped("i1"), 52.0, RULES)
    assert d2.machine.state is State.STOPPED
    assert d2.machine.instance is None
    assert d2.actions == (Announce("server.stopped", "shutdown"),)


def test_stop_in_backoff_cancels_the_retry() -> None:
    m = step(running(), Exited("i1", "crash", 0.5), 10.0, RULES).machine
    d = step(m, Stop("shutdown"), 10.5, RULES)
    assert d.machine.state is State.STOPPED
    assert d.machine.retry_at is None
    assert d.actions == (Announce("server.stopped", "shutdown"),)
    assert step(d.machine, Tick(), 1000.0, RULES).ignored


def test_stop_during_a_restart_wins() -> None:
    m = step(running(), Restart("config changed"), 50.0, RULES).machine
    d = step(m, Stop("shutdown"), 50.5, RULES)
    assert d.machine.state is State.STOPPING
    assert d.machine.intent is Intent.STOP
    assert d.actions == ()  # the terminate already in progress suffices
    d2 = step(d.machine, Stopped("i1"), 51.0, RULES)
    assert d2.machine.state is State.STOPPED
    assert d2.actions == (Announce("server.stopped", "shutdown"),)


def test_stop_during_a_failure_stop_cancels_the_backoff() -> None:
    m = feed(running(), *[(t, live_fail()) for t in (10.0, 11.0, 12.0)])[0]
    assert m.intent is Intent.FAILURE and m.retry_at is not None
    m = feed(m, (12.5, Stop("shutdown")), (13.0, Stopped("i1")))[0]
    assert m.state is State.STOPPED
    assert m.retry_at is None


@pytest.mark.parametrize("event", [Start("operator"), Restart("operator")])
def test_start_during_a_stop_relaunches_after_it(event: Start | Restart) -> None:
    m = step(running(), Stop("operator stop"), 50.0, RULES).machine
    d = step(m, event, 50.5, RULES)
    assert d.machine.state is State.STOPPING
    assert d.machine.intent is Intent.RESTART
    assert d.actions == ()
    d2 = step(d.machine, Stopped("i1"), 51.0, RULES)
    assert d2.machine.state is State.STARTING
    assert d2.actions == (Launch("operator", RestartReason.OPERATOR),)


def test_stopped_then_started_again_is_not_a_restart() -> None:
    m = feed(running(), (50.0, Stop()), (51.0, Stopped("i1")))[0]
    d = step(m, Start("operator"), 60.0, RULES)
    assert d.machine.state is State.STARTING
    assert d.machine.restarts == 0


# ---- escalation from inside the server --------------------------------------------------


@pytest.mark.parametrize("make", [launched, running, unhealthy])
def test_escalate_restarts_the_server_as_a_failure(make: typing.Any) -> None:
    m = make()
    reason = "model a: model restarts did not help"
    d = step(m, Escalate("i1", reason, 0.5), 50.0, RULES)
    assert d.machine.state is State.STOPPING
    assert d.machine.intent is Intent.FAILURE
    assert d.machine.instance == "i1"
    assert d.machine.failures == (50.0,)
    assert d.machine.attempt == 1
    assert d.machine.retry_at == 51.0
    assert d.machine.last_reason == reason
    assert d.machine.ready is False
    assert d.actions == (
        Terminate(reason, drain=False, hung=False),
        Announce("server.failed", f"{reason}; retrying in 1.0s", "warning"),
    )
    d2 = step(d.machine, Stopped("i1"), 52.0, RULES)
    assert d2.machine.state is State.BACKOFF
    assert d2.machine.instance is None
    d3 = step(d2.machine, Tick(), 52.0, RULES)
    assert d3.machine.state is State.STARTING
    assert d3.actions == (Launch(f"retry after: {reason}", RestartReason.MODEL_ESCALATION),)


def test_escalate_counts_toward_fatal() -> None:
    m, now, _ = crash_cycles(running(), RESTART.max_failures - 1, 100.0)
    assert m.retry_at is not None
    now = m.retry_at
    m = feed(m, (now, Tick()), (now, Launched("last")), (now + 1, ready_ok("last")))[0]
    d = step(m, Escalate("last", "model a failed"), now + 2, RULES)
    assert d.machine.state is State.STOPPING
    assert d.machine.retry_at is None
    assert d.actions == (
        Terminate("model a failed"),
        Announce("server.fatal", "5 failures within 300s, last: model a failed", "error"),
    )
    assert step(d.machine, Stopped("last"), now + 3, RULES).machine.state is State.FATAL


@pytest.mark.parametrize("state", [State.STOPPED, State.BACKOFF, State.STOPPING, State.FATAL])
def test_escalate_outside_the_live_states_is_ignored(state: State) -> None:
    m = machine_in(state)
    d = step(m, Escalate("i1", "model a failed"), m.since + 1.0, RULES)
    assert d.ignored
    assert d.machine is m
    assert d.actions == ()


# ---- stale events -----------------------------------------------------------------------


STALE = [
    live_fail("old"),
    live_ok("old"),
    ready_ok("old"),
    ready_fail("old"),
    Exited("old", "exit code 0"),
    Escalate("old", "model a failed"),
]


@pytest.mark.parametrize("make", [launched, running, unhealthy])
@pytest.mark.parametrize("event", STALE, ids=repr)
def test_events_for_another_instance_are_ignored(make: typing.Any, event: Event) -> None:
    m = make()
    d = step(m, event, 100.0, RULES)
    assert d.ignored
    assert d.machine is m
    assert d.actions == ()


def test_probe_before_launched_is_ignored() -> None:
    # No instance yet: a probe cannot be about the instance being launched.
    d = step(starting(), ready_ok("i1"), 1.0, RULES)
    assert d.ignored


# ---- readiness and UNHEALTHY ------------------------------------------------------------


def test_readiness_failures_below_threshold_keep_running() -> None:
    m = feed(running(), (10.0, ready_fail()), (11.0, ready_fail()))[0]
    assert m.state is State.RUNNING
    assert m.readiness_failures == 2
    assert m.last_reason == "model b not listed"


def test_readiness_failures_at_threshold_make_unhealthy() -> None:
    m = feed(running(), (10.0, ready_fail()), (11.0, ready_fail()))[0]
    d = step(m, ready_fail(), 12.0, RULES)
    assert d.machine.state is State.UNHEALTHY
    assert d.machine.since == 12.0
    assert d.machine.unhealthy_since == 12.0
    assert d.machine.ready is False
    assert d.machine.instance == "i1"
    assert d.actions == (Announce("server.unhealthy", "model b not listed", "warning"),)


def test_readiness_failures_while_starting_never_make_unhealthy() -> None:
    m = feed(launched(), *[(float(t), ready_fail()) for t in range(2, 12)])[0]
    assert m.state is State.STARTING
    assert m.readiness_failures == 10


def test_more_readiness_failures_keep_the_unhealthy_clock() -> None:
    m = feed(unhealthy(), (20.0, ready_fail()), (30.0, ready_fail(detail="still")))[0]
    assert m.state is State.UNHEALTHY
    assert m.unhealthy_since == 12.0
    assert m.last_reason == "still"


def test_readiness_ok_recovers_from_unhealthy() -> None:
    d = step(unhealthy(), ready_ok(), 20.0, RULES)
    assert d.machine.state is State.RUNNING
    assert d.machine.since == 20.0
    assert d.machine.unhealthy_since is None
    assert d.machine.readiness_failures == 0
    assert d.machine.ready is True
    assert d.actions == (Announce("server.recovered", "all models listed"),)


def test_unhealthy_longer_than_grace_restarts_as_a_failure() -> None:
    m = unhealthy()  # since 12.0
    d = step(m, Tick(), 12.0 + RULES.unhealthy_grace - 0.01, RULES)
    assert d.machine == m
    d = step(m, Tick(0.5), 12.0 + RULES.unhealthy_grace, RULES)
    reason = "unhealthy for 120s: model b not listed"
    assert d.machine.state is State.STOPPING
    assert d.machine.intent is Intent.FAILURE
    assert d.machine.unhealthy_since is None
    assert d.actions == (
        Terminate(reason),
        Announce("server.failed", f"{reason}; retrying in 1.0s", "warning"),
    )


# ---- adoption ---------------------------------------------------------------------------


def test_adopted_instance_is_watched_without_a_launch() -> None:
    d = step(Machine(), Adopted("c0ffee"), 5.0, RULES)
    assert d.machine.state is State.STARTING
    assert d.machine.instance == "c0ffee"
    assert d.machine.since == 5.0
    assert not any(isinstance(a, Launch) for a in d.actions)
    assert d.actions == (
        Announce("server.adopted", "instance c0ffee already runs the current spec"),
    )
    d2 = step(d.machine, ready_ok("c0ffee"), 6.0, RULES)
    assert d2.machine.state is State.RUNNING
    assert d2.machine.restarts == 0


# ---- the transition table ---------------------------------------------------------------


EXPECTED_TABLE: dict[State, set[str]] = {
    State.STOPPED: {"Start", "Restart", "Adopted"},
    State.STARTING: {"Launched", "LaunchFailed", "Exited", "ProbeResult", "Stop", "Restart",
                     "Escalate", "Tick"},
    State.RUNNING: {"Exited", "ProbeResult", "Stop", "Restart", "Escalate", "Tick"},
    State.UNHEALTHY: {"Exited", "ProbeResult", "Stop", "Restart", "Escalate", "Tick"},
    State.BACKOFF: {"Start", "Restart", "Stop", "Tick"},
    State.STOPPING: {"Stopped", "Start", "Restart", "Stop", "Launched"},
    State.FATAL: {"Start", "Restart", "Stop"},
}

SAMPLE_EVENTS: list[Event] = [
    Start("s"),
    Stop("s"),
    Restart("r"),
    Restart("r", force=True),
    Escalate("i1", "model a failed"),
    Adopted("i1"),
    Launched("i1"),
    LaunchFailed("boom"),
    Exited("i1", "crash"),
    Stopped("i1"),
    Stopped(None),
    live_ok(),
    live_fail(),
    ready_ok(),
    ready_fail(),
    Tick(),
    Tick(0.0),
]


def machine_in(state: State) -> Machine:
    """A reachable machine in ``state`` whose instance (if any) is ``i1``."""
    makers: dict[State, typing.Callable[[], Machine]] = {
        State.STOPPED: Machine,
        State.STARTING: launched,
        State.RUNNING: running,
        State.UNHEALTHY: unhealthy,
        State.BACKOFF: lambda: step(running(), Exited("i1", "x"), 20.0, RULES).machine,
        State.STOPPING: lambda: step(running(), Stop("s"), 20.0, RULES).machine,
        State.FATAL: fatal,
    }
    m = makers[state]()
    assert m.state is state
    return m


def test_legal_transitions_match_the_documented_table() -> None:
    assert legal_transitions() == EXPECTED_TABLE


def test_every_event_type_is_legal_somewhere_and_sampled() -> None:
    names = {t.__name__ for t in typing.get_args(Event)}
    assert set().union(*legal_transitions().values()) == names
    assert {type(e).__name__ for e in SAMPLE_EVENTS} == names


def test_live_states_are_those_with_probes() -> None:
    assert {s for s, evs in legal_transitions().items() if "ProbeResult" in evs} == LIVE_STATES


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", SAMPLE_EVENTS, ids=repr)
def test_each_state_event_pair_is_handled_or_ignored_untouched(state: State,
                                                               event: Event) -> None:
    m = machine_in(state)
    now = m.since + 1.0
    d = step(m, event, now, RULES)
    assert isinstance(d, Decision)
    if type(event).__name__ in legal_transitions()[state]:
        assert not d.ignored
    else:
        assert d.ignored
        assert d.machine is m
        assert d.actions == ()


# ---- invariants over random event sequences ---------------------------------------------

SMALL = Rules(
    restart=RestartSection(backoff_initial=1.0, backoff_max=8.0, backoff_multiplier=2.0,
                           jitter=0.5, max_failures=3, failure_window=50.0, stable_after=20.0),
    failure_threshold=2, startup_timeout=30.0, unhealthy_grace=10.0,
)

_instances = st.sampled_from(["i1", "i2", "i3"])
_rands = st.floats(0.0, 1.0)
_events = st.one_of(
    st.builds(Start, st.just("s")),
    st.builds(Stop, st.just("s")),
    st.builds(Restart, st.just("r"), st.booleans()),
    st.builds(Escalate, _instances, st.just("model failed"), _rands),
    st.builds(Adopted, _instances),
    st.builds(Launched, _instances),
    st.builds(LaunchFailed, st.just("boom"), _rands),
    st.builds(Exited, _instances, st.just("crash"), _rands),
    st.builds(Stopped, st.one_of(st.none(), _instances)),
    st.builds(ProbeResult, _instances,
              st.sampled_from([ProbeKind.LIVENESS, ProbeKind.READINESS]), st.booleans(),
              st.just("d"), _rands),
    st.builds(Tick, _rands),
)


@hsettings(max_examples=120, deadline=None, database=None)
@given(st.lists(st.tuples(st.floats(0.0, 60.0), _events), max_size=40))
def test_random_event_sequences_keep_the_invariants(
        script: list[tuple[float, Event]]) -> None:
    m, now = Machine(), 0.0
    for delta, event in script:
        now += delta
        before = m
        d = step(m, event, now, SMALL)
        m = d.machine
        if d.ignored:
            assert m is before and d.actions == ()
        assert m.since <= now
        if m.state in (State.STOPPED, State.BACKOFF, State.FATAL):
            assert m.instance is None
        assert (m.intent is not None) == (m.state is State.STOPPING)
        if m.state is State.BACKOFF:
            assert m.retry_at is not None
            assert 0.0 <= m.retry_at - m.failures[-1] <= SMALL.restart.backoff_max
        if m.state is State.FATAL:
            assert m.retry_at is None
        assert list(m.failures) == sorted(m.failures)
        assert all(t <= now for t in m.failures)
        if any(isinstance(a, Launch) for a in d.actions):
            assert m.state is State.STARTING
        for a in d.actions:
            if isinstance(a, Terminate):
                assert m.state is State.STOPPING and before.state in LIVE_STATES
                # Only planned stops drain; a hung server is never one of them.
                if a.drain:
                    assert m.intent in (Intent.RESTART, Intent.STOP)
                    assert not a.hung
                if m.intent is Intent.FAILURE:
                    assert not a.drain
        if before.state is State.FATAL and m.state is not State.FATAL:
            assert isinstance(event, Start | Restart | Stop)
        if m.state is State.UNHEALTHY:
            assert m.unhealthy_since is not None


# ---- why the next launch happens (restarts_by_reason) -----------------------------------


def _next_launch(m: Machine, now: float) -> Launch:
    """Drive a failed or stopping machine to its next Launch and return it."""
    actions: list[Action] = []
    if m.state is State.STOPPING:
        d = step(m, Stopped(m.instance), now, RULES)
        m, actions = d.machine, list(d.actions)
    if m.state is State.BACKOFF:
        assert m.retry_at is not None
        actions = list(step(m, Tick(), m.retry_at, RULES).actions)
    launches = [a for a in actions if isinstance(a, Launch)]
    assert len(launches) == 1, (m, actions)
    return launches[0]


@pytest.mark.parametrize(("event", "cause"), [
    (Exited("i1", "exit code 137"), RestartReason.CRASH),
    (Escalate("i1", "model a failed"), RestartReason.MODEL_ESCALATION),
    (Restart("config changed", cause=RestartReason.CONFIG_CHANGE), RestartReason.CONFIG_CHANGE),
    (Restart("operator: supervisorctl restart"), RestartReason.OPERATOR),
], ids=lambda v: type(v).__name__ if not isinstance(v, RestartReason) else v.value)
def test_each_relaunch_says_why(event: Event, cause: RestartReason) -> None:
    d = step(running(), event, 30.0, RULES)
    assert _next_launch(d.machine, 31.0).restart is cause


def test_a_hang_relaunch_is_a_hang() -> None:
    m = feed(running(), *[(t, live_fail()) for t in (10.0, 11.0, 12.0)])[0]
    assert m.state is State.STOPPING
    assert _next_launch(m, 13.0).restart is RestartReason.HANG


def test_an_unhealthy_relaunch_is_unhealthy() -> None:
    m = step(unhealthy(), Tick(), 12.0 + RULES.unhealthy_grace, RULES).machine
    assert _next_launch(m, 200.0).restart is RestartReason.UNHEALTHY


def test_a_startup_timeout_relaunch_says_so() -> None:
    m = step(launched(), Tick(), 1.0 + RULES.startup_timeout, RULES).machine
    assert _next_launch(m, 700.0).restart is RestartReason.STARTUP_TIMEOUT


def test_a_failed_launch_relaunch_says_so() -> None:
    m = step(starting(), LaunchFailed("image missing"), 1.0, RULES).machine
    assert _next_launch(m, 2.0).restart is RestartReason.LAUNCH_FAILURE


def test_the_first_launch_is_not_a_restart() -> None:
    d = step(Machine(), Start("boot"), 0.0, RULES)
    assert d.actions == (Launch("boot", None),)
