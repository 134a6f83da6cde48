"""The systemd protocol (Type=notify) spoken to a real datagram socket, as systemd would read it.

Uses the process runtime (no container engine needed) and a NOTIFY_SOCKET bound by the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from supervised import Supervised

pytestmark = pytest.mark.integration


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, needle: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.messages:
                if needle in msg:
                    self.messages.remove(msg)
                    return msg
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())
        raise AssertionError(f"no {needle!r} notification within {timeout}s: {self.messages}")


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    yield sock
    sock.sock.close()


@pytest.fixture
def supervised(make_process_supervised) -> Supervised:
    return make_process_supervised({"tiny-a": "tiny-a.gguf"})


def test_ready_status_watchdog_reload_stopping(notify: NotifySocket, supervised: Supervised,
                                               ) -> None:
    sup = supervised.start()
    # The start is extended by the supervisor's own deadline until the server serves; READY=1
    # comes with it (systemctl start returns when requests are answered).
    extend = notify.wait_for("EXTEND_TIMEOUT_USEC=")
    assert int(extend.split("=")[1]) > 60e6
    ready = notify.wait_for("READY=1")
    assert "STATUS=RUNNING" in ready and "models ready 1/1" in ready, ready
    notify.wait_for("WATCHDOG=1", timeout=5)
    notify.wait_for("WATCHDOG=1", timeout=5)
    sup.signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1")
    assert "MONOTONIC_USEC=" in reloading
    notify.wait_for("READY=1")
    sup.signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1")
    assert sup.proc is not None and sup.proc.wait(30) == 0


def test_invalid_config_at_start_fails_without_ready(notify: NotifySocket,
                                                     supervised: Supervised) -> None:
    supervised.config_file.write_text("- name: tiny-a\n  context_size: huge\n")
    sup = supervised.start()
    assert sup.proc is not None
    assert sup.proc.wait(30) == 2
    log = sup.logs()
    assert "config.rejected" in log and "context_size" in log and '"line": 2' in log, log
    assert not any("READY=1" in m for m in notify.messages)
    with pytest.raises(AssertionError):
        notify.wait_for("READY=1", timeout=0.5)


def test_control_socket_mode_is_0660(supervised: Supervised) -> None:
    sup = supervised.start()
    sup.wait_running()
    assert os.stat(sup.socket).st_mode & 0o777 == 0o660
