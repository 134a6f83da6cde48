"""The supervisor as an unprivileged user (as its systemd unit runs it), with a directory under
the models dir it may not read: reported once, and config edits are still seen.

Root reads everything, so this runs the real daemon as ``nobody`` (setpriv), from a copy of
the llama-server build and a state dir it owns, all under a directory ``nobody`` can reach.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from supervised import model_entry, toml_value
from testbed import free_port, http_json, log_tail

pytestmark = pytest.mark.integration

NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]


def _python_for_nobody() -> str:
    """An interpreter ``nobody`` may run: the test's own, unless it lives under /root."""
    mine = os.path.realpath(sys.executable)
    if not mine.startswith("/root/"):
        return mine
    system = shutil.which("python3", path="/usr/bin")
    if system is None:
        pytest.skip("no interpreter outside /root that an unprivileged user may run")
    version = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    if version != str(tuple(sys.version_info[:2])):
        pytest.skip(f"{system} is Python {version}, the venv's packages are for another")
    return system


@pytest.fixture
def base() -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the daemon as another user")
    path = Path(tempfile.mkdtemp(prefix="lsv-nobody-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["pkill", "-KILL", "-u", str(NOBODY), "-f", str(path)], check=False)
        (path / "models" / "secret").chmod(0o700)
        shutil.rmtree(path, ignore_errors=True)


def test_unreadable_models_subdir_is_reported_once_and_edits_still_apply(
        base: Path, llama_server_dir: Path, tiny_models: Path) -> None:
    python = _python_for_nobody()
    shutil.copytree(llama_server_dir, base / "bin", symlinks=True)
    models = base / "models"
    models.mkdir()
    for name in ("tiny-a.gguf", "tiny-b.gguf"):
        shutil.copy(tiny_models / name, models / name)
    config = base / "config" / "config.yaml"
    config.parent.mkdir()
    config.write_text(model_entry("tiny-a", "tiny-a.gguf"))
    status_port, server_port = free_port(), free_port()
    settings = {
        "supervisor": {"state_dir": str(base / "state"), "control_socket": str(base / "c.sock"),
                       "status_api": f"127.0.0.1:{status_port}", "log_format": "json"},
        "server": {"engine": "llama-server", "runtime": "process",
                   "model_config_file": str(config), "models_dir": str(models),
                   "listen_host": "127.0.0.1", "listen_port": server_port,
                   "publish_host": "127.0.0.1", "publish_port": server_port, "threads": 2},
        "process": {"binary": str(base / "bin" / "llama-server")},
        "health": {"interval": 1.0},
        "watch": {"debounce_ms": 300, "settle_seconds": 0.0},
    }
    toml = base / "supervisor.toml"
    toml.write_text("\n".join(f"[{section}]\n" + "".join(
        f"{k} = {toml_value(v)}\n" for k, v in values.items())
        for section, values in settings.items()))
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(base)], check=True)
    (models / "secret").mkdir(mode=0o700)  # root's, unreadable to nobody
    log_path = base / "supervisor.log"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(base),
           "PYTHONPATH": os.pathsep.join([str(REPO), sysconfig.get_paths()["purelib"]])}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python,
             "-c", "from supervisor.cli import daemon_main; daemon_main()",
             "--config", str(toml)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def status() -> dict[str, object] | None:
        try:
            code, body = http_json("GET", f"http://127.0.0.1:{status_port}/status", timeout=2)
        except OSError:
            return None
        return body if code == 200 and isinstance(body, dict) else None

    def wait(pred: object, what: str, timeout: float = 60) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"daemon exited:\n{log_tail(log_path)}"
            st = status()
            if st is not None and pred(st):  # type: ignore[operator]
                return st
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{log_tail(log_path)}")

    try:
        wait(lambda s: s["state"] == "RUNNING", "RUNNING")
        config.write_text(model_entry("tiny-a", "tiny-a.gguf")
                          + model_entry("tiny-b", "tiny-b.gguf"))
        st = wait(lambda s: s["state"] == "RUNNING" and len(s["models"]) == 2
                  and s["restarts"] == 1, "the edit applied")
        assert {m["name"] for m in st["models"]} == {"tiny-a", "tiny-b"}  # type: ignore[attr-defined]
        time.sleep(2.5)  # a few watch cycles: an error would repeat every second
    finally:
        proc.terminate()
        proc.wait(30)
    events = [json.loads(line) for line in log_path.read_text().splitlines()
              if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds.count("watch.unreadable") == 1, kinds
    unreadable = next(e for e in events if e["event"] == "watch.unreadable")
    assert unreadable["paths"] == [str(models / "secret")]
    assert "watch.error" not in kinds, [e for e in events if e["event"] == "watch.error"]
    assert proc.returncode == 0
