"""Restarting one LocalAI model (POST /backend/shutdown) by what each version answers: a model
that is not loaded is no failure on any version, and a busy (or hung) one, which LocalAI
refuses to stop after waiting 30 s, restarts the server at once instead of asking again.
Answers as in core/http/endpoints/localai/backend_monitor.go and pkg/model/process.go."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemonkit import Harness, make_settings

from supervisor.engines.base import RestartAnswer
from supervisor.engines.llamaserver import LlamaServerEngine
from supervisor.engines.localai import LocalAIEngine
from supervisor.settings import Engine

BUSY = '{"error":{"code":500,"message":"model is still busy: tiny-a: context deadline exceeded"}}'


@pytest.mark.parametrize(("status", "text", "answer"), [
    (200, '{"message":"model stopped"}', RestartAnswer.DONE),                 # v4.8.0+
    (200, "", RestartAnswer.DONE),                                            # before
    (404, '{"error":{"message":"model \\"x\\" is not loaded"}}', RestartAnswer.NOT_LOADED),
    (500, '{"error":{"code":500,"message":"model not found"}}', RestartAnswer.NOT_LOADED),
    (500, '{"error":{"code":500,"message":"model tiny-b not found"}}',  # v3.9.x
     RestartAnswer.NOT_LOADED),
    (500, BUSY, RestartAnswer.BUSY),
    (500, '{"error":{"message":"rpc error"}}', RestartAnswer.FAILED),
    (0, "no answer within 300s", RestartAnswer.FAILED)])
def test_localai_shutdown_answers_by_version(status: int, text: str,
                                             answer: RestartAnswer) -> None:
    assert LocalAIEngine().restart_answer(status, text) is answer


def test_llama_server_unload_and_load_answers() -> None:
    engine = LlamaServerEngine()
    assert engine.restart_answer(200, "{}") is RestartAnswer.DONE
    assert engine.restart_answer(400, "model is not running") is RestartAnswer.NOT_LOADED
    assert engine.restart_answer(500, "boom") is RestartAnswer.FAILED


def localai(tmp_path: Path) -> Harness:
    base = make_settings(tmp_path)
    return Harness(tmp_path, base.model_copy(update={
        "server": base.server.model_copy(update={"engine": Engine.LOCALAI})}))


async def test_a_model_the_engine_will_not_stop_while_busy_restarts_the_server(
        tmp_path: Path) -> None:
    h = localai(tmp_path)
    h.prober.answers["/backend/shutdown"] = (500, BUSY)
    await h.start()
    await h.running()
    assert h.daemon.models.operator_restart("tiny-a") is None
    await h.until(lambda: h.runtime.launched == ["t1", "t2"], "the server restarted")
    assert h.daemon.status().restarts_by_reason.get("model-escalation") == 1
    await h.close()


async def test_a_model_that_is_not_loaded_restarts_fine(tmp_path: Path) -> None:
    h = localai(tmp_path)
    h.prober.answers["/backend/shutdown"] = (500, '{"error":{"message":"model not found"}}')
    await h.start()
    await h.running()
    assert h.daemon.models.operator_restart("tiny-a") is None
    await h.settle()
    model = h.daemon.status().models[0]
    assert model.last_error is None and h.runtime.launched == ["t1"]
    await h.close()


def env_for(version: str | None, **user: str) -> tuple[dict[str, str], list[str]]:
    from supervisor.engines.localai import environment
    from supervisor.settings import Settings

    s = Settings()
    s = s.model_copy(update={"localai": s.localai.model_copy(update={
        "version": version, "environment": user})})
    env, notes = environment(s)
    return env, [name for name, _ in notes]


def test_the_environment_follows_the_version_in_the_settings() -> None:
    # Unknown: the hand-run container's variables, which every version accepts.
    env, notes = env_for(None)
    assert env["LOCALAI_SINGLE_ACTIVE_BACKEND"] == "true" and "LOCALAI_PARALLEL_REQUESTS" in env
    assert "LOCALAI_MAX_ACTIVE_BACKENDS" not in env and notes == []
    assert env_for("v3.8.0")[0] == env
    # v3.9.0: the LRU limit replaces the deprecated alias.
    env, notes = env_for("v3.9.0")
    assert env["LOCALAI_MAX_ACTIVE_BACKENDS"] == "1"
    assert "LOCALAI_SINGLE_ACTIVE_BACKEND" not in env and "LOCALAI_PARALLEL_REQUESTS" in env
    assert notes == ["LOCALAI_SINGLE_ACTIVE_BACKEND"]
    # v4.1.0: PARALLEL_REQUESTS does nothing, so it is not passed.
    env, notes = env_for("v4.1.0")
    assert "LOCALAI_PARALLEL_REQUESTS" not in env
    assert notes == ["LOCALAI_SINGLE_ACTIVE_BACKEND", "LOCALAI_PARALLEL_REQUESTS"]
    # What the user set explicitly is passed anyway, with a note.
    env, notes = env_for("v4.9.0", LOCALAI_PARALLEL_REQUESTS="true")
    assert env["LOCALAI_PARALLEL_REQUESTS"] == "true" and "LOCALAI_PARALLEL_REQUESTS" in notes
