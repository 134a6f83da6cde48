"""Run the real ``localai-supervisor`` as a subprocess and talk to it like an operator would."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import chat, free_port, http_json, log_tail

BIN = Path(sys.executable).parent


def model_entry(name: str, filename: str, ctx: int = 1024) -> str:
    return (f"- name: {name}\n  context_size: {ctx}\n  parameters:\n"
            f"    model: {filename}\n    max_tokens: 16\n")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_document(sections: dict[str, dict[str, Any]]) -> str:
    """A settings file: one [section] per entry."""
    return "\n".join(f"[{sec}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in vals.items())
                     for sec, vals in sections.items())


_SOCKET_TRAMPOLINE = """
import os, sys
os.dup2(int(os.environ.pop("GATEWAY_FD")), 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="gateway")
os.execv(sys.argv[1], sys.argv[1:])
"""


@dataclass
class Supervised:
    """One supervisor with its own directory, socket, ports and settings file."""

    base: Path
    models_dir: Path
    settings: dict[str, dict[str, Any]]
    proc: subprocess.Popen[bytes] | None = None
    status_port: int = field(default_factory=free_port)
    server_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)

    @classmethod
    def create(cls, base: Path, models_dir: Path, models: dict[str, str],
               **sections: dict[str, Any]) -> Supervised:
        base.mkdir(parents=True, exist_ok=True)
        (base / "config").mkdir(exist_ok=True)
        sup = cls(base, models_dir, {})
        sup.write_config(models)
        settings: dict[str, dict[str, Any]] = {
            "supervisor": {
                "state_dir": str(base / "state"),
                "control_socket": str(base / "ctl.sock"),
                "status_api": f"127.0.0.1:{sup.status_port}",
                "log_format": "json",
                "log_level": "debug",
            },
            "server": {
                "engine": "llama-server",
                "model_config_file": str(sup.config_file),
                "models_dir": str(models_dir),
                "publish_host": "127.0.0.1",
                "publish_port": sup.server_port,
                "threads": 2,
                "startup_timeout": 60.0,
                "stop_timeout": 5.0,
            },
            "health": {"interval": 1.0, "timeout": 3.0, "failure_threshold": 3},
            "restart": {"backoff_initial": 0.5, "backoff_max": 5.0},
            "watch": {"debounce_ms": 500},
            # Off unless a test asks: the others talk to the server directly. When on, the
            # server keeps server_port (on loopback, behind it) and the gateway takes its own.
            "gateway": {"enabled": False, "listen": f"127.0.0.1:{sup.gateway_port}",
                        "upstream_port": sup.server_port},
        }
        for name, values in sections.items():
            settings.setdefault(name, {}).update(values)
        if settings["server"].get("runtime") == "process":
            settings["server"].setdefault("listen_host", "127.0.0.1")
            settings["server"]["listen_port"] = sup.server_port
        sup.settings = settings
        sup.settings_file.write_text(toml_document(settings))
        return sup

    @property
    def config_file(self) -> Path:
        return self.base / "config" / "config.yaml"

    @property
    def settings_file(self) -> Path:
        return self.base / "supervisor.toml"

    @property
    def log_path(self) -> Path:
        return self.base / "supervisor.log"

    @property
    def socket(self) -> Path:
        return self.base / "ctl.sock"

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def write_config(self, models: dict[str, str], header: str = "") -> None:
        """Write config.yaml the way editors do: a temp file renamed over the old one."""
        tmp = self.config_file.with_name(".config.yaml.swp")
        tmp.write_text(header + "".join(model_entry(n, f) for n, f in models.items()))
        tmp.replace(self.config_file)

    def start(self, listen_socket: socket.socket | None = None) -> Supervised:
        """Start the daemon; with ``listen_socket``, hand it over as systemd does for a
        socket unit (as fd 3, LISTEN_FDS=1, LISTEN_PID = the daemon's own pid)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALAI_SUPERVISOR_")}
        argv = [str(BIN / "localai-supervisor"), "--config", str(self.settings_file)]
        fds: tuple[int, ...] = ()
        if listen_socket is not None:
            fds = (listen_socket.fileno(),)
            env["GATEWAY_FD"] = str(fds[0])
            # This trampoline's pid is the daemon's after exec: what systemd puts in LISTEN_PID.
            argv = [sys.executable, "-c", _SOCKET_TRAMPOLINE, *argv]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                pass_fds=fds,
            )
        return self

    def logs(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def status(self) -> dict[str, Any]:
        code, body = http_json("GET", f"http://127.0.0.1:{self.status_port}/status", timeout=5)
        assert code == 200, body
        assert isinstance(body, dict)
        return body

    def try_status(self) -> dict[str, Any] | None:
        try:
            return self.status()
        except (OSError, AssertionError):
            return None

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60,
                 what: str = "condition") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited ({self.proc.returncode}) while waiting "
                                     f"for {what}:\n{self.logs()}")
            last = self.try_status()
            if last is not None and predicate(last):
                return last
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last status: {last}\n{self.logs()}")

    def wait_running(self, timeout: float = 60) -> dict[str, Any]:
        return self.wait_for(lambda s: s["state"] == "RUNNING", timeout, "RUNNING")

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "supervisorctl"), "-s", str(self.socket), *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, wait; SIGKILL if it hangs (and fail loudly in that case)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"supervisor ignored SIGTERM for {timeout}s:\n{self.logs()}"
            ) from exc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def wait_chat(url: str, model: str, timeout: float = 60) -> float:
    """Seconds until a chat completion to ``model`` answers 200."""
    start = time.monotonic()
    last: object = None
    while time.monotonic() - start < timeout:
        try:
            code, body = chat(url, model, timeout=30)
        except OSError as exc:
            code, body = 0, str(exc)
        if code == 200:
            return time.monotonic() - start
        last = (code, body)
        time.sleep(0.05)
    raise AssertionError(f"{model} did not answer within {timeout}s: {last}")


@contextlib.contextmanager
def following(sup: Supervised, *args: str) -> Iterator[Callable[[Callable[[str], bool]], str]]:
    """``supervisorctl ARGS`` left running (``events -f``, ``logs -f``); yields ``until``,
    which reads its output until a line satisfies the predicate (and returns that line)."""
    proc = subprocess.Popen([str(BIN / "supervisorctl"), "-s", str(sup.socket), *args],
                            stdout=subprocess.PIPE, text=True)

    def until(predicate: Callable[[str], bool], lines: int = 500) -> str:
        assert proc.stdout is not None
        for _ in range(lines):
            line = proc.stdout.readline()
            if predicate(line):
                return line
        raise AssertionError(f"supervisorctl {' '.join(args)}: no such line in {lines}")

    try:
        yield until
    finally:
        proc.terminate()
        proc.wait(10)

