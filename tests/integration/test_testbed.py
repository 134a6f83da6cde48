"""Proves the bench: llama-server in router mode answers chats for both tiny models, both as
a container of the minimal image and as a host process."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from testbed import Dockerd, chat, free_port, log_tail, wait_healthy, write_preset

pytestmark = pytest.mark.integration

MODELS = ("tiny-a", "tiny-b")
MOUNT = "/localai/model"
PRESET = "/localai/presets.ini"


def assert_chats(base_url: str) -> None:
    """Each model answers; with --models-max 1 the second request makes the router swap."""
    for model in MODELS:
        started = time.monotonic()
        status, body = chat(base_url, model)
        assert status == 200, body
        assert body["choices"][0]["message"]["role"] == "assistant"
        print(f"testbed: {model} first chat {time.monotonic() - started:.2f}s")


def test_container_answers_both_models(
    dockerd: Dockerd, llama_image: str, tiny_models: Path, tmp_path: Path
) -> None:
    preset = write_preset(tmp_path / "presets.ini", {m: f"{MOUNT}/{m}.gguf" for m in MODELS})
    port = free_port()
    started = time.monotonic()
    container = dockerd.client().containers.run(
        llama_image,
        ["--models-preset", PRESET, "--models-max", "1", "--host", "0.0.0.0", "--port", "8080"],
        detach=True,
        ports={"8080/tcp": ("127.0.0.1", port)},
        volumes={
            str(tiny_models): {"bind": MOUNT, "mode": "ro"},
            str(preset): {"bind": PRESET, "mode": "ro"},
        },
    )
    try:

        def alive() -> bool:
            container.reload()
            return container.status in ("created", "running")

        def logs() -> str:
            return str(container.logs(tail=40).decode(errors="replace"))

        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url, 60, alive, logs)
        print(f"testbed: container start to /health 200 {time.monotonic() - started:.2f}s")
        assert_chats(base_url)
    finally:
        container.remove(force=True)


def test_host_process_answers_both_models(
    llama_server_dir: Path, tiny_models: Path, tmp_path: Path
) -> None:
    preset = write_preset(
        tmp_path / "presets.ini", {m: str(tiny_models / f"{m}.gguf") for m in MODELS}
    )
    port = free_port()
    log_path = tmp_path / "llama-server.log"
    cmd = [
        str(llama_server_dir / "llama-server"),
        "--models-preset", str(preset),
        "--models-max", "1",
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url, 60, lambda: proc.poll() is None, lambda: log_tail(log_path))
        print(f"testbed: host process start to /health 200 {time.monotonic() - started:.2f}s")
        assert_chats(base_url)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
