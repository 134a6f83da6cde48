"""The supervisor against a real dockerd and the real llama-server image (router mode).

Each test runs the real ``localai-supervisor`` console script as a subprocess with its own
settings, container name and ports, and checks what an operator would check.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from supervised import wait_chat
from testbed import Dockerd, chat

pytestmark = pytest.mark.integration

def container(dockerd: Dockerd, status: dict[str, object]) -> object:
    inst = status["instance"]
    assert isinstance(inst, dict)
    return dockerd.client().containers.get(inst["id"])


def started_at(dockerd: Dockerd, cid: str) -> str:
    return str(dockerd.client().api.inspect_container(cid)["State"]["StartedAt"])


def test_starts_container_and_serves_two_models(make_supervised, dockerd: Dockerd) -> None:
    sup = make_supervised({"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"}).start()
    st = sup.wait_running()
    cont = container(dockerd, st)
    labels = cont.labels
    assert labels["io.localai-supervisor.managed"] == "true"
    assert labels["io.localai-supervisor.spec"] == st["config"]["spec"]
    for model in ("tiny-a", "tiny-b"):
        code, body = chat(sup.server_url, model)
        assert code == 200, body
        assert body["model"] == model or body.get("choices")
    st = sup.wait_for(lambda s: all(m["listed"] for m in s["models"]), what="models listed")
    assert {m["name"] for m in st["models"]} == {"tiny-a", "tiny-b"}
    out = sup.ctl("status")
    assert out.returncode == 0, out.stderr
    assert "RUNNING" in out.stdout and "tiny-b" in out.stdout


def test_docker_kill_is_restarted_and_serves_again(make_supervised, dockerd: Dockerd,
                                                   record_property) -> None:
    sup = make_supervised().start()
    st = sup.wait_running()
    cid = st["instance"]["id"]
    before = started_at(dockerd, cid)
    wait_chat(sup.server_url, "tiny-a")
    t0 = time.monotonic()
    dockerd.client().containers.get(cid).kill()
    st = sup.wait_for(lambda s: s["restarts"] >= 1 and s["state"] == "RUNNING",
                      what="restart after docker kill")
    serving = wait_chat(sup.server_url, "tiny-a") + (time.monotonic() - t0)
    record_property("docker_kill_to_serving_s", round(time.monotonic() - t0, 3))
    print(f"docker kill -> serving again: {time.monotonic() - t0:.2f}s ({serving:.2f})")
    assert started_at(dockerd, st["instance"]["id"]) != before
    assert any(e["event"] == "server.failed" and "137" in e["detail"]
               for e in st["recent_events"]), st["recent_events"]


def test_config_edit_adding_a_model_restarts_onto_it(make_supervised, record_property) -> None:
    sup = make_supervised().start()
    st = sup.wait_running()
    rev = st["config"]["revision"]
    t0 = time.monotonic()
    sup.write_config({"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"})
    sup.wait_for(lambda s: s["config"]["revision"] != rev, what="new revision")
    waited = wait_chat(sup.server_url, "tiny-b", timeout=60)
    total = time.monotonic() - t0
    record_property("config_edit_to_new_model_s", round(total, 3))
    print(f"config edit -> new model answers: {total:.2f}s (last {waited:.2f}s polling chat)")
    st = sup.wait_running()
    assert st["restarts"] == 1
    assert [m["name"] for m in st["models"]] == ["tiny-a", "tiny-b"]


def test_touch_or_comment_only_edit_does_not_restart(make_supervised, dockerd: Dockerd) -> None:
    sup = make_supervised().start()
    st = sup.wait_running()
    cid, rev = st["instance"]["id"], st["config"]["revision"]
    checks = st["config"]["checks"]
    before = started_at(dockerd, cid)
    (sup.config_file.parent / "notes.txt~").write_text("editor backup")
    (sup.models_dir / ".tiny-c.gguf.part").write_bytes(b"GGUF partial")
    os.utime(sup.config_file)
    sup.write_config({"tiny-a": "tiny-a.gguf"}, header="# only a comment changed\n")
    try:
        # The watcher reports the batch, the check runs and concludes: nothing to do.
        st = sup.wait_for(lambda s: s["config"]["checks"] > checks, timeout=10,
                          what="the check of the edited files")
        assert st["config"]["last_check"] == "unchanged", st["config"]
    finally:
        (sup.models_dir / ".tiny-c.gguf.part").unlink()
    assert st["state"] == "RUNNING"
    assert st["instance"]["id"] == cid
    assert st["config"]["revision"] == rev
    assert st["restarts"] == 0
    assert started_at(dockerd, cid) == before


def test_invalid_edit_keeps_the_server_running(make_supervised, dockerd: Dockerd) -> None:
    sup = make_supervised().start()
    st = sup.wait_running()
    cid = st["instance"]["id"]
    sup.config_file.write_text("- name: tiny-a\n  parameters: [unclosed\n")
    st = sup.wait_for(lambda s: s["config"]["rejected"] is not None, what="rejection")
    error = st["config"]["rejected"]["errors"][0]
    assert "config.yaml:" in error and "invalid YAML" in error, error
    out = sup.ctl("status")
    assert "REJECTED" in out.stdout, out.stdout
    assert st["instance"]["id"] == cid and st["state"] == "RUNNING"
    wait_chat(sup.server_url, "tiny-a")
    sup.write_config({"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"})
    sup.wait_for(lambda s: s["config"]["rejected"] is None and s["restarts"] == 1
                 and s["state"] == "RUNNING", what="next valid edit applied")
    wait_chat(sup.server_url, "tiny-b")


def test_sigkilled_supervisor_adopts_its_container(make_supervised, dockerd: Dockerd) -> None:
    sup = make_supervised().start()
    st = sup.wait_running()
    cid = st["instance"]["id"]
    before = started_at(dockerd, cid)
    sup.kill()
    sup.start()
    st = sup.wait_running()
    assert st["instance"]["id"] == cid
    assert st["restarts"] == 0
    assert started_at(dockerd, cid) == before
    assert any(e["event"] == "server.adopted" for e in st["recent_events"])
    wait_chat(sup.server_url, "tiny-a")


def test_changed_spec_while_down_recreates_container(make_supervised, dockerd: Dockerd) -> None:
    sup = make_supervised().start()
    cid = sup.wait_running()["instance"]["id"]
    sup.kill()
    sup.write_config({"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"})
    sup.start()
    st = sup.wait_running()
    assert st["instance"]["id"] != cid
    wait_chat(sup.server_url, "tiny-b")


def test_sigterm_stops_the_container_and_exits_zero(make_supervised, dockerd: Dockerd) -> None:
    sup = make_supervised().start()
    cid = sup.wait_running()["instance"]["id"]
    sup.signal(signal.SIGTERM)
    assert sup.proc is not None
    assert sup.proc.wait(30) == 0, sup.logs()
    assert dockerd.client().api.inspect_container(cid)["State"]["Running"] is False


def test_on_stop_leave_keeps_the_container(make_supervised, dockerd: Dockerd) -> None:
    sup = make_supervised(supervisor={"on_stop": "leave"}).start()
    cid = sup.wait_running()["instance"]["id"]
    assert sup.stop() == 0
    assert dockerd.client().api.inspect_container(cid)["State"]["Running"] is True
    sup.start()
    assert sup.wait_running()["instance"]["id"] == cid


def test_supervisorctl_restart_and_reload(make_supervised, dockerd: Dockerd) -> None:
    sup = make_supervised().start()
    st = sup.wait_running()
    before = started_at(dockerd, st["instance"]["id"])
    out = sup.ctl("restart")
    assert out.returncode == 0, out.stderr
    st = sup.wait_for(lambda s: s["restarts"] == 1 and s["state"] == "RUNNING", what="restart")
    assert started_at(dockerd, st["instance"]["id"]) != before
    out = sup.ctl("reload")
    assert out.returncode == 0 and "unchanged" in out.stdout, (out.stdout, out.stderr)
    sup.config_file.write_text("- name: [")
    out = sup.ctl("reload")
    assert out.returncode == 1 and "invalid YAML" in out.stderr, (out.stdout, out.stderr)


def test_image_missing_gives_up_at_once(make_supervised) -> None:
    sup = make_supervised(docker={"image": "no-such-image:1"}).start()
    st = sup.wait_for(lambda s: s["state"] == "FATAL", what="FATAL")
    assert "not found" in (st["reason"] or ""), st
    assert st["restarts"] == 0  # retrying cannot bring the image: no retries
    assert any("retrying cannot help" in e["detail"] for e in st["recent_events"]), st
    out = sup.ctl("status")
    assert out.returncode == 1 and "FATAL" in out.stdout


class SocketProxy:
    """A unix-socket forwarder in front of dockerd that the test can cut and restore."""

    def __init__(self, path: Path, target: str) -> None:
        self.path, self.target = path, target
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.path.unlink(missing_ok=True)
        listener.bind(str(self.path))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        """The engine 'goes away': listener and every open connection are cut."""
        if self._listener is not None:
            self._listener.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
                c.close()
        self._conns.clear()
        self.path.unlink(missing_ok=True)


def test_engine_going_away_is_reported_and_reconnected(make_supervised, dockerd: Dockerd,
                                                       tmp_path: Path) -> None:
    proxy = SocketProxy(tmp_path / "proxy.sock", dockerd.host.removeprefix("unix://"))
    sup = make_supervised(docker={"host": f"unix://{proxy.path}",
                                  "reconnect_max_delay": 1.0}).start()
    cid = sup.wait_running()["instance"]["id"]
    proxy.down()
    st = sup.wait_for(lambda s: s["runtime_connected"] is False, timeout=30,
                      what="disconnect reported")
    assert st["state"] == "RUNNING"  # the server itself is fine: nothing is restarted
    wait_chat(sup.server_url, "tiny-a")
    dockerd.client().containers.get(cid).kill()  # dies while the supervisor cannot see events
    proxy.up()
    st = sup.wait_for(lambda s: s["runtime_connected"] and s["restarts"] == 1
                      and s["state"] == "RUNNING", timeout=60, what="reconnect + restart")
    assert any(e["event"] == "runtime.disconnected" for e in st["recent_events"])
    wait_chat(sup.server_url, "tiny-a")


def test_logs_shows_and_follows_the_containers_log(make_supervised) -> None:
    from supervised import following

    sup = make_supervised().start()
    sup.wait_running()
    recent = sup.ctl("logs", "-n", "50")
    assert recent.returncode == 0 and recent.stdout.strip(), recent
    with following(sup, "logs", "-f", "-n", "0") as until:
        time.sleep(1.5)  # attached (docker's follow starts from the current second)
        assert chat(sup.server_url, "tiny-a")[0] == 200
        until(lambda line: "prompt eval" in line or "chat/completions" in line)


def _may_raise_memlock() -> bool:
    """Whether this host's processes (the bench's dockerd among them) hold CAP_SYS_RESOURCE,
    which lifting a memlock limit past its hard value needs."""
    status = Path("/proc/self/status").read_text()
    eff = int(re.search(r"CapEff:\s*([0-9a-f]+)", status).group(1), 16)  # type: ignore[union-attr]
    return bool(eff >> 24 & 1)


def test_a_model_with_mmlock_gets_unlimited_locked_memory_or_says_why_not(
        make_supervised, dockerd: Dockerd) -> None:
    """Docker's default memlock limit (8 MiB) makes mlock of a real model's weights fail:
    with mmlock on a model, the container gets --ulimit memlock=-1. Where the engine may not
    grant it (no CAP_SYS_RESOURCE, as on this test bench), the supervisor gives up at once
    and says why, instead of a crash loop."""
    from supervised import model_entry

    sup = make_supervised()
    sup.config_file.write_text(model_entry("tiny-a", "tiny-a.gguf") + "  mmlock: true\n")
    sup.start()
    if not _may_raise_memlock():
        st = sup.wait_for(lambda s: s["state"] == "FATAL", 60, "FATAL")
        assert "mmlock: true" in st["reason"] and "CAP_SYS_RESOURCE" in st["reason"]
        assert [e for e in st["recent_events"] if e["event"] == "server.failed"] == []
        return
    st = sup.wait_running()
    info = dockerd.client().api.inspect_container(st["instance"]["id"])
    assert {"Name": "memlock", "Soft": -1, "Hard": -1} in info["HostConfig"]["Ulimits"]
    limits = Path(f"/proc/{info['State']['Pid']}/limits").read_text()
    assert re.search(r"Max locked memory\s+unlimited\s+unlimited", limits), limits
    wait_chat(sup.server_url, "tiny-a")
    # Without mmlock the container keeps Docker's default.
    sup.write_config({"tiny-a": "tiny-a.gguf"})
    st = sup.wait_for(lambda s: s["instance"] and s["instance"]["id"] != info["Id"]
                      and s["state"] == "RUNNING", what="restart without mmlock")
    again = dockerd.client().api.inspect_container(st["instance"]["id"])
    assert not again["HostConfig"].get("Ulimits")


def test_the_localai_version_is_read_from_the_image_label(dockerd: Dockerd,
                                                          llama_image: str) -> None:
    """LocalAI's release images carry docker/metadata-action's version label: read before
    the first start (no container is run for it)."""
    from supervisor.runtime import program_version
    from supervisor.settings import DockerSection, Engine, RuntimeKind, ServerSection, Settings
    from supervisor.versions import VersionSource

    client = dockerd.client()
    made = client.containers.create(llama_image, command=["--version"])
    try:
        made.commit(repository="lsv-test-labelled", tag="v1", changes=[
            "LABEL org.opencontainers.image.version=v4.9.0-gpu-nvidia-cuda-12"])
    finally:
        made.remove()

    def version_of(image: str) -> tuple[str, VersionSource] | None:
        return program_version(Settings(
            server=ServerSection(runtime=RuntimeKind.DOCKER, engine=Engine.LOCALAI),
            docker=DockerSection(host=dockerd.host, image=image)))

    assert version_of("lsv-test-labelled:v1") == ("v4.9.0-gpu-nvidia-cuda-12",
                                                  VersionSource.IMAGE_LABEL)
    assert version_of(llama_image) is None  # no label
    assert version_of("no-such-image:x") is None
    client.images.remove("lsv-test-labelled:v1")
