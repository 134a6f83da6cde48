"""Junk sent to the daemon's three HTTP servers (status API, control socket, gateway): each
answers briefly or closes, the daemon keeps serving, and its log stays JSON lines of bounded
length (no traceback, no echo of what was sent)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable

import pytest
from supervised import Supervised

pytestmark = pytest.mark.integration


def send(sock: socket.socket, data: bytes) -> bytes:
    sock.settimeout(5)
    with contextlib.suppress(OSError):  # the server may close as soon as it has seen enough
        sock.sendall(data)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except OSError:
        pass
    sock.close()
    return got


def test_a_megabyte_of_junk_gets_a_short_answer_and_a_bounded_log_line(
        make_process_supervised: Callable[..., Supervised]) -> None:
    sup = make_process_supervised({"tiny-a": "tiny-a.gguf"}, gateway={"enabled": True})
    sup.start()
    sup.wait_for(lambda s: s["state"] == "RUNNING", 60, "RUNNING")
    before = sup.log_path.stat().st_size
    junk = os.urandom(1 << 20)
    long_line = b"GET /" + b"A" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    answers = []
    for port in (sup.status_port, sup.gateway_port):
        for data in (junk, long_line):
            answers.append(send(socket.create_connection(("127.0.0.1", port)), data))
    for data in (junk, long_line):
        unix = socket.socket(socket.AF_UNIX)
        unix.connect(str(sup.socket))
        answers.append(send(unix, data))
    for answer in answers:
        assert len(answer) < 8192, answer[:300]  # a short error (or a closed connection)
    sup.status()  # still answering
    assert (sup.ctl("status")).returncode == 0
    added = sup.log_path.read_bytes()[before:]
    for line in added.splitlines():
        assert len(line) < 2000, line[:300]
        json.loads(line)  # one JSON event per line: no traceback


def test_a_client_that_never_finishes_its_request_is_let_go(
        make_process_supervised: Callable[..., Supervised]) -> None:
    import time

    from supervisor.api import SLOW_CLIENT_SECONDS

    sup = make_process_supervised({"tiny-a": "tiny-a.gguf"})
    sup.start()
    sup.wait_for(lambda s: s["state"] in ("STARTING", "RUNNING"), 60, "started")
    tcp = socket.create_connection(("127.0.0.1", sup.status_port))
    unix = socket.socket(socket.AF_UNIX)
    unix.connect(str(sup.socket))
    started = time.monotonic()
    for sock in (tcp, unix):
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")  # and never the end
        sock.settimeout(SLOW_CLIENT_SECONDS + 5)
    for sock in (tcp, unix):
        assert sock.recv(100) == b""  # closed by the daemon
        sock.close()
    assert time.monotonic() - started < SLOW_CLIENT_SECONDS + 5
    sup.status()  # and it still serves
