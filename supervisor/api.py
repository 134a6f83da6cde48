"""Read-only HTTP status API (loopback by default): ``GET /status`` and ``GET /healthz``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from .settings import split_host_port

if TYPE_CHECKING:
    from .daemon import Daemon

log = structlog.get_logger("supervisor.api")


def _app(daemon: Daemon) -> web.Application:
    # Reads a snapshot only: the status dict is built on the loop's thread, nothing mutates.
    async def status(request: web.Request) -> web.Response:
        return web.json_response(daemon.status())

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=1024)
    app.router.add_get("/status", status)
    app.router.add_get("/healthz", healthz)
    return app


async def start_api(daemon: Daemon, address: str) -> Callable[[], Awaitable[None]]:
    host, port = split_host_port(address)
    runner = web.AppRunner(_app(daemon), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("api.listening", address=address)
    return runner.cleanup
