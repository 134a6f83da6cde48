"""The gateway's scheduler as a pure state machine: events in, actions out, a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from supervisor.scheduler import (
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

TWO = {"a": ModelLimits(slots=2), "b": ModelLimits(slots=2)}


@dataclass
class Bench:
    """A scheduler, a clock, and everything it has said."""

    rules: Rules = field(default_factory=lambda: Rules(models=TWO))
    now: float = 0.0
    sched: Scheduler = field(init=False)
    actions: list[Action] = field(default_factory=list)
    next_rid: int = 0

    def __post_init__(self) -> None:
        self.sched = Scheduler(self.rules)
        self.feed(PhaseChanged(Phase.OPEN, fresh=True))

    def feed(self, event: Event) -> list[Action]:
        out = self.sched.step(event, self.now)
        self.actions += out
        return out

    def arrive(self, model: str | None) -> int:
        self.next_rid += 1
        self.feed(Arrive(self.next_rid, model, self.now))
        return self.next_rid

    def admitted(self) -> list[int]:
        return [a.rid for a in self.actions if isinstance(a, Admit)]

    def unloads(self) -> list[Unload]:
        return [a for a in self.actions if isinstance(a, Unload)]

    def finish_unload(self) -> None:
        self.feed(Unloaded(self.unloads()[-1].epoch))


def test_a_request_for_the_loaded_model_passes_at_once_up_to_its_slots() -> None:
    b = Bench()
    r1, r2, r3 = b.arrive("a"), b.arrive("a"), b.arrive("a")
    assert b.admitted() == [r1, r2]
    assert b.sched.queued("a") == 1
    b.feed(Finish(r1))
    assert b.admitted() == [r1, r2, r3]


def test_another_model_waits_for_the_loaded_one_to_drain_then_swaps_once() -> None:
    b = Bench()
    a1, a2 = b.arrive("a"), b.arrive("a")
    b1, b2 = b.arrive("b"), b.arrive("b")
    assert b.admitted() == [a1, a2] and not b.unloads()
    b.now = 1
    b.feed(Finish(a1))
    assert not b.unloads()  # a2 still in flight: no unload while busy
    b.now = 2
    b.feed(Finish(a2))
    [unload] = b.unloads()
    assert unload.models == ("a",) and unload.for_model == "b"
    assert b.admitted() == [a1, a2]  # nothing for b until a is unloaded
    b.now = 3
    b.finish_unload()
    assert b.admitted() == [a1, a2, b1, b2]  # the waiting requests go together
    first = next(a for a in b.actions if isinstance(a, Admit) and a.rid == b1)
    assert first.swap_began == 2 and first.waited == 3


def test_the_loaded_model_stops_admitting_after_max_hold_while_another_waits() -> None:
    b = Bench(Rules(models=TWO, max_hold=30))
    a1 = b.arrive("a")
    b.now = 5
    b1 = b.arrive("b")
    b.now = 10
    a2 = b.arrive("a")  # within max_hold of b1's arrival: still admitted
    assert b.admitted() == [a1, a2]
    assert b.sched.next_deadline(b.now) == 35
    b.now = 35
    b.feed(Tick())
    b.feed(Finish(a1))
    a3 = b.arrive("a")  # hold is over: a finishes what it has, admits nothing new
    assert a3 not in b.admitted()
    b.feed(Finish(a2))
    b.finish_unload()
    assert b.admitted()[-1] == b1
    # a3 waits for a's next turn, which comes once b is done.
    b.now = 36
    b.feed(Finish(b1))
    b.finish_unload()
    assert b.admitted()[-1] == a3


def test_turns_follow_the_oldest_waiting_request() -> None:
    b = Bench(Rules(models={**TWO, "c": ModelLimits()}))
    a1 = b.arrive("a")
    b.now = 1
    c1 = b.arrive("c")
    b.now = 2
    b1 = b.arrive("b")
    b.feed(Finish(a1))
    b.finish_unload()
    assert b.admitted() == [a1, c1]
    b.feed(Finish(c1))
    b.finish_unload()
    assert b.admitted() == [a1, c1, b1]


def test_a_waiting_client_that_leaves_is_dropped_from_the_queue() -> None:
    b = Bench()
    a1 = b.arrive("a")
    b1 = b.arrive("b")
    b.feed(Leave(b1))
    b.feed(Finish(a1))
    assert not b.unloads() and b.sched.waiting == 0


def test_queue_full_is_refused_with_429_and_a_timeout_with_503() -> None:
    b = Bench(Rules(models={"a": ModelLimits(slots=1), "b": ModelLimits()}, queue_max=1,
                    queue_timeout=10))
    b.arrive("a")
    b.arrive("a")
    r3 = b.arrive("a")
    [refused] = [a for a in b.actions if isinstance(a, Refuse)]
    assert (refused.rid, refused.why, refused.why.status) == (r3, Refusal.QUEUE_FULL, 429)
    b.now = 10
    b.feed(Tick())
    timeouts = [a for a in b.actions if isinstance(a, Refuse) and a.rid != r3]
    assert [(t.why, t.why.status, t.waited) for t in timeouts] == \
        [(Refusal.QUEUE_TIMEOUT, 503, 10)]


def test_requests_are_held_while_the_server_restarts_and_released_when_it_serves() -> None:
    b = Bench()
    b.feed(PhaseChanged(Phase.HELD))
    r1, r2 = b.arrive("a"), b.arrive(None)
    assert b.admitted() == []
    b.now = 4
    b.feed(PhaseChanged(Phase.OPEN, fresh=True))
    assert sorted(b.admitted()) == [r1, r2]


def test_a_hold_that_outlasts_the_queue_timeout_says_the_server_is_unavailable() -> None:
    b = Bench(Rules(models=TWO, queue_timeout=5))
    b.feed(PhaseChanged(Phase.HELD))
    b.arrive("a")
    b.now = 5
    [refused] = [a for a in b.feed(Tick()) if isinstance(a, Refuse)]
    assert refused.why is Refusal.SERVER_UNAVAILABLE


def test_a_server_that_is_down_refuses_waiting_and_new_requests() -> None:
    b = Bench()
    b.feed(PhaseChanged(Phase.HELD))
    b.arrive("a")
    out = b.feed(PhaseChanged(Phase.DOWN))
    assert [a.why for a in out if isinstance(a, Refuse)] == [Refusal.SERVER_DOWN]
    out = b.feed(Arrive(99, "b", b.now))
    assert [a.why for a in out if isinstance(a, Refuse)] == [Refusal.SERVER_DOWN]


def test_drain_waits_for_every_request_in_flight_and_admits_nothing_new() -> None:
    b = Bench()
    a1, p1 = b.arrive("a"), b.arrive(None)
    assert not [x for x in b.feed(Drain()) if isinstance(x, Drained)]
    a2 = b.arrive("a")
    b.feed(Finish(a1))
    assert [x for x in b.feed(Finish(p1)) if isinstance(x, Drained)]
    assert a2 not in b.admitted()


def test_drain_with_nothing_in_flight_is_drained_at_once() -> None:
    b = Bench()
    assert Drained() in b.feed(Drain())


def test_a_fresh_server_has_nothing_resident_and_a_stale_unload_is_ignored() -> None:
    b = Bench()
    a1 = b.arrive("a")
    b.arrive("b")
    b.feed(Finish(a1))
    [unload] = b.unloads()
    b.feed(PhaseChanged(Phase.HELD))
    b.feed(PhaseChanged(Phase.OPEN, fresh=True))
    # Nothing resident in the new instance: b goes at once, no unload needed.
    assert len(b.admitted()) == 2 and len(b.unloads()) == 1
    b.feed(Unloaded(unload.epoch))  # the old instance's unload reports late: harmless
    assert b.sched.unloading == ()


def test_requests_naming_no_configured_model_never_swap() -> None:
    b = Bench()
    a1 = b.arrive("a")
    x = b.arrive("not-configured")
    n = b.arrive(None)
    assert b.admitted() == [a1, x, n] and not b.unloads()


def test_several_resident_models_fit_a_memory_budget_evicting_the_least_recently_used() -> None:
    gib = 1 << 30
    models = {m: ModelLimits(slots=1, footprint=4 * gib) for m in "abc"}
    b = Bench(Rules(models=models, max_resident=None, memory_budget=9 * gib))
    a1 = b.arrive("a")
    b.now = 1
    b1 = b.arrive("b")
    assert b.admitted() == [a1, b1]  # 8 GiB: both fit
    b.feed(Finish(a1))
    b.now = 2
    b.feed(Finish(b1))
    c1 = b.arrive("c")  # 12 GiB would not fit: the least recently used (a) goes
    [unload] = b.unloads()
    assert unload.models == ("a",)
    b.finish_unload()
    assert b.admitted()[-1] == c1 and set(b.sched.resident) == {"b", "c"}


def test_a_busy_resident_is_never_evicted_the_newcomer_waits() -> None:
    gib = 1 << 30
    models = {m: ModelLimits(slots=1, footprint=5 * gib) for m in "ab"}
    b = Bench(Rules(models=models, max_resident=None, memory_budget=8 * gib))
    a1 = b.arrive("a")
    b1 = b.arrive("b")
    assert b.admitted() == [a1] and not b.unloads()
    b.feed(Finish(a1))
    b.finish_unload()
    assert b.admitted() == [a1, b1]


def test_configure_changes_the_limits_for_later_requests() -> None:
    b = Bench()
    b.feed(Configure(Rules(models={"a": ModelLimits(slots=1)})))
    b.arrive("a")
    r2 = b.arrive("a")
    assert r2 not in b.admitted()


# ---- properties over random interleavings ----------------------------------------------

MODELS = ("a", "b", "c")
ops = st.lists(st.one_of(
    st.tuples(st.just("arrive"), st.sampled_from((*MODELS, None))),
    st.tuples(st.just("finish"), st.integers(0, 30)),
    st.tuples(st.just("leave"), st.integers(0, 30)),
    st.tuples(st.just("unloaded"), st.just(0)),
    st.tuples(st.just("phase"), st.sampled_from(list(Phase))),
    st.tuples(st.just("wait"), st.floats(0.1, 90)),
    st.tuples(st.just("drain"), st.just(0)),
    st.tuples(st.just("close"), st.just(0)),
), max_size=80)


@hsettings(max_examples=400, deadline=None)
@given(ops, st.sampled_from([1, 2, None]), st.booleans())
def test_no_request_is_admitted_beside_a_model_that_does_not_fit_and_none_waits_forever(
        steps: list[tuple[str, object]], max_resident: int | None, budget: bool) -> None:
    gib = 1 << 30
    models = {m: ModelLimits(slots=2, footprint=(i + 2) * gib) for i, m in enumerate(MODELS)}
    rules = Rules(models=models, max_resident=max_resident,
                  memory_budget=7 * gib if budget else None, queue_max=8, queue_timeout=60,
                  max_hold=10)
    b = Bench(rules)
    instance = 0
    live: dict[int, tuple[str | None, int]] = {}  # admitted, not finished: model, instance
    arrived: dict[int, float] = {}
    outcome: dict[int, str] = {}
    # The supervisor is stopping; and then the drain it asked for has ended.
    closed = draining = sealed = False

    def record(out: list[Action]) -> None:
        nonlocal sealed
        for a in out:
            if isinstance(a, Admit):
                assert a.rid not in outcome
                # Closing, what was received is served through the drain too; sealed, nothing.
                assert b.sched.phase is Phase.OPEN or (closed and draining)
                assert not sealed
                outcome[a.rid] = "admitted"
                live[a.rid] = (a.model, instance)
            elif isinstance(a, Refuse):
                assert a.rid not in outcome
                outcome[a.rid] = "refused"
                assert b.now - arrived[a.rid] <= rules.queue_timeout + 1e-9
            elif isinstance(a, Drained):
                sealed = sealed or closed
            elif isinstance(a, Unload):
                assert not closed  # no swap for a daemon that is going away
                for m in a.models:  # never unload a model with requests in flight
                    assert not any(lm == m and li == instance for lm, li in live.values())
        due = b.sched.next_deadline(b.now)
        assert due is None or due > b.now, "a deadline that passed was not acted on"
        # What is in flight in this instance always fits: never beyond the limits at once.
        busy = {m for m, i in live.values() if m is not None and i == instance}
        if max_resident is not None:
            assert len(busy) <= max_resident
        if budget and len(busy) > 1:
            assert sum(models[m].footprint or 0 for m in busy) <= 7 * gib

    def finish(rid: int) -> None:
        del live[rid]
        record(b.feed(Finish(rid)))

    for op, arg in steps:
        if op == "arrive":
            b.next_rid += 1
            arrived[b.next_rid] = b.now
            record(b.feed(Arrive(b.next_rid, arg if isinstance(arg, str) else None, b.now)))
        elif op == "finish" and live:
            finish(sorted(live)[int(arg) % len(live)])  # type: ignore[call-overload]
        elif op == "leave":
            waiting = [r for r in arrived if r not in outcome]
            if waiting:
                rid = waiting[int(arg) % len(waiting)]  # type: ignore[call-overload]
                outcome[rid] = "left"
                record(b.feed(Leave(rid)))
        elif op == "unloaded" and b.sched.unloading:
            record(b.feed(Unloaded(b.unloads()[-1].epoch)))
        elif op == "phase":
            assert isinstance(arg, Phase)
            fresh = arg is Phase.OPEN and b.sched.phase is not Phase.OPEN
            instance += fresh
            record(b.feed(PhaseChanged(arg, fresh=fresh)))
        elif op == "wait":  # the owner wakes at the scheduler's next deadline at the latest
            due = b.sched.next_deadline(b.now)
            b.now = min(b.now + float(arg), due if due is not None else b.now + 99)  # type: ignore[arg-type]
            record(b.feed(Tick()))
        elif op == "drain":
            draining = True
            record(b.feed(Drain()))
        elif op == "close":
            closed = True
            record(b.feed(Close()))
    # Then the server serves and requests finish: every request gets an outcome, each within
    # its deadline (checked in record).
    if b.sched.phase is not Phase.OPEN:
        instance += 1
        record(b.feed(PhaseChanged(Phase.OPEN, fresh=True)))
    for _ in range(500):
        if live:
            finish(min(live))
        elif b.sched.unloading:
            record(b.feed(Unloaded(b.unloads()[-1].epoch)))
        elif b.sched.waiting:
            due = b.sched.next_deadline(b.now)
            b.now = min(b.now + 1, due if due is not None else b.now + 1)
            record(b.feed(Tick()))
        else:
            break
    assert b.sched.waiting == 0 and b.sched.admitted == 0
    assert set(outcome) == set(arrived)


def refused(out: list[Action]) -> list[tuple[int, Refusal]]:
    return [(x.rid, x.why) for x in out if isinstance(x, Refuse)]


def test_a_stopping_supervisor_serves_what_it_received_for_the_loaded_model_and_no_swap() -> None:
    """Closing: requests already received for the resident model are served as slots free up,
    through the drain; what needs a swap is refused at once; once drained, nothing more."""
    b = Bench()
    a1, a2, a3 = b.arrive("a"), b.arrive("a"), b.arrive("a")
    b1 = b.arrive("b")
    assert b.admitted() == [a1, a2]
    assert refused(b.feed(Close())) == [(b1, Refusal.SUPERVISOR_STOPPING)]
    a4 = b.arrive("a")  # its handler had started before the listener closed
    assert refused(b.feed(Arrive(50, "b", b.now))) == [(50, Refusal.SUPERVISOR_STOPPING)]
    b.feed(PhaseChanged(Phase.HELD))  # the server is being stopped ...
    assert b.feed(Drain()) == []  # ... after a drain: a3 and a4 still wait for their slots
    b.feed(Finish(a1))
    b.feed(Finish(a2))
    assert b.admitted() == [a1, a2, a3, a4]
    b.feed(Finish(a3))
    assert b.feed(Finish(a4)) == [Drained()]
    assert refused(b.feed(Arrive(51, "a", b.now))) == [(51, Refusal.SUPERVISOR_STOPPING)]
    assert Refusal.SUPERVISOR_STOPPING.status == 503


def test_a_stopping_supervisor_refuses_what_still_waits_when_the_server_goes() -> None:
    """The drain timed out (or the server died): what waits is refused as stopping, not as
    server-down, so its client asks the next daemon."""
    b = Bench()
    a1, a2, a3 = b.arrive("a"), b.arrive("a"), b.arrive("a")
    b.feed(Close())
    b.feed(Drain())
    assert refused(b.feed(PhaseChanged(Phase.DOWN))) == [(a3, Refusal.SUPERVISOR_STOPPING)]
    assert b.admitted() == [a1, a2]
    assert refused(b.feed(Arrive(52, None, b.now))) == [(52, Refusal.SUPERVISOR_STOPPING)]


def test_sealed_nothing_is_admitted_and_what_waits_is_refused() -> None:
    b = Bench()
    a1, a2, a3 = b.arrive("a"), b.arrive("a"), b.arrive("a")
    b.feed(Close())
    assert refused(b.feed(Seal())) == [(a3, Refusal.SUPERVISOR_STOPPING)]
    b.feed(Finish(a1))
    assert b.admitted() == [a1, a2]
    assert refused(b.feed(Arrive(60, None, b.now))) == [(60, Refusal.SUPERVISOR_STOPPING)]


def test_a_stopping_supervisor_refuses_a_request_for_a_model_not_yet_loaded() -> None:
    b = Bench()
    b.feed(PhaseChanged(Phase.OPEN, fresh=True))
    b.feed(Close())
    assert refused(b.feed(Arrive(53, "a", b.now))) == [(53, Refusal.SUPERVISOR_STOPPING)]
    out = b.feed(Arrive(54, None, b.now))  # no model: passes while the server serves
    assert [x.rid for x in out if isinstance(x, Admit)] == [54]
