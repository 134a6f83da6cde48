"""The gateway's proxy half against a small stand-in upstream (an aiohttp app on loopback),
for what neither llama-server nor the fake LocalAI do: WebSocket sessions, compressed
answers, a server that closes the connection without answering, a port that refuses and then
listens. The owner is a stub (it admits everything, or refuses as told); the real owner and
the real server are tested in tests/integration/test_gateway.py."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from daemonkit import make_settings

from supervisor.gateway import Arrived, Finished, Outcome, Ticket
from supervisor.proxy import Proxy
from supervisor.scheduler import Refusal


async def test_a_websocket_session_passes_through_both_ways(tmp_path: Path) -> None:
    async def realtime(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("realtime",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"{request.query.get('model')}: {msg.data}")
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    upstream = web.Application()
    upstream.router.add_get("/v1/realtime", realtime)
    up_runner = web.AppRunner(upstream)
    await up_runner.setup()
    up_site = web.TCPSite(up_runner, "127.0.0.1", 0)
    await up_site.start()
    up_port = up_runner.addresses[0][1]

    base = make_settings(tmp_path, gateway=True)
    settings = base.model_copy(update={"gateway": base.gateway.model_copy(
        update={"upstream_port": up_port})})
    finished: list[Finished] = []

    def post(msg: Any) -> None:  # a stub owner: admits everything at once
        if isinstance(msg, Arrived):
            msg.reply.set_result(Ticket())
        elif isinstance(msg, Finished):
            finished.append(msg)

    proxy = Proxy(settings, post)
    runner = web.AppRunner(proxy.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"http://127.0.0.1:{port}/v1/realtime?model=voice",
                protocols=("realtime",)) as ws:
            assert ws.protocol == "realtime"
            await ws.send_str("hello")
            assert await ws.receive_str() == "voice: hello"
            await ws.send_bytes(b"\x01\x02\x03")
            assert await ws.receive_bytes() == b"\x03\x02\x01"
        for _ in range(100):
            if finished:
                break
            await asyncio.sleep(0.01)
        assert [f.outcome for f in finished] == [Outcome.COMPLETED]
    finally:
        await runner.cleanup()
        await proxy.close()
        await up_runner.cleanup()


class Bench:
    """A stand-in upstream app, the proxy in front of it, and a stub owner."""

    def __init__(self, tmp_path: Path, upstream: web.Application,
                 refusal: Refusal | None = None) -> None:
        self.tmp_path = tmp_path
        self.upstream = upstream
        self.refusal = refusal
        self.finished: list[Finished] = []
        self.up_runner: web.AppRunner | None = None

    async def start_upstream(self, port: int = 0) -> int:
        self.up_runner = web.AppRunner(self.upstream)
        await self.up_runner.setup()
        await web.TCPSite(self.up_runner, "127.0.0.1", port).start()
        return int(self.up_runner.addresses[0][1])

    async def start_proxy(self, up_port: int) -> str:
        base = make_settings(self.tmp_path, gateway=True)
        settings = base.model_copy(update={"gateway": base.gateway.model_copy(
            update={"upstream_port": up_port})})
        self.proxy = Proxy(settings, self.post)
        self.runner = web.AppRunner(self.proxy.app())
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def post(self, msg: Any) -> None:
        if isinstance(msg, Arrived):
            msg.reply.set_result(Ticket(self.refusal, 1.0))
        elif isinstance(msg, Finished):
            self.finished.append(msg)

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.proxy.close()
        if self.up_runner is not None:
            await self.up_runner.cleanup()


async def test_a_compressed_answer_passes_compressed_and_intact(tmp_path: Path) -> None:
    import gzip

    raw = gzip.compress(b'{"object": "list", "data": []}')

    async def models(request: web.Request) -> web.Response:
        return web.Response(body=raw, headers={"Content-Encoding": "gzip",
                                               "Content-Type": "application/json",
                                               "X-Engine": "stand-in"})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    b = Bench(tmp_path, app)
    url = await b.start_proxy(await b.start_upstream())
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as http, \
                http.get(url + "/v1/models") as resp:
            assert await resp.read() == raw
            assert resp.headers["Content-Encoding"] == "gzip"
            assert resp.headers["X-Engine"] == "stand-in"
    finally:
        await b.close()


async def test_a_server_that_closes_without_answering_is_asked_once_more_then_502(
        tmp_path: Path) -> None:
    async def hang_up(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        raise asyncio.CancelledError

    app = web.Application()
    app.router.add_post("/v1/chat/completions", hang_up)
    b = Bench(tmp_path, app)
    url = await b.start_proxy(await b.start_upstream())
    try:
        async with aiohttp.ClientSession() as http, \
                http.post(url + "/v1/chat/completions", json={"model": "m"}) as resp:
            assert resp.status == 502
            assert (await resp.json())["error"]["code"] == "upstream-failed"
        # Once more (the server may have just died), then no more: a request that kills the
        # server must not loop.
        assert [(f.outcome, f.counted) for f in b.finished] == [
            (Outcome.UPSTREAM_FAILED, False), (Outcome.UPSTREAM_FAILED, True)]
    finally:
        await b.close()


async def test_a_connection_reset_before_any_answer_is_asked_again(tmp_path: Path) -> None:
    """A server killed with the request unread resets the connection (ClientOSError, not
    ServerDisconnectedError): the same case, the request is asked once more (seen in CI)."""
    calls = 0

    async def reset_once(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            assert request.transport is not None
            sock = request.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()
            raise asyncio.CancelledError
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", reset_once)
    b = Bench(tmp_path, app)
    url = await b.start_proxy(await b.start_upstream())
    try:
        async with aiohttp.ClientSession() as http, \
                http.post(url + "/v1/chat/completions", json={"model": "m"}) as resp:
            assert resp.status == 200, await resp.text()
        assert [(f.outcome, f.counted) for f in b.finished] == [
            (Outcome.UPSTREAM_FAILED, False), (Outcome.COMPLETED, True)]
    finally:
        await b.close()


async def test_a_refused_connect_waits_again_and_is_answered_once_the_server_listens(
        tmp_path: Path) -> None:
    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    b = Bench(tmp_path, app)
    port = await b.start_upstream()
    assert b.up_runner is not None
    await b.up_runner.cleanup()  # the server has just died: its port refuses
    url = await b.start_proxy(port)
    try:
        async with aiohttp.ClientSession() as http:
            ask = asyncio.ensure_future(http.post(url + "/v1/chat/completions",
                                                  json={"model": "m"}))
            await asyncio.sleep(0.35)
            await b.start_upstream(port)  # ... and is back
            async with await ask as resp:
                assert resp.status == 200
        requeued = [f for f in b.finished if not f.counted]
        assert requeued and all(f.outcome is Outcome.UPSTREAM_FAILED for f in requeued)
        assert [f.outcome for f in b.finished if f.counted] == [Outcome.COMPLETED]
    finally:
        await b.close()


async def test_a_refusal_is_an_openai_shaped_error_with_retry_after(tmp_path: Path) -> None:
    b = Bench(tmp_path, web.Application(), refusal=Refusal.SERVER_DOWN)
    url = await b.start_proxy(1)
    try:
        async with aiohttp.ClientSession() as http, \
                http.post(url + "/v1/chat/completions", json={"model": "m"}) as resp:
            assert (resp.status, resp.headers["Retry-After"]) == (503, "30")
            error = (await resp.json())["error"]
            assert error["code"] == "server-down" and error["type"] == "server_error"
            assert "stopped or failed" in error["message"]
    finally:
        await b.close()


async def test_supervisorctl_says_in_one_line_why_the_daemon_refused_it(tmp_path: Path) -> None:
    """The control socket's 403 (a peer not allowed) as the CLI reports it; a stand-in
    socket here, the real refusal in tests/integration/test_control_peers.py."""
    import pytest

    from supervisor.cli import CTL_ERROR, CtlError, call

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error": "uid 65534 may not command the "
                                  "supervisor"}, status=403)

    app = web.Application()
    app.router.add_get("/v1/status", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = tmp_path / "c.sock"
    await web.UnixSite(runner, str(sock)).start()
    try:
        with pytest.raises(CtlError) as err:
            await call(sock, "status")
        assert err.value.code == CTL_ERROR and "may not command" in str(err.value)
    finally:
        await runner.cleanup()
