"""The gateway's HTTP side: the public port, passing requests through to the server.

One aiohttp handler per request reads the body once to find the model, posts ``Arrived`` to
the gateway owner (gateway.py) and waits for its ticket, then passes the request through byte
for byte (SSE chunk by chunk, WebSocket message by message) and posts ``Finished``. It decides
nothing: admission, refusal and unloads are the owner's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from .gateway import NO_MODEL, RETRY_AFTER, Arrived, Finished, Left, Outcome, Ticket
from .httpserver import QuietAppRunner
from .scheduler import Refusal
from .settings import Settings, split_host_port

log = structlog.get_logger("supervisor.gateway")

# A request whose connect was refused (the server died between admission and connect) asks
# again after this pause, keeping its place; the server owner learns of the death meanwhile.
REQUEUE_PAUSE = 0.1
# A request the server dropped before answering is asked again this many times at most.
MAX_DISCONNECT_RETRIES = 1
CONNECT_TIMEOUT = 10.0
# Paths that name a model but are not inference: they never start a swap.
_ADMIN_PREFIXES = ("/backend/", "/models/", "/api/", "/system", "/metrics", "/props", "/slots")
_HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Host", "Content-Length"))
# The last part of a stream kept to read its usage block.
_TAIL_BYTES = 8192
# A JSON answer larger than this is passed through without reading its usage.
_USAGE_BODY_MAX = 1 << 20


def model_of(method: str, path: str, query: Mapping[str, str], content_type: str,
             body: bytes) -> str | None:
    """The model a request asks for: JSON body, multipart form field or query parameter.
    Only inference counts: GETs and admin paths never start a swap."""
    if method != "POST" or path.startswith(_ADMIN_PREFIXES):
        return None
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "application/json" or (not ctype and body[:1] == b"{"):
        try:
            data = json.loads(body)
        except ValueError:
            return None
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, str) and model:
            return model
    elif ctype == "multipart/form-data":
        found = _multipart_field(content_type, body, "model")
        if found:
            return found
    model = query.get("model")
    return model or None


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)
_FIELD_NAME = re.compile(rb'name="([^"]*)"', re.I)


def _multipart_field(content_type: str, body: bytes, name: str) -> str | None:
    m = _BOUNDARY.search(content_type)
    if not m:
        return None
    for part in body.split(b"--" + m.group(1).encode())[1:]:
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = _FIELD_NAME.search(head)
        if disposition and disposition.group(1).decode(errors="replace") == name \
                and b"filename=" not in head:
            text = value.removesuffix(b"\r\n").decode(errors="replace").strip()
            return text or None
    return None


def error_body(why: Refusal, model: str | None, waited: float) -> dict[str, Any]:
    """An OpenAI-shaped error that says why the gateway answered itself."""
    what = f"model {model!r}" if model else "the request"
    messages = {
        Refusal.QUEUE_FULL: f"too many requests are waiting for {what}; retry later",
        Refusal.QUEUE_TIMEOUT: f"{what} waited {waited:.0f}s for its turn (other models or "
                               "busy slots); retry later",
        Refusal.SERVER_UNAVAILABLE: f"the server is restarting or recovering; {what} waited "
                                    f"{waited:.0f}s; retry later",
        Refusal.SERVER_DOWN: "the server is stopped or failed (see supervisorctl status)",
        Refusal.SUPERVISOR_STOPPING: "the supervisor is stopping or restarting; retry",
    }
    return {"error": {"message": messages[why], "type": "server_error" if why.status == 503
                      else "rate_limit_error", "code": why.value, "param": None}}


def _usage(data: Any) -> tuple[int | None, int | None]:
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None, None
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (p if isinstance(p, int) else None, c if isinstance(c, int) else None)


def _stream_usage(tail: bytes) -> tuple[int | None, int | None]:
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data:") and b'"usage"' in line:
            with contextlib.suppress(ValueError):
                return _usage(json.loads(line[5:]))
    return None, None


class Proxy:
    """The aiohttp side: one handler per request, posting to the owner and passing bytes."""

    def __init__(self, settings: Settings, post: Callable[[Any], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._upstream = settings.probe_base_url
        self._post = post
        self._clock = clock
        self._ids = itertools.count(1)
        self._http: aiohttp.ClientSession | None = None
        # Set when the daemon stops: answers tell clients not to reuse the connection, so
        # their next request opens a new one (queued for the next daemon under a .socket).
        self.closing = False

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"))
        return self._http

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._settings.gateway.max_body_mb * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        body = await request.read()
        model = model_of(request.method, request.path, request.query,
                         request.headers.get("Content-Type", ""), body)
        arrived = self._clock()
        disconnects = 0
        while True:
            rid = next(self._ids)
            ticket = await self._wait_turn(rid, model, arrived)
            if ticket.refusal is not None:
                return self._refusal(ticket, model)
            resp, why = await self._forward(rid, request, body,
                                            retry_disconnect=disconnects < MAX_DISCONNECT_RETRIES)
            if resp is not None:
                return resp
            disconnects += why == "disconnected"
            # The server just died: wait for our turn again, in place.
            log.info("gateway.requeued", model=(model or NO_MODEL)[:100],
                     cause=f"connection to the server {why} before any answer (it just "
                     "stopped?)", action="waiting for it again, in place")
            await asyncio.sleep(REQUEUE_PAUSE)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """A WebSocket session (LocalAI's realtime API) passes through message by message. It
        names no model to the scheduler (a long session would otherwise pin its model), but
        it waits for a serving server and counts as in flight for a drain."""
        rid = next(self._ids)
        ticket = await self._wait_turn(rid, None, self._clock())
        if ticket.refusal is not None:
            return self._refusal(ticket, None)
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in _HOP_BY_HOP
                              and not k.lower().startswith("sec-websocket"))
        protocols = tuple(p.strip() for p in
                          request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                          if p.strip())
        outcome = Outcome.COMPLETED
        try:
            async with self._session().ws_connect(
                    self._upstream + request.rel_url.raw_path_qs, headers=headers,
                    protocols=protocols, autoping=False, max_msg_size=0) as up:
                down = web.WebSocketResponse(protocols=protocols, autoping=False,
                                             max_msg_size=0)
                await down.prepare(request)
                pumps = [asyncio.ensure_future(_pump(up, down)),
                         asyncio.ensure_future(_pump(down, up))]
                done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                if pumps[0] in done and pumps[0].exception() is not None:
                    outcome = Outcome.CUT_OFF
                await down.close()
                return down
        except aiohttp.WSServerHandshakeError as exc:
            outcome = Outcome.COMPLETED
            return web.Response(status=exc.status, text=exc.message)
        except aiohttp.ClientError as exc:
            outcome = Outcome.UPSTREAM_FAILED
            return web.json_response(
                {"error": {"message": f"the server failed to answer: {type(exc).__name__}",
                           "type": "server_error", "code": "upstream-failed", "param": None}},
                status=502)
        except asyncio.CancelledError:
            outcome = Outcome.CLIENT_GONE
            raise
        finally:
            self._post(Finished(rid, outcome))

    async def _wait_turn(self, rid: int, model: str | None, arrived: float) -> Ticket:
        reply: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        self._post(Arrived(rid, model, arrived, reply))
        try:
            return await reply
        except asyncio.CancelledError:
            reply.cancel()
            self._post(Left(rid))
            raise

    def _refusal(self, ticket: Ticket, model: str | None) -> web.Response:
        assert ticket.refusal is not None
        why = ticket.refusal
        resp = web.json_response(error_body(why, model, ticket.waited), status=why.status,
                                 headers={"Retry-After": str(RETRY_AFTER[why])})
        if self.closing:
            resp.force_close()
        return resp

    async def _forward(self, rid: int, request: web.Request, body: bytes, *,
                       retry_disconnect: bool) -> tuple[web.StreamResponse | None, str]:
        """Pass one admitted request through. No response (and why) when the server refused
        the connection, or closed it before answering while ``retry_disconnect``: the caller
        queues the request again (an inference with no answer yet can be asked again; once
        only, so a request that kills the server cannot loop)."""
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in _HOP_BY_HOP)
        if request.remote:
            prior = request.headers.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = f"{prior}, {request.remote}" if prior else \
                request.remote
        started = self._clock()
        ttfb: float | None = None
        try:
            async with self._session().request(
                    request.method, self._upstream + request.rel_url.raw_path_qs,
                    headers=headers, data=body or None, allow_redirects=False) as up:
                ttfb = self._clock() - started
                resp, outcome, usage = await self._relay(request, up)
        except aiohttp.ClientConnectorError:
            self._post(Finished(rid, Outcome.UPSTREAM_FAILED, counted=False))
            return None, "refused"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            # Closed or reset before any answer: the server died holding the request (a
            # reset is what a process killed with the request unread leaves behind).
            if not retry_disconnect:
                self._post(Finished(rid, Outcome.UPSTREAM_FAILED, ttfb))
                return _bad_gateway(type(exc).__name__), ""
            self._post(Finished(rid, Outcome.UPSTREAM_FAILED, counted=False))
            return None, "disconnected"
        except asyncio.CancelledError:
            self._post(Finished(rid, Outcome.CLIENT_GONE, ttfb))
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:  # before any answer (_relay
            self._post(Finished(rid, Outcome.UPSTREAM_FAILED, ttfb))  # handles the rest)
            return _bad_gateway(type(exc).__name__), ""
        self._post(Finished(rid, outcome, ttfb, *usage))
        return resp, ""

    async def _relay(self, request: web.Request, up: aiohttp.ClientResponse
                     ) -> tuple[web.StreamResponse, Outcome, tuple[int | None, int | None]]:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        for k, v in up.headers.items():
            if k.lower() not in _HOP_BY_HOP:
                resp.headers.add(k, v)
        if self.closing:
            resp.force_close()
        if up.content_length is not None:
            resp.content_length = up.content_length
        sse = up.headers.get("Content-Type", "").startswith("text/event-stream")
        keep = not sse and (up.content_length or 0) <= _USAGE_BODY_MAX and \
            up.headers.get("Content-Type", "").startswith("application/json")
        tail = b""
        kept: list[bytes] = []
        try:
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
                if sse:
                    tail = (tail + chunk)[-_TAIL_BYTES:]
                elif keep:
                    kept.append(chunk)
        except ConnectionError:  # the client went away: close upstream so the slot is freed
            # (first: aiohttp's ClientConnectionResetError, raised by writes to a closed
            # client, is a ClientError too)
            up.close()
            return resp, Outcome.CLIENT_GONE, (None, None)
        except aiohttp.ClientError as exc:  # the server's side broke mid-answer
            up.close()
            if sse:
                event = {"error": {"message": "the server closed the stream mid-answer "
                                   f"({type(exc).__name__})", "type": "server_error",
                                   "code": "cut-off", "param": None}}
                with contextlib.suppress(ConnectionError):
                    await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            with contextlib.suppress(ConnectionError):
                await resp.write_eof()
            return resp, Outcome.CUT_OFF, _stream_usage(tail)
        with contextlib.suppress(ConnectionError):  # all of it was sent: a client that left
            await resp.write_eof()                  # before the last empty chunk got it all
        if sse:
            return resp, Outcome.COMPLETED, _stream_usage(tail)
        if keep and kept:
            with contextlib.suppress(ValueError):
                return resp, Outcome.COMPLETED, _usage(json.loads(b"".join(kept)))
        return resp, Outcome.COMPLETED, (None, None)


def _bad_gateway(cause: str) -> web.Response:
    return web.json_response(
        {"error": {"message": f"the server failed to answer: {cause}", "type": "server_error",
                   "code": "upstream-failed", "param": None}}, status=502)


async def _pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    """Copy messages one way until either side closes."""
    async for msg in src:
        if msg.type is aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type is aiohttp.WSMsgType.PING:
            await dst.ping(msg.data)
        elif msg.type is aiohttp.WSMsgType.PONG:
            await dst.pong(msg.data)
        else:
            break
    await dst.close()


# ---- listening ---------------------------------------------------------------------------------


class GatewayListener:
    """The listening side. Stopping is staged: stop accepting at once (under socket activation
    new connections then wait in the kernel's backlog for the next daemon), close idle
    keep-alive connections, answer the requests in progress with ``Connection: close``, and
    close the upstream session only after they are done."""

    def __init__(self, runner: web.AppRunner, proxy: Proxy) -> None:
        self._runner = runner
        self._proxy = proxy
        self._closing: asyncio.Future[None] | None = None

    def stop_accepting(self) -> None:
        self._proxy.closing = True
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())

    async def close(self) -> None:
        self.stop_accepting()
        assert self._closing is not None
        await self._closing

    async def _close(self) -> None:
        await self._runner.cleanup()
        await self._proxy.close()


async def start_gateway(settings: Settings, proxy: Proxy, sock: socket.socket | None
                        ) -> GatewayListener:
    """Listen on the inherited socket (systemd socket activation) or on ``gateway.listen``."""
    runner = QuietAppRunner(proxy.app(), handler_cancellation=True,
                            shutdown_timeout=settings.health.drain_timeout)
    await runner.setup()
    if sock is not None:
        site: web.BaseSite = web.SockSite(runner, sock)
        where = f"inherited socket {sock.getsockname()}"
    else:
        host, port = split_host_port(settings.gateway.listen)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        where = settings.gateway.listen
    await site.start()
    log.info("gateway.listening", address=where, upstream=settings.probe_base_url)
    return GatewayListener(runner, proxy)
