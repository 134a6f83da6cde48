"""The LocalAI engine end to end, against a FAKE LocalAI (tests/fakes/local-ai).

LocalAI cannot be obtained on these machines; the fake reproduces its documented command
line and the endpoints the supervisor uses (the port closed during preload, /v1/models).
Everything else about the daemon is real: process runtime, probes, watcher, control socket.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from supervised import Supervised
from testbed import chat

pytestmark = pytest.mark.integration


@pytest.fixture
def supervised(fake_localai: Path, tiny_models: Path, tmp_path: Path) -> Iterator[Supervised]:
    # The process runtime passes only PATH/HOME/locale from its own environment: the fake's
    # knobs travel the way an operator's variables would, through [localai] environment.
    fake_env = {"FAKE_LOCALAI_ENV_OUT": str(tmp_path / "env.json"),
                "FAKE_LOCALAI_PRELOAD_SECONDS": "2"}
    sup = Supervised.create(
        tmp_path / "sup", tiny_models, {"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"},
        server={"runtime": "process", "engine": "localai"},
        process={"binary": str(fake_localai)},
        localai={"environment": {"LOCALAI_LOG_LEVEL": "debug", **fake_env}},
    )
    yield sup
    sup.close()


def test_localai_command_line_env_and_readiness(supervised: Supervised,
                                                tmp_path: Path) -> None:
    sup = supervised.start()
    t0 = time.monotonic()
    st = sup.wait_for(lambda s: s["state"] in ("STARTING", "RUNNING"), what="launch")
    st = sup.wait_running()
    # The port stayed closed during the 2 s preload: RUNNING only after it.
    assert time.monotonic() - t0 >= 1.5, st
    seen = json.loads((tmp_path / "env.json").read_text())
    assert seen["argv"] == ["run", "--config-file", str(sup.config_file.resolve()),
                            "--models-path", str(sup.models_dir.resolve()),
                            "--address", f"127.0.0.1:{sup.server_port}"]
    env = seen["env"]
    # No localai.version: the fake binary's --help says v4.9.0, read before the first start.
    assert env["LOCALAI_MAX_ACTIVE_BACKENDS"] == "1" and env["PYTHON_GRPC_MAX_WORKERS"] == "8"
    assert "LOCALAI_SINGLE_ACTIVE_BACKEND" not in env and "LOCALAI_PARALLEL_REQUESTS" not in env
    assert env["LOCALAI_FORCE_BACKEND_SHUTDOWN"] == "true"
    assert env["LLAMACPP_PARALLEL"] == "8" and env["LOCALAI_THREADS"] == "2"
    assert env["LOCALAI_LOG_LEVEL"] == "debug"  # the settings override the default
    assert [m["listed"] for m in st["models"]] == [True, True]
    version = json.loads(sup.ctl("version", "--json").stdout)
    # LocalAI's /version carries the commit: "v4.9.0 (f7ad3f70...)".
    assert version["engine"] == "localai" and version["engine_version"].startswith("v4.9.0 (")
    code, body = chat(sup.server_url, "tiny-b")
    # The model's own backend log (GET /api/backend-logs/tiny-b).
    backend = sup.ctl("logs", "tiny-b")
    assert backend.returncode == 0 and "stderr llama_perf_context_print: tiny-b" in \
        backend.stdout, backend
    assert code == 200 and body["model"] == "tiny-b"
    # A config edit that drops a model restarts onto a config LocalAI lists in full.
    sup.write_config({"tiny-a": "tiny-a.gguf"})
    st = sup.wait_for(lambda s: s["restarts"] == 1 and s["state"] == "RUNNING",
                      what="restart onto the new config")
    assert [m["name"] for m in st["models"]] == ["tiny-a"]


def test_localai_model_probes_and_output_smoke_check(fake_localai: Path, tiny_models: Path,
                                                    tmp_path: Path) -> None:
    """The fake answers like a model whose template leaks its EOS token."""
    sup = Supervised.create(
        tmp_path / "sup2", tiny_models, {"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"},
        server={"runtime": "process", "engine": "localai"},
        process={"binary": str(fake_localai)},
        localai={"environment": {"FAKE_LOCALAI_PRELOAD_SECONDS": "0",
                                 "FAKE_LOCALAI_REPLY": "Hello there!</s>"}},
        health={"interval": 0.5, "model_interval": 0.5, "idle_seconds": 600,
                "smoke_interval": 0.5},
    )
    try:
        sup.start()
        sup.wait_running()
        code, _ = chat(sup.server_url, "tiny-a")  # a user loads tiny-a
        assert code == 200
        # The smoke check and the model probe run on their own clocks: wait for both.
        st = sup.wait_for(lambda s: s["models"][0]["output_warning"] is not None
                          and s["models"][0]["health"] == "healthy",
                          timeout=30, what="smoke warning for tiny-a, and a probe of it")
        a, b = st["models"]
        assert "'</s>'" in a["output_warning"], a
        assert a["health"] == "healthy" and a["loaded"] is True
        # tiny-b was never asked for: idle_seconds is long, so it is neither probed nor loaded.
        assert b["health"] == "unknown" and b["loaded"] is False, b
        assert st["state"] == "RUNNING" and st["restarts"] == 0  # a warning, never a restart
        assert "smoke.warning" in sup.logs(200)
    finally:
        sup.close()


@pytest.mark.parametrize("version", ["v3.9.0", "v4.9.0"])
async def test_two_models_at_once_fail_directly_and_queue_through_the_gateway(
        fake_localai: Path, tiny_models: Path, tmp_path: Path, version: str) -> None:
    """The seed's failure, on the FAKE LocalAI (its eviction by version, see
    tests/fakes/local-ai): on v3.10+, asked for B while A is busy, LocalAI loads B next to A
    and fails ("rpc error: code = Internal ... out of memory"); v3.9 stops A, waiting for its
    call, then loads B (README's version table). Through the gateway, on both, B waits for A
    to finish, A is unloaded explicitly (POST /backend/shutdown) and B's answer is a real
    one."""
    import asyncio

    import aiohttp

    calls = tmp_path / "calls.jsonl"
    sup = Supervised.create(
        tmp_path / "sup", tiny_models, {"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"},
        server={"runtime": "process", "engine": "localai"},
        process={"binary": str(fake_localai)},
        # TIME_SCALE: the direct run's failed load puts B in LocalAI's 10 s cooldown (v4.7+).
        localai={"version": version,
                 "environment": {"FAKE_LOCALAI_VERSION": version,
                                 "FAKE_LOCALAI_PRELOAD_SECONDS": "0.2",
                                 "FAKE_LOCALAI_REPLY_SECONDS": "1.5",
                                 "FAKE_LOCALAI_LRU_WAIT": "0.5",
                                 "FAKE_LOCALAI_TIME_SCALE": "0.01",
                                 "FAKE_LOCALAI_CALLS_OUT": str(calls)}},
        gateway={"enabled": True},
        health={"model_probes": False},
    )
    try:
        sup.start()
        sup.wait_running()

        async def both(url: str) -> list[tuple[int, str]]:
            async with aiohttp.ClientSession() as http:
                async def ask(model: str, delay: float) -> tuple[int, str]:
                    await asyncio.sleep(delay)
                    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                    async with http.post(url + "/v1/chat/completions", json=body) as resp:
                        return resp.status, await resp.text()
                return list(await asyncio.gather(ask("tiny-a", 0), ask("tiny-b", 0.2)))

        direct = await both(sup.server_url)
        await asyncio.sleep(2)  # let the direct run's A finish
        calls.write_text("")
        via = await both(sup.gateway_url)
        print(f"direct: {[c for c, _ in direct]}, gateway: {[c for c, _ in via]}")
        if version == "v3.9.0":  # A stopped once its call ended, then B loaded
            assert [code for code, _ in direct] == [200, 200], direct
        else:  # v3.10+: the load beside the busy model fails with its cause
            assert direct[0][0] == 200 and direct[1][0] == 500
            assert "rpc error: code = Internal" in direct[1][1] and "out of memory" in direct[1][1]
        assert [code for code, _ in via] == [200, 200]
        log = [json.loads(line) for line in calls.read_text().splitlines()]
        order = [(c["path"], c["model"], c["outcome"]) for c in log]
        assert order == [("/v1/chat/completions", "tiny-a", "started"),
                         ("/v1/chat/completions", "tiny-a", "done"),
                         ("/backend/shutdown", "tiny-a", "asked"),
                         ("/v1/chat/completions", "tiny-b", "started"),
                         ("/v1/chat/completions", "tiny-b", "done")], order
    finally:
        sup.close()


async def test_a_restart_waits_for_the_request_in_flight_through_the_gateway(
        fake_localai: Path, tiny_models: Path, tmp_path: Path) -> None:
    """LocalAI reports no in-flight count (its llama.cpp backend has no Status RPC), so the
    engine-side drain cannot wait; the gateway counts the request itself and the restart
    waits for it (FAKE LocalAI: each answer takes 2 s)."""
    import asyncio

    import aiohttp

    sup = Supervised.create(
        tmp_path / "sup", tiny_models, {"tiny-a": "tiny-a.gguf"},
        server={"runtime": "process", "engine": "localai"},
        process={"binary": str(fake_localai)},
        localai={"environment": {"FAKE_LOCALAI_PRELOAD_SECONDS": "0.2",
                                 "FAKE_LOCALAI_REPLY_SECONDS": "2"}},
        gateway={"enabled": True},
        health={"model_probes": False},
    )
    try:
        sup.start()
        sup.wait_running()
        async with aiohttp.ClientSession() as http:
            body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}]}
            ask = asyncio.create_task(http.post(sup.gateway_url + "/v1/chat/completions",
                                                json=body))
            await asyncio.sleep(0.5)
            assert (await asyncio.to_thread(sup.ctl, "restart")).returncode == 0
            async with await ask as resp:
                assert resp.status == 200 and (await resp.json())["model"] == "tiny-a"
        st = sup.wait_for(lambda s: s["state"] == "RUNNING" and s["restarts"] == 1, 30,
                          "restarted")
        assert st["drain"]["drained_requests"] == 1 and st["drain"]["cut_off_requests"] == 0
    finally:
        sup.close()
