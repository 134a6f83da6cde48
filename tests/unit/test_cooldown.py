"""LocalAI's load-failure cooldown (v4.7.0+: 503 for 10 s after a failed load, doubling to 5
min; pkg/model/loader.go, core/http/app.go): its own model state with the time left, waited
out by the probes, never counted as a failure."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemonkit import Harness, make_settings

from supervisor import modelhealth as mh
from supervisor.engines.llamaserver import LlamaServerEngine
from supervisor.engines.localai import LocalAIEngine
from supervisor.settings import Engine

COOLING = 'model "tiny-a" load is in cooldown after a recent failure; retry after 20s'


@pytest.mark.parametrize(("status", "text", "seconds"), [
    (503, COOLING, 20.0),
    (503, COOLING.replace("20s", "5m0s"), 300.0),
    (503, COOLING.replace("20s", "1m20s"), 80.0),
    (503, 'model "x" load is in cooldown after a recent failure', 10.0),
    # Tried backend by backend: the type is lost, a 500 with the same text.
    (500, "could not load model - all backends returned error: [llama-cpp]: " + COOLING, 20.0),
    (503, "server busy", None), (404, COOLING, None)])
def test_the_cooldown_answer_and_its_time_are_recognised(status: int, text: str,
                                                         seconds: float | None) -> None:
    assert LocalAIEngine().cooldown_seconds(status, text) == seconds
    assert LlamaServerEngine().cooldown_seconds(status, text) is None


def test_probes_wait_out_a_cooldown_and_it_counts_no_failure() -> None:
    rules = mh.ProbeRules(interval=1.0)
    h = mh.cooling_down(mh.ModelHealth("m", failures=1), 20.0, COOLING, now=100.0)
    assert h.state is mh.ModelState.COOLDOWN and h.failures == 1
    loaded = {"m": mh.LoadState.LOADED}
    assert mh.due({"m": h}, loaded, None, 110.0, rules) == []
    assert [p.name for p in mh.due({"m": h}, loaded, None, 121.0, rules)] == ["m"]
    h2, _ = mh.probe_result(h, True, "", 121.0, rules)
    assert h2.state is mh.ModelState.HEALTHY and h2.cooldown_until is None


async def test_a_model_in_cooldown_shows_it_with_the_time_left_and_is_not_restarted(
        tmp_path: Path) -> None:
    base = make_settings(tmp_path, model_probes=True, model_interval=1.0,
                         model_failure_threshold=1)
    h = Harness(tmp_path, base.model_copy(update={
        "server": base.server.model_copy(update={"engine": Engine.LOCALAI})}))
    h.prober.resident = ["tiny-a"]
    await h.start()
    await h.running()
    h.prober.answers["/v1/chat/completions"] = (503, COOLING)
    await h.tick(1.5)
    await h.tick(1.5)
    model = h.daemon.status().models[0]
    assert model.health.value == "cooldown", model
    assert model.cooldown_seconds is not None and 15 < model.cooldown_seconds <= 20
    for _ in range(5):
        await h.tick(1.5)
    assert h.daemon.status().model_restarts == 0 and h.runtime.launched == ["t1"]
    del h.prober.answers["/v1/chat/completions"]
    await h.tick(15)
    await h.tick(1.5)
    model = h.daemon.status().models[0]
    assert model.health.value == "healthy" and model.cooldown_seconds is None
    await h.close()
