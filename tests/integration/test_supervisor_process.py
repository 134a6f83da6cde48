"""The process runtime (llama-server as a child process group, no container engine)."""

from __future__ import annotations

import json
import os
import signal
import time

import jsonschema
import pytest
from supervised import Supervised, wait_chat
from testbed import http_json

from supervisor.status import OPENAPI_FILE

pytestmark = pytest.mark.integration


@pytest.fixture
def supervised(make_process_supervised) -> Supervised:
    return make_process_supervised({"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_serve_crash_restart(supervised: Supervised) -> None:
    sup = supervised.start()
    st = sup.wait_running()
    pid = st["instance"]["pid"]
    for model in ("tiny-a", "tiny-b"):
        wait_chat(sup.server_url, model)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    st = sup.wait_for(lambda s: s["restarts"] == 1 and s["state"] == "RUNNING",
                      what="restart after SIGKILL")
    wait_chat(sup.server_url, "tiny-a")
    print(f"process SIGKILL -> serving again: {time.monotonic() - t0:.2f}s")
    assert st["instance"]["pid"] != pid
    assert any("killed by SIGKILL" in e["detail"] for e in st["recent_events"])


def test_hung_server_is_detected_and_replaced(supervised: Supervised) -> None:
    sup = supervised.start()
    pid = sup.wait_running()["instance"]["pid"]
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)  # the socket still accepts; nothing answers
    try:
        st = sup.wait_for(lambda s: s["restarts"] == 1 and s["state"] == "RUNNING",
                          timeout=90, what="restart of the hung server")
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGCONT)
    print(f"process SIGSTOP -> serving again: {time.monotonic() - t0:.2f}s")
    assert st["instance"]["pid"] != pid
    assert not _alive(pid)
    assert any("liveness" in e["detail"] for e in st["recent_events"]), st["recent_events"]


def test_sigterm_stops_the_whole_process_group(supervised: Supervised) -> None:
    sup = supervised.start()
    pid = sup.wait_running()["instance"]["pid"]
    wait_chat(sup.server_url, "tiny-a")  # the router now has a per-model child too
    assert sup.stop() == 0
    assert not _alive(pid)
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pid]
    assert leftovers == []


def test_sigkilled_supervisor_leaves_no_orphan_server(supervised: Supervised) -> None:
    sup = supervised.start()
    pid = sup.wait_running()["instance"]["pid"]
    sup.kill()
    sup.start()
    st = sup.wait_running()
    assert st["instance"]["pid"] != pid
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_status_api_and_control_socket_answer_the_documented_schema(supervised: Supervised
                                                                    ) -> None:
    sup = supervised.start()
    sup.wait_running()
    code, doc = http_json("GET", f"http://127.0.0.1:{sup.status_port}/openapi.json")
    assert code == 200 and doc == json.loads(OPENAPI_FILE.read_text())
    schema = {"$ref": "#/components/schemas/Status", "components": doc["components"]}
    jsonschema.validate(sup.status(), schema)
    out = sup.ctl("status", "--json")
    assert out.returncode == 0, out.stderr
    jsonschema.validate(json.loads(out.stdout), schema)
    reload = sup.ctl("reload", "--json")
    jsonschema.validate(json.loads(reload.stdout), {
        "$ref": "#/components/schemas/ReloadResult", "components": doc["components"]})
