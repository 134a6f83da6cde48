"""The control socket: JSON over HTTP on a unix socket (mode 0660), for ``supervisorctl``.

Handlers never touch daemon state: ``status`` is the daemon's typed snapshot (taken on the
loop's thread), and every other command becomes a request message for the loop, answered
with whatever the loop replies, within a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel

from . import __version__
from .daemon import Daemon, MaintenanceRequest, ReloadRequest, RestartRequest
from .httpserver import QuietAppRunner
from .logs import EVENTS
from .status import CommandResult, ReloadResult

# Their paths are short: a request line longer than this is junk (and its 400 echoes less).
MAX_LINE = 1024
# A connection that has not sent a whole request within this long (or sits idle) is closed.
SLOW_CLIENT_SECONDS = 10.0

log = structlog.get_logger("supervisor.control")

COMMAND_TIMEOUT = 60.0
MAX_REQUEST_BYTES = 64 * 1024
COMMANDS = ("status", "reload", "restart", "start", "stop")


def peer_allowed(uid: int, groups: set[int], own_uid: int, socket_gid: int) -> bool:
    """Who may command the daemon: root, the daemon's own user, or a member of the socket's
    group -- the same people the socket's 0660 mode lets in, checked again on the peer's
    credentials in case the mode was widened (or systemd's SocketMode differs)."""
    return uid in (0, own_uid) or socket_gid in groups


def _peer(request: web.Request) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of the unix socket."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _socket_group_and_groups_of(path: Path, uid: int, gid: int) -> tuple[int, set[int]]:
    """The socket file's group and every group of ``uid``. Blocking (NSS may ask a
    directory service): call it off the loop."""
    socket_gid = os.stat(path).st_gid
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return socket_gid, {gid}
    return socket_gid, set(os.getgrouplist(name, gid))


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, default=str).encode() + b"\n"


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)


def _answer(model: BaseModel) -> web.Response:
    return web.json_response(model.model_dump(mode="json"))


async def _reply(reply: asyncio.Future[ReloadResult] | asyncio.Future[CommandResult]
                 ) -> web.Response:
    """The loop's answer, or 504 when it does not come within the deadline."""
    try:
        result: BaseModel = await asyncio.wait_for(reply, COMMAND_TIMEOUT)
    except TimeoutError:
        return _error(f"the daemon did not answer in {COMMAND_TIMEOUT:g}s", 504)
    return _answer(result)


def _app(daemon: Daemon) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        name = request.match_info["command"]
        if name not in COMMANDS:
            return _error(f"unknown command {name!r}; known: {', '.join(COMMANDS)}", 404)
        if name == "status":
            return _answer(daemon.status())
        args: dict[str, Any] = {}
        if request.method == "POST" and request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return _error("body is not JSON", 400)
            if not isinstance(body, dict):
                return _error("body must be a JSON object", 400)
            args = body
        loop = asyncio.get_running_loop()
        if name == "reload":
            reloaded: asyncio.Future[ReloadResult] = loop.create_future()
            daemon.post(ReloadRequest(reloaded))
            return await _reply(reloaded)
        if name in ("start", "stop"):
            done: asyncio.Future[CommandResult] = loop.create_future()
            daemon.post(MaintenanceRequest(done, on=name == "stop"))
            return await _reply(done)
        model = args.get("model")
        if model is not None and not isinstance(model, str):
            return _error("model must be a string", 400)
        restarted: asyncio.Future[CommandResult] = loop.create_future()
        daemon.post(RestartRequest(restarted, model=model or None, force=bool(args.get("force"))))
        return await _reply(restarted)

    async def events(request: web.Request) -> web.StreamResponse:
        """The last ``n`` events as JSON lines; with ``follow=1``, then every new one until
        the client goes away."""
        try:
            n = int(request.query.get("n", "20"))
        except ValueError:
            return _error("n must be a number", 400)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        with EVENTS.follow() as live, contextlib.suppress(ConnectionError):
            for record in EVENTS.recent(n):
                await resp.write(_line(record))
            while request.query.get("follow") == "1":
                await resp.write(_line(await live.get()))
            await resp.write_eof()
        return resp

    async def version(request: web.Request) -> web.Response:
        st = daemon.status()
        return web.json_response({
            "supervisor": __version__, "engine": st.engine.value, "runtime": st.runtime.value,
            "engine_version": await daemon.engine_version(),
            "image": st.instance.image if st.instance else None,
            "spec": st.config.spec, "state": st.state.value})

    async def doctor(request: web.Request) -> web.Response:
        model = request.query.get("model") or None
        if model and model not in {m.name for m in daemon.status().models}:
            return _error(f"no model {model!r} in the applied config", 404)
        report = await daemon.doctor(model)
        return web.json_response(report.model_dump(mode="json"))

    async def logs(request: web.Request) -> web.StreamResponse:
        """The server's last ``n`` log lines; with ``follow=1``, then new ones as written."""
        try:
            n = int(request.query.get("n", "50"))
        except ValueError:
            return _error("n must be a number", 400)
        model = request.query.get("model")
        if model and model not in {m.name for m in daemon.status().models}:
            return _error(f"no model {model!r} in the applied config", 404)
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            recent = (await daemon.model_log(model, n) if model else
                      await daemon.server_log(n) if n > 0 else [])
            for line in recent:
                await resp.write(line.encode() + b"\n")
            if request.query.get("follow") == "1":
                follow = (daemon.follow_model_log(model) if model
                          else daemon.follow_server_log())
                try:
                    async for line in follow:
                        await resp.write(line.encode() + b"\n")
                finally:
                    await follow.aclose()  # type: ignore[attr-defined]
            await resp.write_eof()
        return resp

    @web.middleware
    async def peers_only(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        peer = _peer(request)
        if peer is not None:
            pid, uid, gid = peer
            socket_gid, groups = await asyncio.to_thread(
                _socket_group_and_groups_of, daemon.settings.supervisor.control_socket, uid, gid)
            if not peer_allowed(uid, groups, os.getuid(), socket_gid):
                log.warning("control.refused", uid=uid, pid=pid,
                            cause="not root, not the supervisor's user, not in the "
                            "socket's group", action="answered 403")
                return _error(f"uid {uid} may not command the supervisor: run as root, as "
                              f"uid {os.getuid()}, or as a member of group {socket_gid}", 403)
        return await handler(request)

    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[peers_only])
    app.router.add_get("/v1/events", events)
    app.router.add_get("/v1/logs", logs)
    app.router.add_get("/v1/version", version)
    app.router.add_get("/v1/doctor", doctor)
    app.router.add_get("/v1/{command}", handle)
    app.router.add_post("/v1/{command}", handle)
    return app


async def start_control(daemon: Daemon, path: Path,
                        group: str | None) -> Callable[[], Awaitable[None]]:
    """Listen on ``path`` (0660); returns the coroutine function that closes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket from a crashed run
    # At shutdown, followers of `events -f` / `logs -f` (and commands the stopped loop will
    # never answer) are let go after a second rather than holding the exit; a follower whose
    # client went away is cancelled at once (handler_cancellation), not at its next line.
    runner = QuietAppRunner(_app(daemon), max_line_size=MAX_LINE, shutdown_timeout=1.0,
                            handler_cancellation=True, keepalive_timeout=SLOW_CLIENT_SECONDS)
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
