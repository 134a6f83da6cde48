"""The daemon's listening surfaces: the control socket, the status API when set, and the
gateway when on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .api import start_api
from .control import start_control
from .daemon import Daemon
from .proxy import Proxy, start_gateway
from .sockets import take_gateway_socket


async def start_surfaces(daemon: Daemon) -> Callable[[], Awaitable[None]]:
    """Listen; returns the coroutine function that closes everything opened here."""
    sup = daemon.settings.supervisor
    closers = [await start_control(daemon, sup.control_socket, sup.control_socket_group)]
    if sup.status_api:
        closers.append(await start_api(daemon, sup.status_api))
    if daemon.gateway is not None:
        listener = await start_gateway(daemon.settings, Proxy(daemon.settings, daemon.post),
                                       take_gateway_socket())
        # On SIGTERM it stops accepting first, while in-flight requests drain.
        daemon.on_stopping(listener.stop_accepting)
        closers.append(listener.close)

    async def close() -> None:
        for c in reversed(closers):
            await c()

    return close
