"""Restarting one LocalAI model (POST /backend/shutdown) by what each version answers: a model
that is not loaded is no failure on any version, and a busy (or hung) one, which LocalAI
refuses to stop after waiting 30 s, restarts the server at once instead of asking again.
Answers as in core/http/endpoints/localai/backend_monitor.go and pkg/model/process.go."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from daemonkit import Harness, make_settings

from supervisor.engines.base import RestartAnswer
from supervisor.engines.llamaserver import LlamaServerEngine
from supervisor.engines.localai import LocalAIEngine
from supervisor.settings import Engine
from supervisor.versions import VersionSource

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


def test_from_v4_8_a_model_restart_is_forced_after_localais_own_30s_wait() -> None:
    assert env_for("v4.8.0")[0]["LOCALAI_FORCE_BACKEND_SHUTDOWN"] == "true"
    # Before v4.8.0 it would kill a busy model A for B after ~110 s under the global lock.
    assert "LOCALAI_FORCE_BACKEND_SHUTDOWN" not in env_for("v4.7.0")[0]
    assert "LOCALAI_FORCE_BACKEND_SHUTDOWN" not in env_for(None)[0]
    assert env_for("v4.9.0", LOCALAI_FORCE_BACKEND_SHUTDOWN="false")[0][
        "LOCALAI_FORCE_BACKEND_SHUTDOWN"] == "false"


def hung_localai(tmp_path: Path, version: str | None, monkeypatch: pytest.MonkeyPatch,
                 program_version: tuple[str, VersionSource] | None = None) -> Harness:
    """Model probes every second; a probe with no answer waits 0.05 s (real time) for the
    model's work counter to move before it counts as hung."""
    monkeypatch.setattr("supervisor.models.PROGRESS_WINDOW_MIN", 0.05)
    base = make_settings(tmp_path, model_probes=True, model_interval=1.0, model_timeout=0.01,
                         model_failure_threshold=2)
    return Harness(tmp_path, base.model_copy(update={
        "server": base.server.model_copy(update={"engine": Engine.LOCALAI}),
        "localai": base.localai.model_copy(update={"version": version})}),
        program_version=program_version)


async def tick_until_shutdown(h: Harness) -> None:
    for _ in range(12):
        await h.tick(1.0)
        await asyncio.sleep(0.1)  # the probe's real 0.05 s wait for progress
        await h.settle()
        if any(c.path == "/backend/shutdown" for c in h.prober.calls):
            return
    raise AssertionError("the model was never restarted alone")


@pytest.mark.parametrize("version", [None, "v3.9.0", "v4.7.2"])
async def test_a_hung_model_before_v4_8_restarts_the_server_not_the_model(
        tmp_path: Path, version: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    # /backend/shutdown would wait for it with no deadline holding LocalAI's global lock.
    h = hung_localai(tmp_path, version, monkeypatch)
    h.prober.resident = ["tiny-a"]
    await h.start()
    await h.running()
    h.prober.probes_time_out = True  # no answer, and no work done meanwhile: hung
    for _ in range(12):
        await h.tick(1.0)
    await h.until(lambda: h.runtime.launched == ["t1", "t2"], "the server restarted")
    assert not [c for c in h.prober.calls if c.path == "/backend/shutdown"]
    assert h.daemon.status().restarts_by_reason.get("model-escalation") == 1
    await h.close()


@pytest.mark.parametrize("learnt", ["setting", "program"])
async def test_a_hung_model_from_v4_8_is_restarted_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, learnt: str) -> None:
    """v4.8.0 from the setting, or (no setting, no /version answer yet) from --help."""
    h = (hung_localai(tmp_path, "v4.8.0", monkeypatch) if learnt == "setting" else
         hung_localai(tmp_path, None, monkeypatch, ("v4.8.0", VersionSource.PROGRAM)))
    h.prober.resident = ["tiny-a"]
    h.prober.answers["/backend/shutdown"] = (200, '{"message":"model stopped"}')
    await h.start()
    await h.running()
    h.prober.probes_time_out = True
    await tick_until_shutdown(h)
    assert [c.body for c in h.prober.calls if c.path == "/backend/shutdown"] == [
        {"model": "tiny-a"}]
    assert h.runtime.launched == ["t1"]
    await h.close()


async def test_a_model_failing_fast_before_v4_8_is_still_restarted_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = hung_localai(tmp_path, "v4.7.0", monkeypatch)
    h.prober.resident = ["tiny-a"]
    await h.start()
    await h.running()
    h.prober.model_status = 500  # an error answer: the backend is not busy
    await tick_until_shutdown(h)
    assert h.runtime.launched == ["t1"]
    await h.close()


async def test_the_version_of_the_binary_chooses_the_environment_before_the_first_start(
        tmp_path: Path) -> None:
    base = make_settings(tmp_path)
    settings = base.model_copy(update={
        "server": base.server.model_copy(update={"engine": Engine.LOCALAI})})
    h = Harness(tmp_path, settings, program_version=("v4.9.0 (abc)", VersionSource.PROGRAM))
    await h.start()
    await h.running()
    env = dict(h.runtime.specs[0].env)
    assert env["LOCALAI_MAX_ACTIVE_BACKENDS"] == "1"
    assert "LOCALAI_PARALLEL_REQUESTS" not in env
    st = h.daemon.status()
    assert st.engine_version is not None and st.engine_version.source is VersionSource.PROGRAM
    await h.close()


def test_only_the_docker_runtime_spec_asks_for_unlimited_memlock(tmp_path: Path) -> None:
    from supervisor.configuration import check
    from supervisor.engines.localai import LocalAIEngine
    from supervisor.settings import RuntimeKind

    base = make_settings(tmp_path)
    base.server.model_config_file.write_text(
        base.server.model_config_file.read_text() + "  mmlock: true\n")
    for runtime, expected in ((RuntimeKind.DOCKER, True), (RuntimeKind.PROCESS, False)):
        s = base.model_copy(update={"server": base.server.model_copy(update={
            "engine": Engine.LOCALAI, "runtime": runtime})})
        spec = check(s, LocalAIEngine()).spec
        assert spec is not None and spec.memlock_unlimited is expected


async def test_model_logs_without_a_per_model_log_come_from_the_server_log_or_say_why(
        tmp_path: Path) -> None:
    """LocalAI before v4.1.0: /api/backend-logs is a 404; the backend's lines are in its own
    log at debug level only (pkg/model/process.go "GRPC stderr")."""
    h = localai(tmp_path)
    h.prober.answers["/api/backend-logs/tiny-a"] = (404, "Not Found")
    await h.start()
    await h.running()
    lines = await h.daemon.model_log("tiny-a", 10)
    assert len(lines) == 1 and "LOCALAI_LOG_LEVEL=debug" in lines[0]
    debug = ('DEBUG GRPC stderr id="tiny-a-127.0.0.1:37001" line="cudaMalloc failed"',
             'DEBUG GRPC stderr id="tiny-b-127.0.0.1:37002" line="other"')

    async def server_log(lines: int, exited: object = None) -> list[str]:
        return list(debug)

    h.runtime.logs = server_log  # type: ignore[method-assign]
    assert await h.daemon.model_log("tiny-a", 10) == [debug[0]]
    await h.close()


async def test_a_version_read_that_raises_does_not_stop_the_start(tmp_path: Path) -> None:
    base = make_settings(tmp_path)
    h = Harness(tmp_path, base.model_copy(update={
        "server": base.server.model_copy(update={"engine": Engine.LOCALAI})}))

    def broken(_: object) -> None:
        raise TypeError("a docker-py surprise")

    h.daemon._versioner = broken  # type: ignore[assignment]
    await h.start()
    await h.running()
    assert "LOCALAI_SINGLE_ACTIVE_BACKEND" in dict(h.runtime.specs[0].env)
    await h.close()
