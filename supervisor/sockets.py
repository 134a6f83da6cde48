"""systemd socket activation: take the gateway's listening socket from ``LISTEN_FDS``.

With ``localai-supervisor.socket`` the kernel socket outlives the daemon: while the supervisor
restarts, clients' connections wait in the listen backlog instead of being refused.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("supervisor.sockets")

SD_LISTEN_FDS_START = 3
GATEWAY_FD_NAME = "gateway"


def inherited_fd(env: Mapping[str, str], pid: int) -> int | None:
    """The descriptor systemd passed for the gateway: the one named ``gateway`` in
    ``LISTEN_FDNAMES``, or the only one passed. None when this process was given none."""
    if env.get("LISTEN_PID") != str(pid):
        return None  # meant for another process (or not socket-activated at all)
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count < 1:
        return None
    names = env.get("LISTEN_FDNAMES", "").split(":")
    for i in range(count):
        if i < len(names) and names[i] == GATEWAY_FD_NAME:
            return SD_LISTEN_FDS_START + i
    return SD_LISTEN_FDS_START if count == 1 else None


def take_gateway_socket() -> socket.socket | None:
    """The inherited listening socket, once; the variables are cleared so that children
    (the server process) never see them."""
    fd = inherited_fd(os.environ, os.getpid())
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if fd is None:
        return None
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    log.info("gateway.socket_inherited", fd=fd, address=str(sock.getsockname()))
    return sock
