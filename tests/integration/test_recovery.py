"""Health and recovery against the real engine: swap-aware probes, targeted model restarts,
drain before planned restarts, hangs, crash loops, and files vanishing under a server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import pytest
from supervised import Supervised, wait_chat
from testbed import Dockerd, chat, http_json

from supervisor.tinygguf import write_tiny_llama

pytestmark = pytest.mark.integration

FAST_PROBES = {"interval": 0.5, "timeout": 2.0, "model_interval": 0.5, "model_timeout": 5.0,
               "idle_seconds": 3.0}


def write_unloadable(path: Path) -> None:
    """A complete, well-formed GGUF that llama.cpp refuses to load (unknown architecture)."""
    w = gguf.GGUFWriter(str(path), "bogus")
    w.add_name("bogus")
    w.add_context_length(2048)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def models(tmp_path: Path, tiny_models: Path) -> Path:
    """A per-test models dir (tests here delete and add files)."""
    d = tmp_path / "models"
    d.mkdir()
    for f in tiny_models.iterdir():
        os.link(f, d / f.name)
    return d


@pytest.fixture
def proc_sup(make_process_supervised, models: Path) -> Callable[..., Supervised]:
    def make(config: dict[str, str], **sections: dict[str, Any]) -> Supervised:
        health = {**FAST_PROBES, **sections.pop("health", {})}
        return make_process_supervised(config, models_dir=models, health=health, **sections)

    return make


def model_states(url: str) -> dict[str, str]:
    code, body = http_json("GET", f"{url}/models", timeout=5)
    assert code == 200, body
    return {m["id"]: m["status"]["value"] for m in body["data"]}


def test_probes_cause_no_swap_under_user_traffic(proc_sup) -> None:
    sup = proc_sup({"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"}).start()
    sup.wait_running()
    wait_chat(sup.server_url, "tiny-a")
    stop = threading.Event()
    answered = [0]

    def user() -> None:
        while not stop.is_set():
            code, _ = chat(sup.server_url, "tiny-a", max_tokens=16)
            answered[0] += code == 200

    users = [threading.Thread(target=user) for _ in range(2)]
    for t in users:
        t.start()
    seen_b: set[str] = set()
    try:
        deadline = time.monotonic() + 12  # 4x idle_seconds, 24 model-probe intervals
        while time.monotonic() < deadline:
            seen_b.add(model_states(sup.server_url)["tiny-b"])
            time.sleep(0.1)
        st = sup.status()
    finally:
        stop.set()
        for t in users:
            t.join()
    a = next(m for m in st["models"] if m["name"] == "tiny-a")
    assert seen_b == {"unloaded"}, f"tiny-b was swapped in under traffic: {seen_b}"
    assert a["health"] == "healthy" and a["last_probe_seconds_ago"] < 2, a
    assert answered[0] > 20
    print(f"user requests answered during the window: {answered[0]}; tiny-b states {seen_b}")
    # Once the server is idle long enough, the unloaded model gets its probe too.
    st = sup.wait_for(lambda s: next(m for m in s["models"] if m["name"] == "tiny-b")["health"]
                      == "healthy", timeout=30, what="tiny-b probed when idle")


def test_model_that_cannot_load_is_restarted_alone_then_given_up(proc_sup, models: Path) -> None:
    write_unloadable(models / "bogus.gguf")
    sup = proc_sup({"tiny-a": "tiny-a.gguf", "bogus": "bogus.gguf"},
                   health={"model_failure_threshold": 1, "model_restarts": 1,
                           "idle_seconds": 1.0},
                   restart={"backoff_initial": 0.2}).start()
    sup.wait_running()
    st = sup.wait_for(
        lambda s: next(m for m in s["models"] if m["name"] == "bogus")["health"] == "failed",
        timeout=60, what="bogus given up")
    assert st["state"] == "RUNNING"
    assert st["restarts"] == 1  # one server restart for the model, then no more
    assert st["model_restarts"] >= 1
    events = [json.loads(line) for line in sup.logs(400).splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds.index("model.restart") < kinds.index("model.escalate") < kinds.index(
        "model.failed"), kinds
    failed = next(e for e in events if e["event"] == "model.failed")
    assert failed["cause"] == "model-load-failed", failed
    wait_chat(sup.server_url, "tiny-a")  # the other model still serves
    # What the server lists is as fresh as the last readiness probe (one interval).
    sup.wait_for(lambda s: next(m for m in s["models"] if m["name"] == "bogus")["state"]
                 == "failed", timeout=5, what="bogus listed as failed")
    out = sup.ctl("status")
    assert "failed" in out.stdout


def stream_chat(url: str, model: str, max_tokens: int, first: threading.Event,
                out: dict[str, Any]) -> None:
    body = json.dumps({"model": model, "stream": True, "max_tokens": max_tokens,
                       "ignore_eos": True,
                       "messages": [{"role": "user", "content": "tell me a long story"}]})
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    chunks = 0
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            for line in resp:
                if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                    continue
                event = json.loads(line[6:])
                chunks += 1
                first.set()
                reason = event["choices"][0].get("finish_reason") if event["choices"] else None
                if reason:
                    out["finish_reason"] = reason
    except OSError as exc:
        out["error"] = repr(exc)
    finally:
        first.set()
        out["chunks"] = chunks
        out["ended"] = time.time()


def test_long_stream_finishes_before_a_planned_restart(proc_sup, models: Path) -> None:
    write_tiny_llama(models / "long.gguf", seed=5, name="long", context_length=32768)
    sup = proc_sup({"long": "long.gguf"})
    sup.config_file.write_text("- name: long\n  context_size: 16384\n  parameters:\n"
                               "    model: long.gguf\n")
    sup.start()
    before = sup.wait_running()["restarts"]
    first, out = threading.Event(), {}
    t = threading.Thread(target=stream_chat, args=(sup.server_url, "long", 6000, first, out))
    t.start()
    assert first.wait(30)
    sup.config_file.write_text(sup.config_file.read_text() + "- name: tiny-a\n"
                               "  parameters:\n    model: tiny-a.gguf\n")
    t.join(120)
    st = sup.wait_for(lambda s: s["restarts"] == before + 1 and s["state"] == "RUNNING",
                      what="restart after the stream")
    assert "error" not in out, out
    # Ran to max_tokens (byte tokens merge into fewer chunks): not cut by the restart.
    assert out["finish_reason"] == "length" and out["chunks"] > 1000, out
    launched = [e for e in st["recent_events"] if e["event"] == "server.launched"]
    assert launched[-1]["at"] >= out["ended"], (launched, out)
    assert st["drain"]["drained_requests"] >= 1 and st["drain"]["cut_off_requests"] == 0, st
    print(f"stream of {out['chunks']} chunks finished, then the restart: drain {st['drain']}")


def test_model_file_deleted_while_serving(proc_sup, models: Path) -> None:
    sup = proc_sup({"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"}).start()
    sup.wait_running()
    wait_chat(sup.server_url, "tiny-b")
    (models / "tiny-b.gguf").unlink()
    st = sup.wait_for(lambda s: s["config"]["rejected"] is not None, what="rejection")
    assert "tiny-b.gguf" in st["config"]["rejected"]["errors"][0]
    assert st["state"] == "RUNNING" and st["restarts"] == 0
    wait_chat(sup.server_url, "tiny-a")


# ---- docker: hang, crash loop ----------------------------------------------------------


def host_pid(dockerd: Dockerd, cid: str) -> int:
    return int(dockerd.client().api.inspect_container(cid)["State"]["Pid"])


# The shipped defaults for liveness (Supervised.create sets faster test values).
DEFAULT_LIVENESS = {"interval": 2.0, "timeout": 2.0, "failure_threshold": 3}


def test_sigstopped_container_is_replaced_within_10s_on_defaults(make_supervised,
                                                                 dockerd: Dockerd) -> None:
    sup = make_supervised(health=DEFAULT_LIVENESS).start()
    cid = sup.wait_running()["instance"]["id"]
    pid = host_pid(dockerd, cid)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        st = sup.wait_for(lambda s: s["restarts"] == 1, timeout=60, what="hang detected")
        detected = time.monotonic() - t0
        st = sup.wait_for(lambda s: s["state"] == "RUNNING", timeout=60, what="replaced")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    wait_chat(sup.server_url, "tiny-a")
    print(f"SIGSTOP -> relaunched after {detected:.2f}s, serving again after "
          f"{time.monotonic() - t0:.2f}s")
    assert detected <= 10.5  # 9 s by the probe schedule, plus the kill and the relaunch
    assert st["restarts_by_reason"] == {"hang": 1}
    assert any("liveness" in e["detail"] for e in st["recent_events"]), st["recent_events"]


def test_docker_pause_is_undone_at_once_and_the_held_request_answered(
        make_supervised, dockerd: Dockerd) -> None:
    sup = make_supervised(health=DEFAULT_LIVENESS).start()
    cid = sup.wait_running()["instance"]["id"]
    wait_chat(sup.server_url, "tiny-a")
    container = dockerd.client().containers.get(cid)
    started = container.attrs["State"]["StartedAt"]
    t0 = time.monotonic()
    container.pause()
    status, _ = chat(sup.server_url, "tiny-a", timeout=30)  # sent to the frozen server
    took = time.monotonic() - t0
    print(f"docker pause -> the request it held answered after {took:.2f}s")
    assert status == 200
    assert took < 2.0  # no probe timeout waited for, no relaunch, no model load
    st = sup.status()
    assert st["state"] == "RUNNING" and st["restarts"] == 0 and st["recent_failures"] == 0
    # The thawed server may answer before the engine's answer to the unpause reaches the
    # supervisor's loop: the note follows within moments.
    st = sup.wait_for(lambda s: any(e["event"] == "container.unpaused"
                                    for e in s["recent_events"]), 5, "the unpause noted")
    assert st["restarts"] == 0
    container.reload()
    assert container.status == "running" and container.attrs["State"]["StartedAt"] == started
    assert model_states(sup.server_url).get("tiny-a") == "loaded"


def test_a_frozen_container_is_killed_without_running_again(dockerd: Dockerd,
                                                              llama_image: str) -> None:
    """The hung-server stop of a paused container: SIGKILL alone, so nothing of it runs (a
    `docker stop` would queue a SIGTERM that its handler gets to run when thawed)."""
    from supervisor.runtime.docker import stop_container

    script = "trap 'exit 3' TERM; while true; do sleep 0.1; done"
    container = dockerd.client().containers.run(
        llama_image, entrypoint=["/bin/busybox", "sh", "-c", script], command=[], detach=True)
    try:
        time.sleep(0.5)
        container.pause()
        container.reload()
        stop_container(container, 0)
        assert container.wait(timeout=10)["StatusCode"] == 137  # not the trap's 3
    finally:
        container.remove(force=True)


def test_a_server_that_keeps_crashing_is_restarted_every_time(make_supervised,
                                                            dockerd: Dockerd) -> None:
    sup = make_supervised(restart={"backoff_initial": 0.2, "backoff_max": 0.5}).start()
    sup.wait_running()
    times = []
    for crash in range(6):
        st = sup.wait_for(lambda s, n=crash: s["state"] == "RUNNING" and s["restarts"] == n,
                          what=f"serving before crash {crash + 1}")
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(host_pid(dockerd, st["instance"]["id"]), signal.SIGKILL)
        sup.wait_for(lambda s, n=crash + 1: s["restarts"] == n, what="relaunch")
        wait_chat(sup.server_url, "tiny-a")
        times.append(time.monotonic() - t0)
    st = sup.wait_running()
    print("crash -> serving again:", ", ".join(f"{t:.2f}s" for t in times))
    assert st["restarts_by_reason"] == {"crash": 6}
    assert st["crash_looping"] and st["recent_failures"] == 6
    assert st["last_failure"]["cause"] == "killed", st["last_failure"]
    out = sup.ctl("status")
    assert out.returncode == 0 and "crash-looping" in out.stdout, out.stdout


def test_a_server_that_never_becomes_ready_gives_up_until_fixed(make_process_supervised
                                                                ) -> None:
    sup = make_process_supervised(
        {"tiny-a": "tiny-a.gguf"}, restart={"start_retries": 3, "backoff_initial": 0.2},
        llama_server={"extra_args": ["--no-such-option"]}).start()
    st = sup.wait_for(lambda s: s["state"] == "FATAL", timeout=60, what="FATAL")
    assert any("not ready after 3 start(s) in a row" in e["detail"]
               for e in st["recent_events"]), st["recent_events"]
    out = sup.ctl("status")
    assert out.returncode == 1 and "FATAL" in out.stdout
    # The operator fixes the settings; a reload applies them and leaves FATAL.
    text = sup.settings_file.read_text().replace('extra_args = ["--no-such-option"]',
                                                 "extra_args = []")
    sup.settings_file.write_text(text)
    assert sup.ctl("reload").returncode == 0
    sup.wait_running()
    wait_chat(sup.server_url, "tiny-a")


def test_docker_engine_down_for_a_while_under_the_supervisor(make_supervised,
                                                             dockerd: Dockerd) -> None:
    sup = make_supervised().start()  # the default reconnect_max_delay (1 s)
    cid = sup.wait_running()["instance"]["id"]
    back = dockerd.restart(down_for=8.0)  # longer than several backoffs: none may count
    st = sup.wait_for(lambda s: s["runtime_connected"] and s["restarts"] >= 1
                      and s["state"] == "RUNNING", timeout=60, what="recovery after restart")
    wait_chat(sup.server_url, "tiny-a")
    took = time.monotonic() - back
    print(f"dockerd back -> serving again: {took:.2f}s")
    assert took < 3.0  # reconnected within a second, then the container's own start
    assert st["instance"]["id"] == cid  # same container, started again
    assert st["restarts_by_reason"] == {"engine-outage": 1}, sup.logs(80)
    assert st["consecutive_failures"] == 0 and st["recent_failures"] == 0
    events = [e["event"] for e in st["recent_events"]]
    assert "runtime.disconnected" in events and "runtime.reconnected" in events, events



# ---- busy is not hung ----------------------------------------------------------------------


def test_a_long_prompt_is_busy_not_hung(proc_sup, models: Path) -> None:
    # A bigger "tiny" model with a long trained context: a prompt of thousands of tokens takes
    # many seconds, much longer than the model probe's timeout below.
    write_tiny_llama(models / "long.gguf", seed=7, name="long", context_length=32768,
                     n_layer=4, n_embd=256, n_head=4, n_ff=768)
    sup = proc_sup({"long": "long.gguf"},
                   health={**DEFAULT_LIVENESS, "model_interval": 0.5, "model_timeout": 1.0,
                           "model_failure_threshold": 1, "model_restarts": 1})
    sup.config_file.write_text("- name: long\n  context_size: 16384\n  parameters:\n"
                               "    model: long.gguf\n    max_tokens: 4\n")
    sup.start()
    sup.wait_running()
    wait_chat(sup.server_url, "long")  # loaded: from now on it is probed every 0.5 s
    prompt = " ".join(f"word{i % 97}" for i in range(1400))  # ~9,000 byte tokens
    t0 = time.monotonic()
    code, body = chat(sup.server_url, "long", max_tokens=4, timeout=300, content=prompt)
    took = time.monotonic() - t0
    assert code == 200, body
    # A probe that timed out during the prompt reports once it has seen the model progress.
    deadline = time.monotonic() + 15
    skipped: list[str] = []
    while not skipped and time.monotonic() < deadline:
        skipped = [line for line in sup.logs(2000).splitlines() if "busy, not hung" in line]
        time.sleep(0.2)
    st = sup.status()
    print(f"long prompt answered in {took:.1f}s; {len(skipped)} probe(s) found it busy")
    assert took > 3.0, "the prompt was too quick to test anything"
    assert skipped, "no probe ran into the busy model: the test proved nothing"
    assert st["restarts"] == 0 and st["model_restarts"] == 0, st
    long = next(m for m in st["models"] if m["name"] == "long")
    assert long["health"] != "failed" and long["restarts"] == 0, long
