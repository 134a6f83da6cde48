"""The control socket: JSON over HTTP on a unix socket (mode 0660), for ``supervisorctl``.

Handlers never touch daemon state: each request becomes a ``Command`` for the loop, and the
answer is whatever the loop replies, within a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

if TYPE_CHECKING:
    from .daemon import Daemon

log = structlog.get_logger("supervisor.control")

COMMAND_TIMEOUT = 60.0
MAX_REQUEST_BYTES = 64 * 1024
COMMANDS = ("status", "reload", "restart")


def _app(daemon: Daemon) -> web.Application:
    from .daemon import Command

    async def handle(request: web.Request) -> web.Response:
        name = request.match_info["command"]
        if name not in COMMANDS:
            return web.json_response({"ok": False, "error": f"unknown command {name!r}; "
                                      f"known: {', '.join(COMMANDS)}"}, status=404)
        args: dict[str, Any] = {}
        if request.method == "POST" and request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"ok": False, "error": "body is not JSON"}, status=400)
            if not isinstance(body, dict):
                return web.json_response({"ok": False, "error": "body must be a JSON object"},
                                         status=400)
            args = body
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        daemon.post(Command(name, args, reply))
        try:
            result = await asyncio.wait_for(reply, COMMAND_TIMEOUT)
        except TimeoutError:
            return web.json_response({"ok": False, "error": "the daemon did not answer in "
                                      f"{COMMAND_TIMEOUT:g}s"}, status=504)
        return web.json_response(result)

    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_get("/v1/{command}", handle)
    app.router.add_post("/v1/{command}", handle)
    return app


async def start_control(daemon: Daemon, path: Path,
                        group: str | None) -> Callable[[], Awaitable[None]]:
    """Listen on ``path`` (0660); returns the coroutine function that closes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket from a crashed run
    runner = web.AppRunner(_app(daemon), access_log=None)
    await runner.setup()
    # Create the socket with the right mode from the start: no window where it is 0777.
    old_umask = os.umask(0o117)
    try:
        site = web.UnixSite(runner, str(path))
        await site.start()
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o660)
    if group:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    log.info("control.listening", socket=str(path), mode="0660", group=group)

    async def close() -> None:
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    return close
