"""The supervisor against a FAKE LocalAI played as v3.9.0, v4.1.0 and v4.9.0
(tests/fakes/local-ai: LocalAI cannot be obtained here; the fake follows LocalAI's source by
version and names the file for each behaviour). What differs by version: the environment the
supervisor renders, what /backend/shutdown answers for a model that is not loaded or busy, the
load-failure cooldown (v4.7.0+) and the public-bind refusal (v4.2.0+)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from supervised import Supervised
from testbed import http_json

pytestmark = pytest.mark.integration

VERSIONS = ("v3.9.0", "v4.1.0", "v4.9.0")


@pytest.fixture
def make(fake_localai: Path, tiny_models: Path, tmp_path: Path
         ) -> Iterator[Callable[..., Supervised]]:
    made: list[Supervised] = []

    def build(version: str, fake: dict[str, str] | None = None,
              **sections: dict[str, Any]) -> Supervised:
        env = {"FAKE_LOCALAI_VERSION": version, "FAKE_LOCALAI_PRELOAD_SECONDS": "0.5",
               "FAKE_LOCALAI_ENV_OUT": str(tmp_path / f"env{len(made)}.json"),
               "FAKE_LOCALAI_PUBLIC_INTERFACE": "0", **(fake or {})}
        localai = {"version": version, "environment": env, **sections.pop("localai", {})}
        localai = {k: v for k, v in localai.items() if v is not None}  # None: not set
        sup = Supervised.create(
            tmp_path / f"sup{len(made)}", tiny_models,
            {"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"},
            server={"runtime": "process", "engine": "localai", **sections.pop("server", {})},
            process={"binary": str(fake_localai)}, localai=localai, **sections)
        made.append(sup)
        return sup

    yield build
    for sup in made:
        sup.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_the_environment_and_the_version_follow_the_localai_run(
        make: Callable[..., Supervised], version: str, tmp_path: Path) -> None:
    sup = make(version).start()
    st = sup.wait_running()
    env = json.loads((tmp_path / "env0.json").read_text())["env"]
    if version == "v3.9.0":
        assert env["LOCALAI_MAX_ACTIVE_BACKENDS"] == "1"
        assert env["LOCALAI_PARALLEL_REQUESTS"] == "true"
    else:
        assert env["LOCALAI_MAX_ACTIVE_BACKENDS"] == "1"
        assert "LOCALAI_PARALLEL_REQUESTS" not in env
    assert "LOCALAI_SINGLE_ACTIVE_BACKEND" not in env
    st = sup.wait_for(lambda s: (s.get("engine_version") or {}).get("source") == "server",
                      30, "the version from GET /version")
    assert st["engine_version"]["version"] == version
    assert '"engine.environment"' in sup.logs(300)


@pytest.mark.parametrize("version", VERSIONS)
def test_restarting_a_model_that_is_not_loaded_is_no_failure(
        make: Callable[..., Supervised], version: str) -> None:
    """v4.8.0+ answers 404, earlier versions 500 "model not found": neither is a failure."""
    sup = make(version, health={"model_probes": False}).start()
    sup.wait_running()
    assert sup.ctl("restart", "tiny-b").returncode == 0
    sup.wait_for(lambda s: '"model.restarted"' in sup.logs(300), 30, "restarted")
    logs = sup.logs(300)
    line = next(ln for ln in logs.splitlines() if '"model.restarted"' in ln)
    assert '"ok": true' in line, line
    st = sup.status()
    assert st["restarts"] == 0
    assert next(m for m in st["models"] if m["name"] == "tiny-b")["last_error"] is None


@pytest.mark.parametrize(("version", "force"), [
    ("v3.9.0", None), ("v4.1.0", None), ("v4.9.0", None), ("v4.9.0", "false")])
def test_a_busy_model_is_restarted_alone_where_localai_can_stop_it(
        make: Callable[..., Supervised], version: str, force: str | None) -> None:
    """v4.8.0+ waits 30 s (here x 0.05) for a busy model, then stops it because the
    supervisor passes LOCALAI_FORCE_BACKEND_SHUTDOWN=true (the request in flight is cut);
    switched off by the user, LocalAI refuses and the server restarts. Before v4.8.0 LocalAI
    waits until the busy model's request is done, then stops it."""
    import threading

    fake = {"FAKE_LOCALAI_TIME_SCALE": "0.05", "FAKE_LOCALAI_REPLY_SECONDS": "6"}
    if force is not None:
        fake["LOCALAI_FORCE_BACKEND_SHUTDOWN"] = force
    sup = make(version, fake, health={"model_probes": False}).start()
    sup.wait_running()
    def ask() -> None:
        with contextlib.suppress(OSError):  # the forced shutdown cuts it
            http_json("POST", sup.server_url + "/v1/chat/completions",
                      {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}]}, 20)

    asked = threading.Thread(target=ask)
    asked.start()
    time.sleep(0.5)
    assert sup.ctl("restart", "tiny-a").returncode == 0
    if force == "false":
        st = sup.wait_for(lambda s: s["restarts_by_reason"].get("model-escalation") == 1
                          and s["state"] == "RUNNING", 60, "the server restarted for the model")
        assert st["restarts"] == 1
        assert "still busy" in sup.logs(400)
    else:
        sup.wait_for(lambda s: '"model.restarted"' in sup.logs(300), 60, "restarted")
        line = next(ln for ln in sup.logs(300).splitlines() if '"model.restarted"' in ln)
        assert '"ok": true' in line, line
        assert sup.status()["restarts"] == 0
    asked.join(30)


@pytest.mark.parametrize("version", ("v4.1.0", "v4.9.0"))
def test_a_hung_model_is_restarted_alone_only_where_localai_cannot_hang_with_it(
        make: Callable[..., Supervised], version: str) -> None:
    """Every completion hangs: probes time out while nothing completes. Before v4.8.0
    /backend/shutdown would wait for the hung model holding LocalAI's global lock, so the
    server is restarted without asking it; from v4.8.0 the model is stopped alone."""
    sup = make(version, {"FAKE_LOCALAI_TIME_SCALE": "0.05", "FAKE_LOCALAI_REPLY_SECONDS": "600"},
               health={"model_probes": True, "model_interval": 1.0, "model_timeout": 1.0,
                       "model_load_timeout": 5.0, "model_failure_threshold": 2,
                       "probe_unloaded": "never"}).start()
    sup.wait_running()
    # Loaded by a request of our own that hangs like every other.
    with contextlib.suppress(OSError):
        http_json("POST", sup.server_url + "/v1/chat/completions",
                  {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}]}, 1)
    if version == "v4.1.0":
        sup.wait_for(lambda s: s["restarts_by_reason"].get("model-escalation") == 1, 60,
                     "the server restarted for the hung model")
        logs = sup.logs(400)
        assert "global loader lock" in logs
        assert '"model.restart"' not in logs  # /backend/shutdown was never asked
    else:
        sup.wait_for(lambda s: '"model.restarted"' in sup.logs(400), 60, "restarted alone")
        line = next(ln for ln in sup.logs(400).splitlines() if '"model.restarted"' in ln)
        assert '"ok": true' in line, line
        assert sup.status()["restarts_by_reason"].get("model-escalation") is None


def test_with_no_version_set_the_binarys_own_version_chooses_the_environment(
        make: Callable[..., Supervised], tmp_path: Path) -> None:
    """`local-ai --help` says "Version: v4.1.0 (sha)" (there is no --version): read before
    the first start, so the environment is v4.1.0's from the start."""
    import os

    os.environ["FAKE_LOCALAI_VERSION"] = "v4.1.0"  # what --help shows, run by the supervisor
    try:
        sup = make("v4.1.0", localai={"version": None}).start()
        st = sup.wait_running()
    finally:
        del os.environ["FAKE_LOCALAI_VERSION"]
    env = json.loads((tmp_path / "env0.json").read_text())["env"]
    assert "LOCALAI_PARALLEL_REQUESTS" not in env and env["LOCALAI_MAX_ACTIVE_BACKENDS"] == "1"
    assert st["engine_version"]["version"] == "v4.1.0"
    assert st["engine_version"]["source"] in ("program", "server")
    assert '"source": "program"' in sup.logs(300)
    # A settings reload (whose file names no version) keeps it: nothing to restart.
    out = sup.ctl("reload")
    assert out.returncode == 0 and "unchanged" in out.stdout, (out.stdout, out.stderr)
    assert sup.status()["restarts"] == 0


@pytest.mark.parametrize("level", ("info", "debug"))
def test_model_logs_on_a_localai_without_backend_logs(
        make: Callable[..., Supervised], level: str) -> None:
    """v3.9.0 has no /api/backend-logs: the backend's lines come from LocalAI's own log
    (debug level only), else the command says why there are none."""
    sup = make("v3.9.0", {"FAKE_LOCALAI_FAIL_LOAD": "tiny-b", "LOCALAI_LOG_LEVEL": level},
               health={"model_probes": False}).start()
    sup.wait_running()
    with contextlib.suppress(OSError):
        http_json("POST", sup.server_url + "/v1/chat/completions",
                  {"model": "tiny-b", "messages": [{"role": "user", "content": "hi"}]}, 10)
    out = sup.ctl("logs", "tiny-b").stdout
    if level == "debug":
        assert "GRPC stderr" in out and "out of memory" in out, out
    else:
        assert "LOCALAI_LOG_LEVEL=debug" in out and "v4.1.0+" in out, out


@pytest.mark.parametrize("version", VERSIONS)
def test_a_failed_load_cools_down_on_v4_7_and_later(
        make: Callable[..., Supervised], version: str) -> None:
    sup = make(version, {"FAKE_LOCALAI_FAIL_LOAD": "tiny-b"},
               health={"model_interval": 0.5, "idle_seconds": 0.5, "model_timeout": 5.0,
                       "model_failure_threshold": 5}).start()
    sup.wait_running()
    seen: set[str] = set()

    def b_state(s: dict[str, Any]) -> bool:
        b = next(m for m in s["models"] if m["name"] == "tiny-b")
        seen.add(b["health"])
        return b["health"] == "cooldown" or (b["last_error"] is not None
                                             and "failing" in seen and time.monotonic() > end)
    end = time.monotonic() + 8
    st = sup.wait_for(b_state, 40, "tiny-b probed after its failed load")
    b = next(m for m in st["models"] if m["name"] == "tiny-b")
    if version == "v4.9.0":
        assert b["health"] == "cooldown" and 0 < b["cooldown_seconds"] <= 10, b
        assert "load is in cooldown" in b["last_error"]
    else:
        assert "cooldown" not in seen and b["cooldown_seconds"] is None, (seen, b)


@pytest.mark.parametrize("version", ("v4.1.0", "v4.9.0"))
def test_a_public_bind_without_a_key_is_refused_from_v4_2_and_explained(
        make: Callable[..., Supervised], version: str) -> None:
    sup = make(version, {"FAKE_LOCALAI_PUBLIC_INTERFACE": "1"},
               server={"listen_host": "0.0.0.0"}, restart={"start_retries": 2}).start()
    if version == "v4.1.0":
        sup.wait_running()
        return
    st = sup.wait_for(lambda s: s["state"] == "FATAL", 60, "FATAL")
    assert st["last_failure"]["cause"] == "public-bind-refused", st["last_failure"]
    assert "gateway" in st["last_failure"]["hint"]


def test_with_an_api_key_the_probes_send_it_and_clients_need_it(
        make: Callable[..., Supervised], tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-fake-key\n")
    sup = make("v4.9.0", localai={"api_key_file": str(key)}).start()
    sup.wait_running()  # readiness (/v1/models) needs the key
    code, _ = http_json("GET", sup.server_url + "/v1/models")
    assert code == 401
    env = json.loads((tmp_path / "env0.json").read_text())["env"]
    assert "sk-fake-key" not in json.dumps(env)
    assert "sk-fake-key" not in sup.logs(500)


@pytest.mark.parametrize(("version", "level", "code"), [
    ("v3.9.0", "info", "load-cause-hidden"),     # Canceled; the cause only at debug level
    ("v3.9.0", "debug", "load-out-of-memory"),   # from LocalAI's own log (GRPC stderr)
    ("v4.9.0", "info", "load-out-of-memory"),    # from /api/backend-logs
])
def test_doctor_decodes_a_failed_load_from_the_backends_output(
        make: Callable[..., Supervised], version: str, level: str, code: str) -> None:
    sup = make(version, {"FAKE_LOCALAI_FAIL_LOAD": "tiny-b", "LOCALAI_LOG_LEVEL": level},
               health={"model_interval": 0.5, "idle_seconds": 0.5, "model_timeout": 5.0,
                       "model_failure_threshold": 5}).start()
    sup.wait_running()
    sup.wait_for(lambda s: any(m["name"] == "tiny-b" and m["last_error"] for m in s["models"]),
                 40, "tiny-b's failed load seen")
    out = sup.ctl("doctor", "tiny-b", "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["live"] and report["engine_version"].startswith(version)
    found = [f for f in report["findings"] if f["code"] == code]
    assert found and found[0]["symptom"] == "could not load model", report["findings"]
    if code == "load-out-of-memory":
        assert any("CUDA0 buffer" in e or "cudaMalloc" in e for e in found[0]["evidence"][1:])
    else:
        assert "LOCALAI_LOG_LEVEL=debug" in found[0]["fix"]
