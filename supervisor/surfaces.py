"""The daemon's listening surfaces: the control socket and, when set, the status API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .api import start_api
from .control import start_control
from .daemon import Daemon


async def start_surfaces(daemon: Daemon) -> Callable[[], Awaitable[None]]:
    """Listen; returns the coroutine function that closes everything opened here."""
    sup = daemon.settings.supervisor
    closers = [await start_control(daemon, sup.control_socket, sup.control_socket_group)]
    if sup.status_api:
        closers.append(await start_api(daemon, sup.status_api))

    async def close() -> None:
        for c in reversed(closers):
            await c()

    return close
