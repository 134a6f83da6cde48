"""Who may command the daemon over its control socket, checked on the peer's credentials
(SO_PEERCRED): root, the daemon's user, or a member of the socket's group. The socket's 0660
mode already keeps others out; here it is widened to 0666, as a misconfiguration would, and
a client runs as ``nobody`` (setpriv, the system's python3: it needs only the stdlib)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from supervised import Supervised

from supervisor.control import peer_allowed

pytestmark = pytest.mark.integration

NOBODY = 65534
CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"GET /v1/status HTTP/1.1\\r\\nHost: supervisor\\r\\nConnection: close\\r\\n\\r\\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
sys.stdout.write(data.decode(errors="replace"))
"""


def as_nobody(socket_path: Path, *groups: int) -> str:
    extra = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    out = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *extra, "/usr/bin/python3",
         "-c", CLIENT, str(socket_path)], capture_output=True, text=True, timeout=30,
        check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_rule() -> None:
    assert peer_allowed(0, set(), 998, 998)  # root
    assert peer_allowed(998, {998}, 998, 0)  # the daemon's own user
    assert peer_allowed(1000, {1000, 27}, 0, 27)  # a member of the socket's group
    assert not peer_allowed(65534, {65534}, 0, 0)


def test_a_peer_outside_the_socket_group_is_refused_even_if_the_mode_lets_it_in(
        make_process_supervised: Callable[..., Supervised], tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to connect as another user")
    sup = make_process_supervised({"tiny-a": "tiny-a.gguf"})
    sup.start()
    sup.wait_for(lambda s: s["state"] in ("STARTING", "RUNNING"), 60, "started")
    for d in (sup.socket.parent, *sup.socket.parents):
        if d == Path("/"):
            break
        os.chmod(d, os.stat(d).st_mode | 0o011)  # let nobody reach the socket file
    os.chmod(sup.socket, 0o666)  # the misconfiguration
    refused = as_nobody(sup.socket)
    assert refused.startswith("HTTP/1.1 403"), refused[:300]
    assert f"uid {NOBODY} may not command the supervisor" in refused
    assert '"control.refused"' in sup.logs(200)
    # A member of the socket's group is let in.
    os.chown(sup.socket, -1, NOBODY)
    allowed = as_nobody(sup.socket, NOBODY)
    assert allowed.startswith("HTTP/1.1 200"), allowed[:300]
