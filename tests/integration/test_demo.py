"""The README's first command: the embedded default (process runtime, two tiny models) runs,
prints its status and answers a chat completion from each model through the gateway."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from supervised import BIN
from testbed import free_port

pytestmark = pytest.mark.integration


def test_the_demo_serves_both_models_through_the_gateway_and_stops(
        llama_server_dir: Path, tmp_path: Path) -> None:
    port, status_port = free_port(), free_port()
    out = subprocess.run(
        [str(BIN / "localai-supervisor"), "demo", "--once", "--dir", str(tmp_path),
         "--port", str(port), "--status-port", str(status_port)],
        capture_output=True, text=True, timeout=180, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "=== supervisorctl status ===" in text and "state     RUNNING" in text
    assert f"gateway   127.0.0.1:{port} -> " in text
    for model in ("tiny-a", "tiny-b"):
        assert f"=== chat completion from {model}" in text
    assert "HTTP " not in text.split("=== chat completion from tiny-a")[1][:200]
    assert f"The gateway answers at http://127.0.0.1:{port}/v1/chat/completions" in text
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "models" / "tiny-b.gguf").exists()
