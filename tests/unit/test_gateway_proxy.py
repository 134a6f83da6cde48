"""The gateway's proxy half against a small stand-in upstream (an aiohttp app on loopback):
WebSocket sessions, which neither llama-server nor the fake LocalAI offer. The owner is a
stub that admits everything; the real owner and the real server are tested in
tests/integration/test_gateway.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from daemonkit import make_settings

from supervisor.gateway import Arrived, Finished, Outcome, Proxy, Ticket


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
