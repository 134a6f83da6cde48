"""`supervisorctl stop` and `start` end to end: the real daemon, its socket, llama-server."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from supervised import Supervised, model_entry
from testbed import chat

pytestmark = pytest.mark.integration


def test_stop_survives_a_config_change_and_a_supervisor_restart_until_start(
        make_process_supervised: Callable[..., Supervised]) -> None:
    sup = make_process_supervised({"tiny-a": "tiny-a.gguf"}, gateway={"enabled": True})
    sup.start()
    sup.wait_running()
    out = sup.ctl("stop")
    assert out.returncode == 0 and "stop requested" in out.stdout, out
    st = sup.wait_for(lambda s: s["state"] == "STOPPED", 30, "STOPPED")
    assert st["maintenance"] is True
    shown = sup.ctl("status")
    assert shown.returncode == 1 and "maintenance" in shown.stdout
    # The gateway says why, at once.
    code, body = chat(sup.gateway_url, "tiny-a")
    assert code == 503 and body["error"]["code"] == "server-down"
    # A config change does not start it; nor does a restart of the supervisor.
    sup.write_config({"tiny-a": "tiny-a.gguf"}, header="# edited\n")
    sup.config_file.write_text(model_entry("tiny-a", "tiny-a.gguf", ctx=2048))
    sup.wait_for(lambda s: s["config"]["checks"] >= 2, 30, "the edit checked")
    assert sup.status()["state"] == "STOPPED"
    assert sup.stop() == 0
    sup.start()
    st = sup.wait_for(lambda s: s["state"] == "STOPPED" and s["maintenance"], 30,
                      "still in maintenance after the supervisor's restart")
    out = sup.ctl("--json", "start")
    assert out.returncode == 0 and json.loads(out.stdout)["ok"] is True
    sup.wait_running()
    assert chat(sup.gateway_url, "tiny-a")[0] == 200
    assert sup.status()["maintenance"] is False


def test_models_lists_each_models_file_and_header_facts(
        make_process_supervised: Callable[..., Supervised]) -> None:
    sup = make_process_supervised({"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"})
    sup.start()
    sup.wait_running()
    piped = sup.ctl("models")
    assert piped.returncode == 0, piped
    rows = [line.split("\t") for line in piped.stdout.splitlines()]
    assert rows[0] == ["MODEL", "FILE", "SIZE", "ARCH", "CONTEXT", "TRAINED", "QUANT",
                       "LOADED", "HEALTH"]
    a = next(r for r in rows if r[0] == "tiny-a")
    assert a[1] == "tiny-a.gguf" and a[3] == "llama" and a[4] == "1024"
    assert a[2].endswith(("KiB", "MiB")) and a[6] != "-"
    as_json = json.loads(sup.ctl("models", "--json").stdout)
    assert [m["name"] for m in as_json] == ["tiny-a", "tiny-b"]
    assert as_json[0]["architecture"] == "llama" and as_json[0]["trained_context"]


def test_events_shows_recent_events_and_follows_new_ones(
        make_process_supervised: Callable[..., Supervised]) -> None:
    import time

    from supervised import following

    sup = make_process_supervised({"tiny-a": "tiny-a.gguf"})
    sup.start()
    sup.wait_running()
    recent = sup.ctl("events", "-n", "1000")
    assert recent.returncode == 0
    assert " supervisor.started " in recent.stdout and " server.ready " in recent.stdout
    as_json = [json.loads(line) for line in sup.ctl("events", "--json").stdout.splitlines()]
    assert as_json and all({"event", "level", "timestamp"} <= set(e) for e in as_json)
    with following(sup, "events", "-f", "-n", "0", "--json") as until:
        time.sleep(0.5)
        assert sup.ctl("restart").returncode == 0
        seen: list[str] = []

        def saw(line: str) -> bool:
            seen.append(json.loads(line)["event"])
            return seen[-1] == "server.ready"

        until(saw)
        assert "server.state" in seen and "server.launched" in seen


def test_logs_shows_the_servers_log_and_follows_it(
        make_process_supervised: Callable[..., Supervised]) -> None:
    from supervised import following
    from testbed import chat

    sup = make_process_supervised({"tiny-a": "tiny-a.gguf"})
    sup.start()
    sup.wait_running()
    recent = sup.ctl("logs", "-n", "200")
    assert recent.returncode == 0 and "llama" in recent.stdout.lower(), recent
    assert len(sup.ctl("logs", "-n", "5").stdout.splitlines()) == 5
    with following(sup, "logs", "-f", "-n", "0") as until:
        assert chat(sup.server_url, "tiny-a")[0] == 200  # the server logs the request
        until(lambda line: "prompt eval" in line or "chat/completions" in line)


def test_version_and_one_models_status(
        make_process_supervised: Callable[..., Supervised]) -> None:
    sup = make_process_supervised({"tiny-a": "tiny-a.gguf"})
    sup.start()
    sup.wait_running()
    version = json.loads(sup.ctl("version", "--json").stdout)
    assert version["engine"] == "llama-server" and version["supervisor"]
    assert version["engine_version"] == "b0-unknown"  # /props' build_info of this build
    one = sup.ctl("status", "tiny-a")
    assert one.returncode == 0 and "tiny-a.gguf" in one.stdout, one
    missing = sup.ctl("status", "nosuch")
    assert missing.returncode == 2 and "no model 'nosuch'" in missing.stderr


def test_logs_of_one_model_are_its_childs_lines_in_the_routers_log(
        make_process_supervised: Callable[..., Supervised]) -> None:
    from testbed import chat

    sup = make_process_supervised({"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"})
    sup.start()
    sup.wait_running()
    assert chat(sup.server_url, "tiny-a")[0] == 200
    assert chat(sup.server_url, "tiny-b")[0] == 200
    a = sup.ctl("logs", "tiny-a", "-n", "500")
    assert a.returncode == 0, a
    assert "name=tiny-a" in a.stdout and "tiny-a.gguf" in a.stdout
    assert "name=tiny-b" not in a.stdout and "tiny-b.gguf" not in a.stdout
    missing = sup.ctl("logs", "nosuch")
    assert missing.returncode == 2 and "no model 'nosuch'" in missing.stderr
