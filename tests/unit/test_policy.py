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
    EngineDown,
    EngineUp,
    Escalate,
    Event,
    Exited,
    Intent,
    Launch,
    Launched,
    LaunchFailed,
    Machine,
    Paused,
    ProbeResult,
    Restart,
    Rules,
    Start,
    State,
    Stop,
    Stopped,
    Terminate,
    Tick,
    Unpause,
    Unpaused,
    backoff_delay,
    legal_transitions,
    step,
)
from supervisor.settings import RestartSection
from supervisor.vocab import ProbeKind, RestartReason

RESTART = RestartSection(
    backoff_initial=1.0, backoff_max=60.0, backoff_multiplier=2.0, jitter=0.2,
    start_retries=5, failure_window=300.0, stable_after=120.0,
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


def unready_starts(n: int, now: float = 1.0, rules: Rules = RULES) -> Machine:
    """Boot, then ``n`` launched instances that die before they ever become ready."""
    m = step(Machine(), Start("boot"), 0.0, rules).machine
    for k in range(n):
        m = feed(m, (now, Launched(f"u{k}")), (now, Exited(f"u{k}", "crash at start")),
                 rules=rules)[0]
        if m.state is not State.BACKOFF:
            break
        assert m.retry_at is not None
        now = m.retry_at
        m = feed(m, (now, Tick()), rules=rules)[0]
    return m


def fatal() -> Machine:
    m = unready_starts(RESTART.start_retries)
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


def test_launch_failed_retries_at_once() -> None:
    d = step(starting(), LaunchFailed("port in use", 0.5), 3.0, RULES)
    assert d.machine.state is State.BACKOFF
    assert d.machine.retry_at == 3.0
    assert d.machine.attempt == 1
    assert d.machine.unready == 1
    assert d.machine.last_reason == "launch failed: port in use"
    assert d.actions == (
        Announce("server.failed", "launch failed: port in use; retrying in 0.0s", "warning"),
    )


def test_a_launch_error_that_retrying_cannot_fix_is_fatal_at_once() -> None:
    d = step(starting(), LaunchFailed("image 'localai' not found", 0.5, permanent=True), 3.0,
             RULES)
    assert d.machine.state is State.FATAL
    assert d.actions == (Announce(
        "server.fatal", "retrying cannot help, last: launch failed: image 'localai' not found",
        "error"),)


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
    assert d.machine.retry_at == 20.0 + backoff_delay(1, RESTART, 0.5) == 20.0
    assert d.machine.failures == (20.0,)
    assert d.machine.attempt == 1
    assert d.machine.liveness_failures == 0
    assert d.machine.ready is False
    assert d.machine.cause is RestartReason.HANG
    # A failure stop never drains; a server that stopped answering is killed without grace.
    assert d.actions == (
        Terminate(reason, drain=False, hung=True),
        Announce("server.failed", f"{reason}; retrying in 0.0s", "warning"),
    )

    d2 = step(d.machine, Stopped("i1"), 22.0, RULES)
    assert d2.machine.state is State.BACKOFF
    assert d2.machine.since == 22.0
    assert d2.machine.instance is None
    assert d2.machine.intent is None
    assert d2.machine.retry_at == 20.0
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
    assert d.machine.retry_at == RULES.startup_timeout  # first failure: retried at once
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
    assert d.machine.retry_at == 30.0  # the first retry is immediate
    assert d.machine.failures == (30.0,)
    assert d.machine.last_reason == "exited: exit code 137, OOM-killed"
    assert d.actions == (
        Announce("server.failed", "exited: exit code 137, OOM-killed; retrying in 0.0s",
                 "warning"),
    )


def test_exit_of_an_instance_not_launched_yet_is_ignored() -> None:
    # The server owner holds such an exit back until the launch reports its instance.
    assert step(starting(), Exited("i9", "exit code 1"), 1.0, RULES).ignored


def test_backoff_waits_for_retry_at_then_launches() -> None:
    m = replace(running(), attempt=1)  # the second failure in a row waits backoff_initial
    m = step(m, Exited("i1", "exit code 1", 0.5), 10.0, RULES).machine
    assert m.retry_at == 11.0
    d = step(m, Tick(), 10.999, RULES)
    assert d.machine == m
    assert d.actions == ()
    assert not d.ignored
    d = step(m, Tick(), 11.0, RULES)
    assert d.machine.state is State.STARTING
    assert d.machine.retry_at is None
    assert d.machine.restarts == 0  # counted when the relaunch produces an instance
    assert d.machine.launching is RestartReason.CRASH
    assert d.machine.attempt == 2  # only stability resets the backoff
    assert step(d.machine, Launched("i2"), 11.0, RULES).machine.restarts == 1
    assert d.actions == (Launch("retry after: exited: exit code 1", RestartReason.CRASH),)


def test_consecutive_failures_double_the_delay_up_to_the_cap() -> None:
    rules = replace(RULES, restart=RESTART.model_copy(update={"start_retries": 100}))
    m, now = running(), 100.0
    delays = []
    for k in range(9):
        assert m.instance is not None
        m = step(m, Exited(m.instance, "crash", 0.5), now, rules).machine
        assert m.retry_at is not None
        delays.append(m.retry_at - now)
        now = m.retry_at
        m = feed(m, (now, Tick()), (now, Launched(f"j{k}")), rules=rules)[0]
    assert delays == [0, 1, 2, 4, 8, 16, 32, 60, 60]


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (0, 0.5, 0.0),  # attempt 0 is treated like the first
        (1, 0.5, 0.0),  # the first retry is immediate, jitter or not
        (1, 1.0, 0.0),
        (2, 0.5, 1.0),
        (3, 0.5, 2.0),
        (4, 0.5, 4.0),
        (7, 0.5, 32.0),
        (8, 0.5, 60.0),  # 64 capped
        (30, 0.5, 60.0),
        (2, 0.0, 0.8),  # -20% jitter
        (2, 1.0, 1.2),  # +20% jitter
        (4, 0.0, 3.2),
        (4, 1.0, 4.8),
        (30, 0.0, 48.0),  # jitter below the cap still applies
        (30, 1.0, 60.0),  # but never above the cap
    ],
)
def test_backoff_delay_table(attempt: int, rand: float, expected: float) -> None:
    assert backoff_delay(attempt, RESTART, rand) == pytest.approx(expected)


def test_backoff_delay_without_jitter_is_exact() -> None:
    restart = RESTART.model_copy(update={"jitter": 0.0})
    assert [backoff_delay(n, restart, 0.99) for n in range(1, 6)] == [0.0, 1.0, 2.0, 4.0, 8.0]


@hsettings(max_examples=150, deadline=None, database=None)
@given(
    attempt=st.integers(2, 60),
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
    base = min(initial * multiplier ** (attempt - 2), cap)
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


# ---- giving up: only what retrying cannot fix -------------------------------------------


def test_starts_that_never_become_ready_give_up_after_start_retries() -> None:
    m = unready_starts(RESTART.start_retries - 1)
    assert m.state is State.STARTING and m.unready == RESTART.start_retries - 1
    d = step(m, Launched("last"), 500.0, RULES)
    d = step(d.machine, Exited("last", "crash at start"), 500.0, RULES)
    assert d.machine.state is State.FATAL
    assert d.machine.instance is None and d.machine.retry_at is None and d.machine.intent is None
    assert d.actions == (Announce(
        "server.fatal", "not ready after 5 start(s) in a row, last: exited: crash at start",
        "error"),)
    # Nothing but an operator leaves FATAL.
    for event in (Tick(), Exited("last", "x"), live_fail("last"), Launched("i9")):
        assert step(d.machine, event, 10_000.0, RULES).ignored


def test_a_server_that_was_serving_is_restarted_without_end() -> None:
    rules = replace(RULES, restart=RESTART.model_copy(update={"stable_after": 10_000.0}))
    m, now = running(), 100.0
    for k in range(200):
        assert m.instance is not None
        m = step(m, Exited(m.instance, "crash", 0.5), now, rules).machine
        assert m.state is State.BACKOFF, (k, m)
        assert m.unready == 0
        assert m.retry_at is not None
        now = m.retry_at
        m = feed(m, (now, Tick()), (now, Launched(f"c{k}")), (now + 1.0, ready_ok(f"c{k}")),
                 rules=rules)[0]
        now += 1.0
    assert m.state is State.RUNNING
    assert m.crash_looping
    assert m.attempt == 200
    assert backoff_delay(m.attempt, rules.restart, 0.5) == rules.restart.backoff_max


def test_crash_looping_is_said_in_the_failure_announcement() -> None:
    m = replace(running(), failures=(90.0, 95.0))
    d = step(m, Exited("i1", "crash", 0.5), 100.0, RULES)
    assert d.machine.crash_looping
    assert d.actions == (Announce(
        "server.failed", "exited: crash; retrying in 0.0s; crash-looping: 3 failures in 300s",
        "warning"),)


def test_fatal_with_a_live_instance_stops_it_first() -> None:
    m = unready_starts(RESTART.start_retries - 1)
    m = feed(m, (500.0, Launched("last")))[0]
    d = step(m, Tick(0.5), 500.0 + RULES.startup_timeout, RULES)
    reason = "not ready within startup timeout 600s (exited: crash at start)"
    assert d.machine.state is State.STOPPING
    assert d.machine.intent is Intent.FAILURE
    assert d.machine.retry_at is None
    assert d.actions[0] == Terminate(reason, drain=False, hung=False)
    assert d.actions[1].event == "server.fatal"  # type: ignore[union-attr]
    d2 = step(d.machine, Stopped("last"), 1101.0, RULES)
    assert d2.machine.state is State.FATAL
    assert d2.machine.instance is None
    assert d2.machine.intent is None
    assert d2.actions == ()


def test_becoming_ready_forgives_earlier_failed_starts() -> None:
    m = unready_starts(RESTART.start_retries - 1)
    m = feed(m, (500.0, Launched("ok")), (501.0, ready_ok("ok")))[0]
    assert m.state is State.RUNNING and m.unready == 0
    m = unready_starts(0)  # a fresh boot, for contrast: the count starts at nothing
    assert m.unready == 0


@pytest.mark.parametrize(
    ("now", "failures"),
    [
        (299.0, (0.0, 1.0, 2.0, 3.0, 299.0)),
        (300.0, (1.0, 2.0, 3.0, 300.0)),  # exactly window-old is forgotten
        (302.5, (3.0, 302.5)),
        (1000.0, (1000.0,)),
    ],
)
def test_failures_older_than_the_window_are_forgotten(
        now: float, failures: tuple[float, ...]) -> None:
    m = Machine(state=State.RUNNING, since=0.0, instance="i1", ready=True,
                failures=(0.0, 1.0, 2.0, 3.0), attempt=4)
    d = step(m, Exited("i1", "crash"), now, RULES)
    assert d.machine.state is State.BACKOFF
    assert d.machine.failures == failures
    assert d.machine.crash_looping is (len(failures) >= 3)


def test_failures_spread_out_back_off_forever_with_growing_attempt() -> None:
    m, now = running(), 0.0
    for k in range(1, 8):
        now += RESTART.failure_window  # every failure is alone in its window
        m = step(m, Exited(m.instance or "", "crash", 0.5), now, RULES).machine
        assert m.state is State.BACKOFF
        assert m.attempt == k
        assert m.failures == (now,)
        m = feed(m, (now + 60, Tick()), (now + 60, Launched(f"k{k}")),
                 (now + 61, ready_ok(f"k{k}")))[0]


def test_staying_up_stable_after_resets_the_backoff() -> None:
    m = replace(running(), attempt=3, failures=(1.0,))  # RUNNING since 2.0
    d = step(m, Tick(), 2.0 + RESTART.stable_after - 0.1, RULES)
    assert d.machine == m
    d = step(m, Tick(), 2.0 + RESTART.stable_after, RULES)
    assert d.machine.stable is True
    assert d.machine.attempt == 0
    assert d.machine.failures == (1.0,)  # the crash-loop window is time-based, kept
    assert d.actions == ()
    # The next failure starts the backoff from the beginning again: an immediate retry.
    d = step(d.machine, Exited("i1", "crash", 0.5), 200.0, RULES)
    assert d.machine.retry_at == 200.0


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
    assert d.machine.launching is RestartReason.OPERATOR
    assert d.actions == (Launch(event.reason, RestartReason.OPERATOR),)


def test_stop_in_fatal_goes_to_stopped() -> None:
    d = step(fatal(), Stop("shutdown"), 5000.0, RULES)
    assert d.machine.state is State.STOPPED
    assert d.machine.instance is None
    assert d.actions == (Announce("server.stopped", "shutdown"),)


def test_restart_during_the_stop_before_fatal_clears_the_crash_counters() -> None:
    m = unready_starts(RESTART.start_retries - 1)
    now = 500.0
    m = feed(m, (now, Launched("last")), (now + RULES.startup_timeout, Tick()))[0]
    assert m.state is State.STOPPING and m.retry_at is None  # heading for FATAL
    now += RULES.startup_timeout
    m = feed(m, (now + 3, Restart("operator: supervisorctl restart")),
             (now + 4, Stopped("last")))[0]
    assert m.state is State.STARTING
    assert m.failures == ()
    assert m.attempt == 0
    assert m.unready == 0


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
    assert d2.machine.launching is RestartReason.CONFIG_CHANGE
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
    d = step(m, Restart("config changed", cause=RestartReason.CONFIG_CHANGE), 10.2, RULES)
    assert d.machine.state is State.STARTING
    assert d.machine.retry_at is None
    assert d.actions == (Launch("config changed", RestartReason.CONFIG_CHANGE),)


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
    assert d.machine.retry_at == 50.0
    assert d.machine.last_reason == reason
    assert d.machine.ready is False
    assert d.actions == (
        Terminate(reason, drain=False, hung=False),
        Announce("server.failed", f"{reason}; retrying in 0.0s", "warning"),
    )
    d2 = step(d.machine, Stopped("i1"), 52.0, RULES)
    assert d2.machine.state is State.BACKOFF
    assert d2.machine.instance is None
    d3 = step(d2.machine, Tick(), 52.0, RULES)
    assert d3.machine.state is State.STARTING
    assert d3.actions == (Launch(f"retry after: {reason}", RestartReason.MODEL_ESCALATION),)


def test_escalating_a_server_that_was_serving_never_gives_up() -> None:
    m = replace(running(), unready=RESTART.start_retries - 1, attempt=10)
    d = step(m, Escalate("i1", "model a failed"), 50.0, RULES)
    assert d.machine.state is State.STOPPING
    assert d.machine.retry_at is not None
    assert step(d.machine, Stopped("i1"), 51.0, RULES).machine.state is State.BACKOFF


@pytest.mark.parametrize("state", [State.STOPPED, State.BACKOFF, State.WAITING, State.STOPPING,
                                   State.FATAL])
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
    assert d.machine.ready is True  # it has served: a failure now is not a failed start
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
        Announce("server.failed", f"{reason}; retrying in 0.0s", "warning"),
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


_ENGINE = {"EngineDown", "EngineUp"}
_LIVE_EVENTS = {"Exited", "Paused", "Unpaused", "ProbeResult", "Stop", "Restart", "Escalate",
                "Tick"}
EXPECTED_TABLE: dict[State, set[str]] = {
    State.STOPPED: {"Start", "Restart", "Adopted", *_ENGINE},
    State.STARTING: {"Launched", "LaunchFailed", *_LIVE_EVENTS, *_ENGINE},
    State.RUNNING: {*_LIVE_EVENTS, *_ENGINE},
    State.UNHEALTHY: {*_LIVE_EVENTS, *_ENGINE},
    State.BACKOFF: {"Start", "Restart", "Stop", "Tick", *_ENGINE},
    State.WAITING: {"Start", "Restart", "Stop", "Tick", *_ENGINE},
    State.STOPPING: {"Stopped", "Start", "Restart", "Stop", "Launched", *_ENGINE},
    State.FATAL: {"Start", "Restart", "Stop", *_ENGINE},
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
    LaunchFailed("image missing", permanent=True),
    LaunchFailed("no engine", engine_down=True),
    Exited("i1", "crash"),
    Exited("i1", "engine restarted", outage=True),
    Paused("i1"),
    Unpaused("i1"),
    Unpaused("i1", "container gone"),
    EngineDown("socket gone"),
    EngineUp("back"),
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
        State.WAITING: lambda: step(starting(), LaunchFailed("x", engine_down=True), 20.0,
                                    RULES).machine,
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
                           jitter=0.5, start_retries=3, failure_window=50.0, stable_after=20.0),
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
    st.builds(LaunchFailed, st.just("boom"), _rands, st.booleans(), st.booleans()),
    st.builds(Exited, _instances, st.just("crash"), _rands, st.booleans()),
    st.builds(Paused, _instances, _rands),
    st.builds(EngineDown, st.just("gone")),
    st.builds(EngineUp, st.just("back")),
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
        if m.state in (State.STOPPED, State.BACKOFF, State.WAITING, State.FATAL):
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
        if m.state is State.FATAL and before.state is not State.FATAL:
            # Giving up only where retrying cannot help: starts that never became ready, or
            # a launch error that says so; never for a server that was serving.
            assert m.unready >= SMALL.restart.start_retries or (
                isinstance(event, LaunchFailed) and event.permanent) or (
                before.state is State.STOPPING and before.retry_at is None)
        if isinstance(event, LaunchFailed) and (event.engine_down or not before.engine_up):
            # An unreachable engine is not the server's failure: nothing is counted.
            assert (m.failures, m.attempt, m.unready) == (
                before.failures, before.attempt, before.unready)
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


def test_a_failed_launch_is_retried_as_the_same_restart() -> None:
    m = step(running(), Exited("i1", "crash"), 1.0, RULES).machine
    m = step(m, Tick(), 1.0, RULES).machine
    m = step(m, LaunchFailed("port in use"), 1.5, RULES).machine
    assert _next_launch(m, 2.0).restart is RestartReason.CRASH
    # ...and a first start that failed is retried as a first start: not a restart.
    m = step(starting(), LaunchFailed("port in use"), 1.0, RULES).machine
    assert _next_launch(m, 2.0).restart is None


def test_the_first_launch_is_not_a_restart() -> None:
    d = step(Machine(), Start("boot"), 0.0, RULES)
    assert d.actions == (Launch("boot", None),)


# ---- the container engine going away ----------------------------------------------------


def test_a_launch_that_cannot_reach_the_engine_waits_without_counting() -> None:
    m = step(starting(), EngineDown("socket gone"), 1.0, RULES).machine
    d = step(m, LaunchFailed("docker engine: connection refused", engine_down=True), 1.5, RULES)
    assert d.machine.state is State.WAITING
    assert d.machine.failures == () and d.machine.attempt == 0 and d.machine.unready == 0
    assert d.actions[0].event == "server.waiting"  # type: ignore[union-attr]
    # Hours of outage: ticks change nothing while the engine is away.
    m = d.machine
    for t in range(2, 3600, 7):  # the runtime said the engine is gone: wait for it
        assert step(m, Tick(), float(t), RULES).machine.state is State.WAITING
    d = step(m, EngineUp("docker engine reachable again"), 3600.0, RULES)
    assert d.machine.state is State.STARTING
    assert d.actions == (Launch("container engine back: docker engine reachable again"),)


def test_a_launch_failure_blamed_on_the_engine_waits_even_before_the_event() -> None:
    d = step(starting(), LaunchFailed("connection refused", engine_down=True), 1.0, RULES)
    assert d.machine.state is State.WAITING and d.machine.failures == ()
    # The runtime never said the engine was gone, so it may never say it is back: try again
    # after WAITING_RETRY_SECONDS, without counting anything.
    assert step(d.machine, Tick(), 30.9, RULES).machine.state is State.WAITING
    d2 = step(d.machine, Tick(), 31.0, RULES)
    assert d2.machine.state is State.STARTING
    d3 = step(d2.machine, LaunchFailed("connection refused", engine_down=True), 31.0, RULES)
    assert d3.machine.state is State.WAITING and d3.machine.failures == ()


def test_an_exit_that_was_the_engine_shutting_down_is_not_counted() -> None:
    # dockerd stops its containers before it goes: the die event arrives first, and the
    # relaunch finds the engine gone. The exit was the outage, not the server's fault.
    d = step(running(), Exited("i1", "exit code 0"), 10.0, RULES)
    assert d.machine.failures == (10.0,)
    d = step(d.machine, Tick(), 10.0, RULES)
    d = step(d.machine, LaunchFailed("connection aborted", engine_down=True), 10.1, RULES)
    assert d.machine.state is State.WAITING
    assert d.machine.failures == () and d.machine.attempt == 0
    assert d.machine.cause is RestartReason.ENGINE_OUTAGE
    # Later failures to connect do not touch the counts either.
    d = step(d.machine, EngineUp(), 30.0, RULES)
    assert d.actions == (Launch("container engine back", RestartReason.ENGINE_OUTAGE),)


def test_an_exit_long_before_the_engine_went_away_still_counts() -> None:
    m = replace(running(), attempt=3)  # its retry waits 4 s
    d = step(m, Exited("i1", "crash"), 10.0, RULES)
    assert d.machine.retry_at is not None
    d = step(d.machine, Tick(), d.machine.retry_at + 20.0, RULES)
    d = step(d.machine, LaunchFailed("connection aborted", engine_down=True), 40.0, RULES)
    assert d.machine.state is State.WAITING
    assert d.machine.failures == (10.0,) and d.machine.cause is RestartReason.CRASH


def test_an_exit_and_relaunches_failing_while_the_engine_shuts_down_are_not_counted() -> None:
    # dockerd stops the container, answers the relaunches with errors for a moment (500
    # "failed to update store ..."), then its event stream ends.
    m = step(running(), Exited("i1", "exit code 0"), 10.0, RULES).machine
    for _ in range(2):
        assert m.retry_at is not None
        m = step(m, Tick(), m.retry_at, RULES).machine
        m = step(m, LaunchFailed("500 Server Error: failed to update store"), m.since + 0.05,
                 RULES).machine
    assert len(m.failures) == 3 and m.crash_looping
    m = step(m, EngineDown("event stream ended"), m.since + 0.5, RULES).machine
    assert m.failures == () and m.attempt == 0 and not m.crash_looping
    assert m.cause is RestartReason.ENGINE_OUTAGE
    assert m.retry_at is not None
    m = step(m, Tick(), m.retry_at, RULES).machine
    assert m.state is State.WAITING
    d = step(m, EngineUp(), 20.0, RULES)
    assert d.actions == (Launch("container engine back", RestartReason.ENGINE_OUTAGE),)
    m = step(d.machine, Launched("i2"), 20.2, RULES).machine
    assert m.restarts == 1 and m.failures == ()


def test_an_engine_going_away_long_after_an_exit_leaves_it_counted() -> None:
    m = step(running(), Exited("i1", "crash"), 10.0, RULES).machine
    m = step(m, EngineDown("gone"), 15.0, RULES).machine
    assert m.failures == (10.0,) and m.cause is RestartReason.CRASH


def test_a_due_retry_waits_for_the_engine() -> None:
    m = replace(running(), attempt=3)  # its retry waits 4 s
    m = step(m, Exited("i1", "crash"), 10.0, RULES).machine
    m = step(m, EngineDown("gone"), 15.0, RULES).machine
    d = step(m, Tick(), 16.0, RULES)
    assert d.machine.state is State.WAITING
    assert d.machine.cause is RestartReason.CRASH
    d = step(d.machine, EngineUp(), 40.0, RULES)
    assert d.actions == (Launch("container engine back", RestartReason.CRASH),)


def test_an_instance_stopped_by_the_engines_outage_is_relaunched_not_counted() -> None:
    m = step(running(), EngineDown("gone"), 10.0, RULES).machine
    m = step(m, EngineUp("back"), 30.0, RULES).machine
    d = step(m, Exited("i1", "exit code 143, seen after reconnect", outage=True), 30.0, RULES)
    assert d.machine.state is State.STARTING
    assert d.machine.failures == () and d.machine.attempt == 0
    assert d.actions == (Launch("stopped during a container engine outage (exit code 143, "
                                "seen after reconnect)", RestartReason.ENGINE_OUTAGE),)


def test_an_outage_exit_seen_while_the_engine_is_still_away_waits() -> None:
    m = step(running(), EngineDown("gone"), 10.0, RULES).machine
    d = step(m, Exited("i1", "removed", outage=True), 11.0, RULES)
    assert d.machine.state is State.WAITING
    assert d.machine.cause is RestartReason.ENGINE_OUTAGE


def test_probe_failures_while_the_engine_is_away_decide_nothing() -> None:
    m = step(running(), EngineDown("gone"), 10.0, RULES).machine
    m = feed(m, *[(10.0 + k, live_fail()) for k in range(10)])[0]
    assert m.state is State.RUNNING and m.liveness_failures == 10
    m = step(m, Tick(), 10_000.0, RULES).machine  # no timeout fires either
    assert m.state is State.RUNNING
    # Back, and still not answering: now it is a hang.
    m = step(m, EngineUp(), 10_001.0, RULES).machine
    d = step(m, live_fail(), 10_002.0, RULES)
    assert d.machine.state is State.STOPPING and d.machine.cause is RestartReason.HANG


def test_a_planned_restart_with_the_engine_away_waits_after_the_stop() -> None:
    m = step(running(), Restart("config changed", cause=RestartReason.CONFIG_CHANGE), 1.0,
             RULES).machine
    m = step(m, EngineDown("gone"), 2.0, RULES).machine
    d = step(m, Stopped("i1"), 3.0, RULES)
    assert d.machine.state is State.WAITING and d.machine.cause is RestartReason.CONFIG_CHANGE
    d = step(d.machine, EngineUp(), 9.0, RULES)
    assert d.actions == (Launch("container engine back", RestartReason.CONFIG_CHANGE),)


def test_stop_while_waiting_stops() -> None:
    m = step(starting(), LaunchFailed("x", engine_down=True), 1.0, RULES).machine
    d = step(m, Stop("supervisor received SIGTERM"), 2.0, RULES)
    assert d.machine.state is State.STOPPED


# ---- pause, reasons ----------------------------------------------------------------------


def test_a_paused_instance_is_unpaused_at_once_and_counts_as_nothing() -> None:
    d = step(running(), Paused("i1", 0.5), 50.0, RULES)
    assert d.machine == running()  # still RUNNING, nothing counted
    assert d.actions == (Unpause("i1"),)
    d = step(d.machine, Unpaused("i1"), 50.1, RULES)
    assert d.machine.state is State.RUNNING and d.actions == ()
    assert d.machine.failures == () and d.machine.restarts == 0


def test_a_container_that_cannot_be_unpaused_is_a_hang() -> None:
    d = step(running(), Unpaused("i1", "container gone", 0.5), 50.0, RULES)
    reason = "paused by the container engine and cannot be unpaused: container gone"
    assert d.machine.state is State.STOPPING
    assert d.machine.cause is RestartReason.HANG
    assert d.actions == (Terminate(reason, drain=False, hung=True),
                         Announce("server.failed", f"{reason}; retrying in 0.0s", "warning"))


def test_a_pause_of_another_instance_is_ignored() -> None:
    assert step(running(), Paused("old"), 50.0, RULES).ignored
    assert step(running(), Unpaused("old", "gone"), 50.0, RULES).ignored


def test_serving_again_clears_the_reason_that_explained_the_outage() -> None:
    m = feed(launched(), (2.0, live_fail(detail="connection refused")))[0]
    assert m.last_reason == "connection refused"
    m = feed(m, (3.0, ready_ok()))[0]
    assert m.state is State.RUNNING and m.last_reason is None
    m = feed(unhealthy(), (20.0, ready_ok()))[0]
    assert m.state is State.RUNNING and m.last_reason is None


# ---- never down for good while it could run --------------------------------------------

_no_operator_events = st.one_of(
    st.builds(Escalate, _instances, st.just("model failed"), _rands),
    st.builds(Launched, _instances),
    st.builds(LaunchFailed, st.just("boom"), _rands, st.just(False), st.booleans()),
    st.builds(Exited, _instances, st.just("crash"), _rands, st.booleans()),
    st.builds(Paused, _instances, _rands),
    st.builds(Stopped, st.one_of(st.none(), _instances)),
    st.builds(ProbeResult, _instances,
              st.sampled_from([ProbeKind.LIVENESS, ProbeKind.READINESS]), st.booleans(),
              st.just("d"), _rands),
    st.builds(EngineDown, st.just("gone")),
    st.builds(EngineUp, st.just("back")),
    st.builds(Tick, _rands),
)


@hsettings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.tuples(st.floats(0.0, 60.0), _no_operator_events), max_size=40))
def test_with_the_engine_up_the_server_is_never_left_down(
        script: list[tuple[float, Event]]) -> None:
    """Crashes, engine outages and probe results in any order, no operator: once the engine
    is up again the server is always on its way back (launching or serving), unless it
    never became ready in start_retries starts (FATAL)."""
    m, now = step(Machine(), Start("boot"), 0.0, SMALL).machine, 0.0
    for delta, event in script:
        now += delta
        m = step(m, event, now, SMALL).machine
    # The outside world catches up: the engine answers, pending launches and stops report.
    launched_count = 0
    for _ in range(20):
        now += SMALL.restart.backoff_max + 1
        for event in (EngineUp("back"), Stopped(m.instance), Tick()):
            m = step(m, event, now, SMALL).machine
        if m.state is State.STARTING and m.instance is None:
            launched_count += 1
            m = step(m, Launched(f"final{launched_count}"), now, SMALL).machine
            m = step(m, ready_ok(f"final{launched_count}"), now, SMALL).machine
    if m.state is State.FATAL:
        assert m.unready >= SMALL.restart.start_retries
    else:
        assert m.state in (State.RUNNING, State.STARTING, State.UNHEALTHY), m
