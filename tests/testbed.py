"""The integration bench: a private dockerd, llama-server presets and small HTTP helpers.

Kept apart from conftest.py so tests can import the helpers directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def http_json(
    method: str, url: str, body: Mapping[str, Any] | None = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """(status, decoded JSON or text); HTTP errors are answers here, not exceptions."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_healthy(
    base_url: str, timeout: float, alive: Callable[[], bool], logs: Callable[[], str]
) -> float:
    """Poll ``GET /health`` until 200; returns seconds waited. Fails fast if the server died."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"llama-server exited before /health answered:\n{logs()}")
        with contextlib.suppress(OSError):
            status, _ = http_json("GET", f"{base_url}/health", timeout=2)
            if status == 200:
                return time.monotonic() - start
        time.sleep(0.1)
    raise TimeoutError(f"{base_url}/health not 200 after {timeout:.0f}s:\n{logs()}")


def chat(base_url: str, model: str, max_tokens: int = 8, timeout: float = 120,
         content: str = "hi") -> tuple[int, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    }
    return http_json("POST", f"{base_url}/v1/chat/completions", body, timeout=timeout)


def write_preset(path: Path, models: Mapping[str, str], ctx_size: int = 2048) -> Path:
    """A llama-server router preset INI: one section per model id, keys are CLI long options."""
    lines = ["version = 1", "", "[*]", f"ctx-size = {ctx_size}", ""]
    for name, model in models.items():
        lines += [f"[{name}]", f"model = {model}", ""]
    path.write_text("\n".join(lines))
    return path


def build_image(llama_dir: Path, docker_host: str) -> str:
    """Run scripts/build_image.py (idempotent) against ``docker_host``; returns the tag."""
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "build_image.py"),
            "--llama-dir",
            str(llama_dir),
            "--docker-host",
            docker_host,
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


def llama_server_dir() -> Path:
    """The cached llama-server build (compiled on first use, then returned at once)."""
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "build_llama_server.py")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def _own_bridge() -> str:
    """Create a bridge with a free 10.213.x.0/24 for one dockerd; "" (docker0) if we cannot."""
    name = f"lsvb{os.getpid() % 100000}"
    try:
        routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                                check=True).stdout
        octet = next(n for n in ((os.getpid() + i) % 250 + 1 for i in range(250))
                     if f"10.213.{n}." not in routes)
        subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)
        for cmd in (["link", "add", "name", name, "type", "bridge"],
                    ["addr", "add", f"10.213.{octet}.1/24", "dev", name],
                    ["link", "set", name, "up"]):
            subprocess.run(["ip", *cmd], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return ""
    return name


@dataclass
class Dockerd:
    """A private dockerd with its own socket, data and exec roots, so it never meets another."""

    base: Path
    proc: subprocess.Popen[bytes] | None = None
    _client: docker.DockerClient | None = field(default=None, repr=False)
    # A bridge of its own: private dockerds side by side (a test run next to the bench) would
    # otherwise share docker0 and each give its first container 172.17.0.2, so docker-proxy
    # forwards one run's published port into the other run's container.
    bridge: str = ""

    @property
    def host(self) -> str:
        return f"unix://{self.base}/docker.sock"

    @property
    def log_path(self) -> Path:
        return self.base / "dockerd.log"

    @classmethod
    def start(cls, timeout: float = 60.0) -> Dockerd:
        # Short base: the containerd socket lands at <base>/exec/containerd/containerd.sock
        # and unix socket paths are capped at 108 bytes.
        d = cls(Path(tempfile.mkdtemp(prefix="lsv-", dir="/tmp")))
        d.bridge = _own_bridge()
        try:
            d._launch(timeout)
        except BaseException:
            d.stop()
            raise
        return d

    def _launch(self, timeout: float) -> None:
        base = self.base
        cmd = [
            "dockerd",
            # Leave the host's firewall alone; 127.0.0.1 port publishing then goes
            # through docker-proxy, which is all the tests use.
            "--iptables=false",
            # vfs works on any backing filesystem (overlay-on-overlay does not).
            "--storage-driver=vfs",
            *(["--bridge", self.bridge] if self.bridge else []),
            "--host",
            self.host,
            "--data-root",
            str(base / "data"),
            "--exec-root",
            str(base / "exec"),
            "--pidfile",
            str(base / "docker.pid"),
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = log_tail(self.log_path)
                self.stop()
                raise RuntimeError(f"dockerd exited ({self.proc.returncode}):\n{tail}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                info = subprocess.run(
                    ["docker", "-H", self.host, "info", "--format", "{{.ID}}"],
                    capture_output=True,
                    timeout=5,
                    check=False,
                )
                if info.returncode == 0:
                    return
            time.sleep(0.2)
        tail = log_tail(self.log_path)
        self.stop()
        raise TimeoutError(f"dockerd not answering after {timeout:.0f}s:\n{tail}")

    def restart(self, timeout: float = 60.0, down_for: float = 0.0) -> float:
        """Stop dockerd (its containers stop with it, no live-restore), stay down
        ``down_for`` seconds, and start it again on the same roots: what a `systemctl
        restart docker` (or an `apt upgrade` of docker.io) does to a host. Returns the
        monotonic time at which it answers again."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._client is not None:
            self._client.close()
            self._client = None
        time.sleep(down_for)
        self._launch(timeout)
        return time.monotonic()

    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.host, timeout=120)
        return self._client

    def remove_containers(self) -> None:
        for c in self.client().containers.list(all=True):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)

    def stop(self, grace: float = 20.0) -> None:
        """Remove containers, then SIGTERM dockerd, SIGKILL after ``grace``; delete its files."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(docker.errors.DockerException):
                self.remove_containers()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._client is not None:
            self._client.close()
            self._client = None
        self._kill_orphan_containerd()
        self._unmount_leftovers()
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)

    def _kill_orphan_containerd(self) -> None:
        # dockerd stops the containerd it started, unless dockerd itself was SIGKILLed.
        pidfile = self.base / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)

    def _unmount_leftovers(self) -> None:
        """Lazily unmount anything still mounted under base, so rmtree never descends into it."""
        prefix = f"{self.base}/"
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mnt in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
