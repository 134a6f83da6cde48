"""Per-model health: which model to probe when, the restart ladder, idleness. Pure, fake clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from supervisor.modelhealth import (
    GiveUp,
    ModelAction,
    ModelHealth,
    ModelState,
    ProbeModel,
    ProbeRules,
    RestartModel,
    RestartServer,
    UnloadedPolicy,
    due,
    idle_for,
    probe_result,
    probe_started,
    reset,
    restart_done,
    smoke_verdict,
)

RULES = ProbeRules(interval=30.0, timeout=10.0, load_timeout=300.0, failure_threshold=2,
                   unloaded=UnloadedPolicy.WHEN_IDLE, idle_seconds=60.0, model_restarts=2,
                   restart_window=900.0)
IDLE = RULES.idle_seconds
BUSY = 0.0


def fresh(*names: str) -> dict[str, ModelHealth]:
    return {n: ModelHealth(n) for n in names}


def warm(name: str, last_probe: float | None = None) -> ModelHealth:
    """A model that answered a probe since it was (re)started."""
    return ModelHealth(name, state=ModelState.HEALTHY, cold=False, last_probe=last_probe,
                       last_ok=last_probe)


# ---- due(): loaded models -------------------------------------------------------------------


def test_a_cold_loaded_model_is_probed_without_loading_and_with_the_load_timeout() -> None:
    assert due(fresh("a"), {"a": "loaded"}, None, 0.0, RULES) == [
        ProbeModel("a", allow_load=False, timeout=RULES.load_timeout)]


def test_a_warm_loaded_model_gets_the_short_timeout() -> None:
    assert due({"a": warm("a")}, {"a": "loaded"}, BUSY, 0.0, RULES) == [
        ProbeModel("a", allow_load=False, timeout=RULES.timeout)]


def test_a_loaded_model_is_probed_every_interval_busy_or_not() -> None:
    health = {"a": warm("a", last_probe=100.0)}
    for idle in (None, BUSY, IDLE):
        assert due(health, {"a": "loaded"}, idle, 100.0 + RULES.interval - 0.01, RULES) == []
        assert due(health, {"a": "loaded"}, idle, 100.0 + RULES.interval, RULES) == [
            ProbeModel("a", False, RULES.timeout)]


def test_every_due_loaded_model_is_probed_in_name_order() -> None:
    health = {"c": warm("c"), "a": warm("a"), "b": warm("b", last_probe=90.0)}
    loaded = {"a": "loaded", "b": "loaded", "c": "loaded"}
    assert [p.name for p in due(health, loaded, BUSY, 100.0, RULES)] == ["a", "c"]


def test_a_loading_model_is_left_alone_even_when_idle() -> None:
    assert due(fresh("a"), {"a": "loading"}, 10 * IDLE, 0.0, RULES) == []


@pytest.mark.parametrize("state", [ModelState.FAILED, ModelState.RESTARTING])
@pytest.mark.parametrize("load_state", ["loaded", "unloaded"])
def test_failed_and_restarting_models_are_not_probed(state: ModelState, load_state: str) -> None:
    health = {"a": ModelHealth("a", state=state)}
    assert due(health, {"a": load_state}, 10 * IDLE, 1000.0, RULES) == []


def test_models_not_in_the_health_records_are_not_probed() -> None:
    assert due({}, {"a": "loaded"}, IDLE, 0.0, RULES) == []


# ---- due(): unloaded models -----------------------------------------------------------------


@pytest.mark.parametrize("loaded", [{"a": "unloaded"}, {}, {"a": "failed"}], ids=repr)
def test_an_unloaded_model_is_probed_only_once_idle_long_enough(loaded: dict[str, str]) -> None:
    health = {"a": warm("a")}
    assert due(health, loaded, None, 0.0, RULES) == []  # idleness unknown: never
    assert due(health, loaded, BUSY, 0.0, RULES) == []
    assert due(health, loaded, IDLE - 0.01, 0.0, RULES) == []
    # Loading it may take long: the load timeout even for a model that answered before.
    assert due(health, loaded, IDLE, 0.0, RULES) == [
        ProbeModel("a", allow_load=True, timeout=RULES.load_timeout)]


def test_at_most_one_unloaded_model_per_call() -> None:
    health = fresh("a", "b", "c", "d")
    loaded = {"a": "unloaded", "b": "loaded", "c": "unloaded"}  # d: not listed = unloaded
    probes = due(health, loaded, IDLE, 0.0, RULES)
    assert probes == [ProbeModel("a", True, RULES.load_timeout),
                      ProbeModel("b", False, RULES.load_timeout)]


def test_unloaded_models_take_turns() -> None:
    health = fresh("a", "b", "c")
    loaded = {"a": "unloaded", "b": "unloaded", "c": "unloaded"}
    order = []
    for k in range(4):
        now = 10.0 * k
        (probe,) = due(health, loaded, IDLE, now, RULES)
        order.append(probe.name)
        health[probe.name] = probe_started(health[probe.name], now)
    # a, b, c, then a again once its interval (30 s) has passed.
    assert order == ["a", "b", "c", "a"]


def test_a_recently_probed_unloaded_model_does_not_use_up_the_turn() -> None:
    health = {"a": ModelHealth("a", last_probe=95.0), "b": ModelHealth("b")}
    assert due(health, {}, IDLE, 100.0, RULES) == [ProbeModel("b", True, RULES.load_timeout)]


def test_an_unloaded_model_that_passed_its_load_test_is_not_swapped_in_again() -> None:
    health = fresh("a", "b")
    loaded = {"a": "loaded"}
    assert due(health, loaded, IDLE, 0.0, RULES, load_tested={"b"}) == [
        ProbeModel("a", False, RULES.load_timeout)]
    for now in (1000.0, 10_000.0, 100_000.0):  # however long the idleness
        assert [p.name for p in due(health, loaded, 1e9, now, RULES, {"b"})] == ["a"]


def test_a_failing_unloaded_model_is_probed_although_load_tested() -> None:
    # Its failure must be resolved (model restart, server restart, given up) either way.
    health = {"b": ModelHealth("b", state=ModelState.FAILING, failures=1)}
    assert due(health, {}, IDLE, 0.0, RULES, load_tested={"b"}) == [
        ProbeModel("b", True, RULES.load_timeout)]


def test_unloaded_models_are_never_probed_with_policy_never() -> None:
    rules = replace(RULES, unloaded=UnloadedPolicy.NEVER)
    health = fresh("a", "b")
    assert due(health, {"b": "loaded"}, 1e9, 0.0, rules) == [
        ProbeModel("b", False, RULES.load_timeout)]


def test_probe_started_records_the_time_only() -> None:
    h = ModelHealth("a", state=ModelState.FAILING, failures=1)
    assert probe_started(h, 42.0) == replace(h, last_probe=42.0)


# ---- probe_result(): the ladder ---------------------------------------------------------------


def fail(h: ModelHealth, now: float, detail: str = "HTTP 500: boom",
         rules: ProbeRules = RULES) -> tuple[ModelHealth, ModelAction | None]:
    return probe_result(h, False, detail, now, rules)


def fail_to_threshold(h: ModelHealth, now: float,
                      rules: ProbeRules = RULES) -> tuple[ModelHealth, ModelAction | None]:
    action: ModelAction | None = None
    for k in range(rules.failure_threshold):
        assert action is None, k
        h, action = fail(h, now, rules=rules)
    return h, action


def test_a_success_makes_a_model_healthy_and_warm() -> None:
    h, action = probe_result(ModelHealth("a"), True, "", 5.0, RULES)
    assert action is None
    assert h == ModelHealth("a", state=ModelState.HEALTHY, last_ok=5.0, cold=False)


def test_failures_below_the_threshold_only_count() -> None:
    h, action = fail(warm("a"), 10.0)
    assert action is None
    assert h.state is ModelState.FAILING
    assert h.failures == 1
    assert h.last_error == "HTTP 500: boom"
    assert h.cold is False
    assert h.restarts == ()


def test_the_threshold_restarts_the_model() -> None:
    h, action = fail_to_threshold(warm("a"), 10.0)
    assert action == RestartModel("a", "2 failed probes: HTTP 500: boom")
    assert h.state is ModelState.RESTARTING
    assert h.restarts == (10.0,)
    assert h.failures == 0
    assert h.cold is True  # the reload may take the load timeout


def test_the_full_ladder_model_restarts_then_server_once_then_give_up() -> None:
    h = warm("a")
    actions: list[ModelAction] = []
    now = 0.0
    for _ in range(RULES.model_restarts):
        now += 10.0
        h, action = fail_to_threshold(h, now)
        assert isinstance(action, RestartModel)
        actions.append(action)
        h = restart_done(h, True, "")
    assert [a.reason for a in actions] == ["2 failed probes: HTTP 500: boom"] * 2
    now += 10.0
    h, action = fail_to_threshold(h, now)
    assert action == RestartServer(
        "a", "model a still failing after 2 model restart(s): HTTP 500: boom")
    assert h.escalated is True
    assert h.failures == 0
    assert h.cold is True
    assert h.restarts == (10.0, 20.0)
    assert h.state is not ModelState.FAILED

    # The server restarts: the record keeps the escalation.
    h = reset(["a"], {"a": h})["a"]
    now += 10.0
    h, action = fail_to_threshold(h, now)
    assert action == GiveUp(
        "a", "model a still failing after model and server restarts: HTTP 500: boom")
    assert h.state is ModelState.FAILED
    # A failed model is not probed again (other models are).
    assert due({"a": h, "b": ModelHealth("b")}, {"a": "loaded", "b": "loaded"}, IDLE,
               now + 1000, RULES) == [ProbeModel("b", False, RULES.load_timeout)]


def test_model_restarts_older_than_the_window_are_forgiven() -> None:
    h = replace(warm("a"), restarts=(0.0, 100.0))
    h2, action = fail_to_threshold(h, RULES.restart_window - 1)
    assert isinstance(action, RestartServer)  # both still count
    h2, action = fail_to_threshold(h, RULES.restart_window)
    assert isinstance(action, RestartModel)  # the one at 0.0 is forgotten
    assert h2.restarts == (100.0, RULES.restart_window)


def test_without_model_restarts_the_first_threshold_escalates() -> None:
    rules = replace(RULES, model_restarts=0, failure_threshold=1)
    h, action = fail(warm("a"), 10.0, rules=rules)
    assert isinstance(action, RestartServer)
    h, action = fail(h, 20.0, rules=rules)
    assert isinstance(action, GiveUp)


def test_a_success_resets_failures_and_escalation_but_keeps_restart_history() -> None:
    h = ModelHealth("a", state=ModelState.FAILING, failures=1, last_error="x",
                    restarts=(5.0,), escalated=True, cold=True)
    h2, action = probe_result(h, True, "", 50.0, RULES)
    assert action is None
    assert h2 == ModelHealth("a", state=ModelState.HEALTHY, failures=0, last_ok=50.0,
                             last_error=None, restarts=(5.0,), escalated=False, cold=False)
    # Failing again later starts with a model restart, not a server restart.
    _, action = fail_to_threshold(replace(h2, restarts=()), 60.0)
    assert isinstance(action, RestartModel)


def test_a_success_between_failures_restarts_the_count() -> None:
    h, _ = fail(warm("a"), 1.0)
    h, _ = probe_result(h, True, "", 2.0, RULES)
    h, action = fail(h, 3.0)
    assert action is None
    assert h.failures == 1


# ---- restart_done() ---------------------------------------------------------------------------


def test_restart_done_resumes_probing_cold() -> None:
    h, _ = fail_to_threshold(warm("a", last_probe=10.0), 10.0)
    assert due({"a": h}, {"a": "loaded"}, BUSY, 100.0, RULES) == []  # restarting
    ok = restart_done(h, True, "restart: probe failed")
    assert ok.state is ModelState.FAILING
    assert ok.last_error is None
    assert ok.cold is True
    assert due({"a": ok}, {"a": "loaded"}, BUSY, 100.0, RULES) == [
        ProbeModel("a", False, RULES.load_timeout)]
    bad = restart_done(h, False, "POST /models/load: HTTP 500: no memory")
    assert bad.state is ModelState.FAILING
    assert bad.last_error == "POST /models/load: HTTP 500: no memory"
    assert bad.restarts == h.restarts


# ---- reset() ----------------------------------------------------------------------------------


def test_reset_gives_fresh_records_for_the_configured_models() -> None:
    old = {
        "healthy": warm("healthy", last_probe=5.0),
        "failing": ModelHealth("failing", state=ModelState.FAILING, failures=1, last_error="x",
                               restarts=(3.0,)),
        "restarting": ModelHealth("restarting", state=ModelState.RESTARTING, restarts=(4.0,)),
        "escalated": ModelHealth("escalated", state=ModelState.FAILING, failures=1,
                                 last_probe=9.0, last_ok=1.0, last_error="x",
                                 restarts=(1.0, 2.0), escalated=True, cold=False),
        "failed": ModelHealth("failed", state=ModelState.FAILED, restarts=(1.0, 2.0),
                              escalated=True, last_error="x"),
        "removed": warm("removed"),
    }
    names = ["healthy", "failing", "restarting", "escalated", "failed", "new"]
    out = reset(names, old)
    assert list(out) == names
    for name in ("healthy", "failing", "restarting", "new"):
        assert out[name] == ModelHealth(name)
    assert out["escalated"] == ModelHealth("escalated", state=ModelState.UNKNOWN,
                                           restarts=(1.0, 2.0), escalated=True)
    assert out["failed"] == ModelHealth("failed", state=ModelState.FAILED,
                                        restarts=(1.0, 2.0), escalated=True)


def test_reset_of_nothing() -> None:
    assert reset([], {"a": warm("a")}) == {}
    assert reset(["a"], {}) == {"a": ModelHealth("a")}


# ---- idle_for() -------------------------------------------------------------------------------

OWN = 2.0


def test_idle_is_unknown_without_samples() -> None:
    assert idle_for([], 100.0, OWN) is None


def test_idle_is_unknown_when_the_latest_work_reading_is_missing() -> None:
    samples: list[tuple[float, float | None, int | None]] = [(0.0, 5.0, 0), (10.0, 5.0, 0),
                                                             (20.0, None, 0)]
    assert idle_for(samples, 100.0, OWN) is None
    assert idle_for([(0.0, None, 0)], 100.0, OWN) is None


@pytest.mark.parametrize(("where", "idle"), [(0, 100.0), (1, 90.0)])
def test_an_earlier_missing_reading_counts_as_busy_then(where: int, idle: float) -> None:
    """Not unknown for as long as it stays in the window (a probe failed during a swap kept
    an unloaded model from ever being probed again)."""
    samples: list[tuple[float, float | None, int | None]] = [(0.0, 5.0, 0), (10.0, 5.0, 0),
                                                             (20.0, 5.0, 0)]
    samples[where] = (samples[where][0], None, 0)
    assert idle_for(samples, 100.0, OWN) == idle


def test_work_done_across_a_missing_reading_is_still_seen() -> None:
    samples = [(0.0, 5.0, 0), (10.0, None, 0), (20.0, 5.0 + OWN + 1, 0), (30.0, 7.0 + OWN, 0)]
    assert idle_for(samples, 100.0, OWN) == 80.0


def test_quiet_samples_are_idle_since_the_first_one() -> None:
    samples = [(10.0, 5.0, 0), (20.0, 5.0, 0), (30.0, 5.0, 0)]
    assert idle_for(samples, 100.0, OWN) == 90.0


def test_a_request_in_flight_moves_the_idle_start() -> None:
    samples = [(10.0, 5.0, 0), (20.0, 5.0, 1), (30.0, 5.0, 0)]
    assert idle_for(samples, 100.0, OWN) == 80.0
    assert idle_for([*samples, (40.0, 5.0, 3)], 40.0, OWN) == 0.0


def test_work_beyond_our_own_probes_is_user_traffic() -> None:
    samples = [(10.0, 5.0, 0), (20.0, 5.0 + OWN, 0), (30.0, 5.0 + OWN, 0)]
    assert idle_for(samples, 100.0, OWN) == 90.0  # our own probe's work: still idle
    samples = [(10.0, 5.0, 0), (20.0, 5.0 + OWN + 0.5, 0), (30.0, 7.5, 0)]
    assert idle_for(samples, 100.0, OWN) == 80.0


def test_work_is_compared_between_neighbouring_samples() -> None:
    # Slow growth within the allowance each step is never traffic, however much it sums to.
    samples = [(float(t), float(t) * OWN / 10, 0) for t in range(0, 100, 10)]
    assert idle_for(samples, 100.0, OWN) == 100.0


def test_a_busy_first_sample_counts() -> None:
    assert idle_for([(10.0, 5.0, 2)], 25.0, OWN) == 15.0


def test_unknown_in_flight_relies_on_the_work_counter() -> None:
    # LocalAI reports no in-flight count, only completed calls.
    assert idle_for([(10.0, 5.0, None), (20.0, 5.0, None)], 100.0, OWN) == 90.0
    assert idle_for([(10.0, 5.0, None), (20.0, 12.0, None)], 100.0, OWN) == 80.0


def test_a_counter_that_went_down_is_not_traffic() -> None:
    # The server restarted between samples and its counters started over.
    assert idle_for([(10.0, 500.0, 0), (20.0, 0.0, 0)], 100.0, OWN) == 90.0


# ---- smoke_verdict() --------------------------------------------------------------------------


def test_smoke_verdict_special_token_at_the_end() -> None:
    v = smoke_verdict("Hello there!</s>  \n", "stop", 5, 32, ["</s>", "<|im_end|>"])
    assert v is not None and "'</s>'" in v


def test_smoke_verdict_cut_off_before_max_tokens() -> None:
    v = smoke_verdict("Hello, I am a", "length", 5, 32, ["</s>"])
    assert v is not None and "cut off after 5 of 32 tokens" in v


@pytest.mark.parametrize(
    ("content", "finish", "used"),
    [
        ("Hello there!", "stop", 4),
        ("Hello there, how are", "length", 32),  # max_tokens reached: asked for
        ("Hello", "length", None),
        ("</s> in the middle is fine", "stop", 8),
    ],
)
def test_smoke_verdict_clean_answers(content: str, finish: str, used: int | None) -> None:
    assert smoke_verdict(content, finish, used, 32, ["", "</s>"]) is None


def test_smoke_verdict_an_answer_that_fills_the_slot_is_cut_off_even_with_stop() -> None:
    """LocalAI says finish_reason "stop" when the slot's context fills (failure 2)."""
    w = smoke_verdict("Once upon a", "stop", 500, 1000, [], prompt_tokens=11, budget=511)
    assert w is not None and "cut off after 500 tokens" in w and "'stop'" in w
    assert smoke_verdict("Done.", "stop", 20, 1000, [], prompt_tokens=11, budget=511) is None
    # max_tokens reached: the answer was limited on purpose.
    assert smoke_verdict("x", "length", 16, 16, [], prompt_tokens=500, budget=511) is None


def test_request_budget_splits_unless_the_kv_cache_is_unified() -> None:
    from supervisor.lint import LintContext, request_budget
    from supervisor.versions import Version

    assert request_budget(4095, (), LintContext(parallel=8)) == 511
    assert request_budget(4095, ("parallel:2",), LintContext(parallel=8)) == 2047
    assert request_budget(4095, (), LintContext(parallel=8,
                                                engine_version=Version(4, 3, 0))) == 4095
    assert request_budget(None, (), LintContext()) is None
