"""Read-only HTTP status API (loopback by default): ``GET /status``, ``GET /healthz``,
``GET /readyz`` (200/503 for load balancers), ``GET /metrics`` (Prometheus),
``GET /openapi.json`` (the document that describes them) and ``GET /`` (a status page)."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import gpumem
from .daemon import Daemon
from .httpserver import QuietAppRunner
from .metrics import exposition
from .page import render_page
from .settings import split_host_port
from .status import OPENAPI_FILE, Readiness

# Their paths are short: a request line longer than this is junk (and its 400 echoes less).
MAX_LINE = 1024
# A connection that has not sent a whole request within this long (or sits idle) is closed.
SLOW_CLIENT_SECONDS = 10.0
# Status API requests handled at once (the rest wait their turn, in order).
API_CONCURRENCY = 4
# With a token set, these still answer without it (liveness and readiness checks).
OPEN_PATHS = frozenset({"/healthz", "/readyz"})

log = structlog.get_logger("supervisor.api")


def _app(daemon: Daemon, token: str | None = None) -> web.Application:
    # Reads a snapshot only: the status is assembled on the loop's thread, nothing mutates.
    async def status(request: web.Request) -> web.Response:
        return web.Response(text=daemon.status().model_dump_json(),
                            content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=render_page(daemon.status()), content_type="text/html")

    async def readyz(request: web.Request) -> web.Response:
        ready = Readiness.of(daemon.status())
        return web.json_response(ready.model_dump(mode="json"),
                                 status=200 if ready.ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        # NVML blocks: off the loop; once known absent, not asked again.
        gpus = await asyncio.to_thread(gpumem.devices) if gpumem.may_have_nvml() else []
        return web.Response(body=exposition(daemon.metrics, gpus),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(request: web.Request) -> web.FileResponse:
        return web.FileResponse(OPENAPI_FILE, headers={"Content-Type": "application/json"})

    # A burst of scrapes (1,000 at once) is served a few at a time: the loop's ready queue
    # then holds a handful of them, not all, so the control socket and the gateway, on the
    # same loop, are not kept waiting behind the whole burst.
    turns = asyncio.Semaphore(API_CONCURRENCY)

    @web.middleware
    async def in_turn(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        if token is not None and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), token.encode()):
                log.warning("api.unauthorized", path=request.path[:100],
                            cause="no or wrong bearer token", action="answered 401")
                return web.json_response({"error": "a bearer token is required "
                                          "(supervisor.status_api_token_file)"}, status=401,
                                         headers={"WWW-Authenticate": "Bearer"})
        async with turns:
            # Yield once while holding a turn: the requests behind it then wait on the
            # semaphore instead of all being runnable at once ahead of everything else.
            await asyncio.sleep(0)
            return await handler(request)

    app = web.Application(client_max_size=1024, middlewares=[in_turn])
    app.router.add_get("/status", status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", page)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    return app


def _read_token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise OSError(f"{path} is empty")
    return token


async def start_api(daemon: Daemon, address: str) -> Callable[[], Awaitable[None]]:
    host, port = split_host_port(address)
    token_file = daemon.settings.supervisor.status_api_token_file
    token = await asyncio.to_thread(_read_token, token_file) if token_file else None
    runner = QuietAppRunner(_app(daemon, token), max_line_size=MAX_LINE,
                            keepalive_timeout=SLOW_CLIENT_SECONDS)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("api.listening", address=address)
    return runner.cleanup
