"""The docker runtime against Podman's Docker-compatible API (podman system service)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from podman_service import PodmanService
from supervised import Supervised, wait_chat
from testbed import SCRIPTS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def podman(llama_server_dir: Path) -> Iterator[tuple[PodmanService, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the test starts its own podman service")
    if shutil.which("podman") is None:
        pytest.skip("podman not installed (apt-get install podman runc)")
    svc = PodmanService.start()
    try:
        out = subprocess.run(
            [sys.executable, str(SCRIPTS / "build_image.py"), "--llama-dir",
             str(llama_server_dir), "--docker-host", svc.host],
            check=True, stdout=subprocess.PIPE, text=True, env=svc.env)
        yield svc, out.stdout.strip().splitlines()[-1]
    finally:
        svc.stop()


def test_start_kill_restart_adopt_on_podman(podman: tuple[PodmanService, str],
                                            tiny_models: Path, tmp_path: Path) -> None:
    svc, image = podman
    sup = Supervised.create(
        tmp_path / "sup", tiny_models, {"tiny-a": "tiny-a.gguf"},
        server={"runtime": "docker", "listen_port": 8080},
        docker={"host": svc.host, "image": image, "container_name": "lsv-podman",
                "gpus": "none"},
    )
    try:
        sup.start()
        cid = sup.wait_running()["instance"]["id"]
        wait_chat(sup.server_url, "tiny-a")
        t0 = time.monotonic()
        subprocess.run(["docker", "-H", svc.host, "kill", "lsv-podman"], check=True,
                       capture_output=True)
        sup.wait_for(lambda s: s["restarts"] == 1 and s["state"] == "RUNNING",
                     what="restart after kill")
        wait_chat(sup.server_url, "tiny-a")
        print(f"podman kill -> serving again: {time.monotonic() - t0:.2f}s")
        sup.kill()
        sup.start()
        st = sup.wait_running()
        assert st["instance"]["id"] == cid
        assert st["restarts"] == 0
    finally:
        sup.close()
