"""The aiohttp runner the daemon's HTTP servers use (status API, control socket, gateway):
errors are answered with a short status text and logged as one bounded structured event.

aiohttp answers a malformed request with a 400 whose body quotes what the parser choked on
(1 MB of junk came back as a 367 KB body) and logs a traceback. Its public API has no switch
for the body, so this subclasses its request handler; the runner swaps its server's class to
one that makes those handlers. A test pins the behaviour (tests/integration/
test_junk_requests.py), so an aiohttp upgrade that changes these internals fails loudly.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .logs import http_logger


class _QuietHandler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The status and its phrase, never the request's own bytes."""
        short = None if status == 500 else f"{status} {HTTPStatus(status).phrase}\n"
        return super().handle_error(request, status, exc, short)


class _QuietServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _QuietHandler(self, loop=self._loop, **self._kwargs)


class QuietAppRunner(web.AppRunner):
    """``web.AppRunner`` with short error answers and errors logged through structlog."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, access_log=None, logger=http_logger(), **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _QuietServer  # same object, handlers of the quiet kind
        return server
