"""The swap-aware gateway in front of the real llama-server (router mode, --models-max 1).

Each test starts a supervisor of the process runtime with the gateway on a port of its own and
the server behind it on loopback, so the same requests can be sent both ways: directly to the
server (what clients did before) and through the gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from supervised import Supervised

from supervisor.tinygguf import write_tiny_llama

pytestmark = pytest.mark.integration

LONG_CTX = 8192


@pytest.fixture(scope="module")
def long_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny models with a context long enough for long generations."""
    models = tmp_path_factory.mktemp("long-models")
    for name, seed in (("tiny-a", 1), ("tiny-b", 2)):
        write_tiny_llama(models / f"{name}.gguf", seed=seed, name=name,
                         context_length=LONG_CTX)
    return models


def long_config(sup: Supervised, parallel: int | None = None) -> None:
    opts = f"  options: ['parallel:{parallel}']\n" if parallel else ""
    sup.config_file.write_text("".join(
        f"- name: {m}\n  context_size: {LONG_CTX}\n{opts}  parameters:\n"
        f"    model: {m}.gguf\n" for m in ("tiny-a", "tiny-b")))


@pytest.fixture
def gateway_sup(make_process_supervised: Callable[..., Supervised], long_models: Path
                ) -> Callable[..., Supervised]:
    def make(parallel: int | None = None, **gateway: Any) -> Supervised:
        sup = make_process_supervised({}, models_dir=long_models,
                                      gateway={"enabled": True, **gateway})
        long_config(sup, parallel)
        sup.start()
        sup.wait_for(lambda s: s["state"] == "RUNNING", 60, "RUNNING")
        return sup
    return make


async def scrape(sup: Supervised) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The supervisor's /metrics, parsed by prometheus_client's own parser."""
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{sup.status_port}/metrics") as resp:
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def chat_body(model: str, max_tokens: int = 8, stream: bool = False,
              ignore_eos: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": stream,
                            "messages": [{"role": "user", "content": "hi"}]}
    if ignore_eos:
        body["ignore_eos"] = True
    return body


async def stream_chat(http: aiohttp.ClientSession, url: str, model: str, tokens: int
                      ) -> tuple[int, int, bool]:
    """(status, data events, ended with [DONE])."""
    async with http.post(f"{url}/v1/chat/completions",
                         json=chat_body(model, tokens, stream=True, ignore_eos=True)) as resp:
        events = 0
        done = False
        async for line in resp.content:
            if line.startswith(b"data: [DONE]"):
                done = True
            elif line.startswith(b"data:"):
                events += 1
                if b'"error"' in line:
                    return resp.status, events, False
        return resp.status, events, done


async def test_requests_pass_through_unchanged(gateway_sup: Callable[..., Supervised]) -> None:
    sup = gateway_sup()
    async with aiohttp.ClientSession() as http:
        for path in ("/v1/models", "/models", "/no-such-path"):
            async with http.get(sup.server_url + path) as direct, \
                    http.get(sup.gateway_url + path) as via:
                assert via.status == direct.status, path
                assert via.headers.get("Content-Type") == direct.headers.get("Content-Type")
                if path != "/models":  # /models carries live load states
                    assert await via.read() == await direct.read()
        async with http.post(sup.gateway_url + "/v1/chat/completions",
                             json=chat_body("tiny-a", 4)) as resp:
            data = await resp.json()
            assert resp.status == 200 and data["model"] == "tiny-a"
        # A stream arrives chunk by chunk, not buffered to the end.
        async with http.post(sup.gateway_url + "/v1/chat/completions",
                             json=chat_body("tiny-a", 64, stream=True, ignore_eos=True)) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            chunks = [c async for c in resp.content.iter_any()]
            assert len(chunks) > 5
        # A malformed body gets the server's own answer.
        async with http.post(sup.gateway_url + "/v1/chat/completions", data=b"{not json",
                             headers={"Content-Type": "application/json"}) as via, \
                http.post(sup.server_url + "/v1/chat/completions", data=b"{not json",
                          headers={"Content-Type": "application/json"}) as direct:
            assert via.status == direct.status
    status = sup.status()["gateway"]
    a = next(m for m in status["models"] if m["model"] == "tiny-a")
    assert a["requests"]["completed"] == 2 and a["completion_tokens"] >= 4
    # The same counts in /metrics (Prometheus text, parsed by its own parser) and the CLI.
    samples = await scrape(sup)
    prefix = "localai_supervisor_gateway"
    assert samples[(f"{prefix}_requests_total",
                    (("model", "tiny-a"), ("outcome", "completed")))] == 2
    assert samples[(f"{prefix}_in_flight", (("model", "tiny-a"),))] == 0
    assert samples[(f"{prefix}_resident", (("model", "tiny-a"),))] == 1
    assert samples[(f"{prefix}_time_to_first_byte_seconds_count", (("model", "tiny-a"),))] == 2
    assert samples[(f"{prefix}_tokens_total", (("kind", "completion"), ("model", "tiny-a")))] \
        == a["completion_tokens"]
    assert samples[("localai_supervisor_server_up", ())] == 1
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{sup.status_port}/readyz") as resp:
        assert resp.status == 200 and await resp.json() == {"ready": True, "reasons": []}
    out = (await asyncio.to_thread(sup.ctl, "status")).stdout
    row = next(line.split("\t") for line in out.splitlines() if line.startswith("tiny-a\tyes"))
    assert row[4] == "2", out  # DONE


async def test_a_second_model_waits_its_turn_instead_of_starving(
        gateway_sup: Callable[..., Supervised]) -> None:
    """Three clients keep model A busy back to back while B is asked for. Through the gateway
    B is answered once A's hold (max_hold 3 s) ends and A's streams in flight finish: measured
    4.8-5.2 s on an idle machine. Every A stream completes. Directly against the router B
    mostly starves (not answered within 25 s in 5 of 7 runs here; bench/gateway.py counts it):
    printed for comparison, not asserted, since how long the router lets B wait varies."""
    sup = gateway_sup(max_hold=3.0)
    timeout = aiohttp.ClientTimeout(total=40)

    async def run(url: str) -> tuple[list[tuple[int, int, bool]], str]:
        stop = asyncio.Event()
        results: list[tuple[int, int, bool]] = []

        async def keep_a_busy(http: aiohttp.ClientSession, i: int) -> None:
            # Staggered, of different lengths: never all finished at the same moment.
            await asyncio.sleep(0.3 * i)
            while not stop.is_set():
                results.append(await stream_chat(http, url, "tiny-a", 1500 + 300 * i))

        async with aiohttp.ClientSession() as http:
            busy = [asyncio.create_task(keep_a_busy(http, i)) for i in range(3)]
            await asyncio.sleep(1.0)
            started = time.monotonic()
            try:
                async with aiohttp.ClientSession(timeout=timeout) as b_http, \
                        b_http.post(f"{url}/v1/chat/completions",
                                    json=chat_body("tiny-b", 4)) as resp:
                    await resp.read()
                    outcome = f"HTTP {resp.status} after {time.monotonic() - started:.1f}s"
            except TimeoutError:
                outcome = f"no answer after {timeout.total:.0f}s"
            stop.set()
            await asyncio.gather(*busy)
        return results, outcome

    # Through the gateway first: the direct run leaves the router with B's abandoned request.
    via, via_b = await run(sup.gateway_url)
    timeout = aiohttp.ClientTimeout(total=10)
    direct, direct_b = await run(sup.server_url)
    print(f"direct: B {direct_b}, {len(direct)} A streams; "
          f"gateway: B {via_b}, {len(via)} A streams")
    assert via_b.startswith("HTTP 200")
    # max_hold (3 s) + the longest A stream still running (2,100 tokens, ~1.5 s idle, more on
    # a loaded CI machine) + the swap (the child's stop-timeout is 2 s behind the gateway).
    assert float(via_b.split()[-1].rstrip("s")) < 30
    assert via and all(status == 200 and done for status, _, done in via)
    gw = {m["model"]: m for m in sup.status()["gateway"]["models"]}
    assert gw["tiny-b"]["swaps"] >= 1 and gw["tiny-a"]["requests"].get("cut-off", 0) == 0
    samples = await scrape(sup)
    b = (("model", "tiny-b"),)
    assert samples[("localai_supervisor_gateway_swaps_total", b)] >= 1
    assert samples[("localai_supervisor_gateway_swap_seconds_count", b)] >= 1
    assert samples[("localai_supervisor_gateway_queue_wait_seconds_count", b)] >= 1


async def test_a_full_queue_is_refused_with_429_and_a_long_wait_with_503(
        gateway_sup: Callable[..., Supervised]) -> None:
    sup = gateway_sup(max_hold=60.0, queue_max=1, queue_timeout=1.0)
    async with aiohttp.ClientSession() as http:
        busy = asyncio.create_task(stream_chat(http, sup.gateway_url, "tiny-a", 7000))
        await asyncio.sleep(0.5)
        first = asyncio.create_task(http.post(sup.gateway_url + "/v1/chat/completions",
                                              json=chat_body("tiny-b")))
        await asyncio.sleep(0.3)
        async with http.post(sup.gateway_url + "/v1/chat/completions",
                             json=chat_body("tiny-b")) as full:
            assert full.status == 429 and full.headers["Retry-After"] == "2"
            assert (await full.json())["error"]["code"] == "queue-full"
        async with await first as waited:
            body = await waited.json()
            assert waited.status == 503 and waited.headers["Retry-After"] == "10"
            assert body["error"]["code"] == "queue-timeout", body
        busy.cancel()
        with pytest.raises(asyncio.CancelledError):
            await busy


async def test_a_client_that_disconnects_frees_the_server_slot(
        gateway_sup: Callable[..., Supervised]) -> None:
    sup = gateway_sup()

    async def processing() -> float:
        async with aiohttp.ClientSession() as http, \
                http.get(sup.server_url + "/metrics?model=tiny-a&autoload=false") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith("llamacpp:requests_processing"):
                    return float(line.split()[-1])
        raise AssertionError("no requests_processing in the metrics")

    async with aiohttp.ClientSession() as http:
        resp = await http.post(sup.gateway_url + "/v1/chat/completions",
                               json=chat_body("tiny-a", 6000, stream=True, ignore_eos=True))
        await resp.content.readline()
        assert await processing() == 1
        resp.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 5
    while await processing() != 0:
        assert time.monotonic() < deadline, "the server is still generating for nobody"
        await asyncio.sleep(0.1)
    gw = {m["model"]: m for m in sup.wait_for(
        lambda s: s["gateway"]["models"][0]["in_flight"] == 0, 5, "in_flight 0")[
        "gateway"]["models"]}
    assert gw["tiny-a"]["requests"].get("client-gone") == 1


async def test_a_restart_under_load_refuses_nothing_through_the_gateway(
        gateway_sup: Callable[..., Supervised]) -> None:
    """Steady requests during `supervisorctl restart`: through the gateway all are answered
    (held, then released); directly some meet a closed port."""
    sup = gateway_sup()

    async def load(url: str, seconds: float) -> tuple[int, int]:
        ok = failed = 0
        end = time.monotonic() + seconds

        async def client(http: aiohttp.ClientSession) -> None:
            nonlocal ok, failed
            while time.monotonic() < end:
                try:
                    async with http.post(url + "/v1/chat/completions",
                                         json=chat_body("tiny-a", 8)) as resp:
                        await resp.read()
                        ok += resp.status == 200
                        failed += resp.status != 200
                except aiohttp.ClientError:
                    failed += 1
                    await asyncio.sleep(0.05)

        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(client(http) for _ in range(4)))
        return ok, failed

    for url in (sup.gateway_url, sup.server_url):
        task = asyncio.create_task(load(url, 6.0))
        await asyncio.sleep(1.0)
        assert (await asyncio.to_thread(sup.ctl, "restart")).returncode == 0
        ok, failed = await task
        print(f"{'gateway' if url == sup.gateway_url else 'direct'}: {ok} ok, {failed} failed")
        if url == sup.gateway_url:
            assert failed == 0 and ok > 0
            assert sup.status()["restarts_by_reason"].get("operator") == 1
        else:
            assert failed > 0
        sup.wait_for(lambda s: s["state"] == "RUNNING", 30, "RUNNING")


async def test_requests_are_held_through_a_crash_and_answered_after_recovery(
        gateway_sup: Callable[..., Supervised]) -> None:
    sup = gateway_sup()
    pid = sup.status()["instance"]["pid"]
    os.kill(pid, signal.SIGKILL)
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(
            http.post(sup.gateway_url + "/v1/chat/completions", json=chat_body("tiny-a"))
            for _ in range(8)))
        statuses = [r.status for r in answers]
        for r in answers:
            r.release()
    assert statuses == [200] * 8
    held = sum(m["held"] for m in sup.status()["gateway"]["models"])
    print(f"held {held} of 8")


def test_requests_naming_no_model_are_not_scheduled(
        gateway_sup: Callable[..., Supervised]) -> None:
    sup = gateway_sup()
    from testbed import http_json
    code, body = http_json("GET", sup.gateway_url + "/v1/models")
    assert code == 200 and {m["id"] for m in body["data"]} >= {"tiny-a", "tiny-b"}
    gw = {m["model"]: m for m in sup.status()["gateway"]["models"]}
    assert gw["-"]["requests"] == {"completed": 1} and gw["tiny-a"]["swaps"] == 0
    assert json.dumps(gw)  # the status is plain JSON


async def test_a_supervisor_restart_refuses_no_connection_with_socket_activation(
        make_process_supervised: Callable[..., Supervised], long_models: Path) -> None:
    """The listening socket belongs to whoever started the daemon (systemd's .socket unit;
    here the test, handing it over the same way). While the supervisor restarts, clients'
    connections wait in the kernel's backlog and are answered by the next daemon. A request
    that reaches the stopping daemon on a kept-alive connection is answered 503
    supervisor-stopping with Retry-After: 1 and Connection: close, and one the old daemon's
    closing connection cuts or resets before any answer (HTTP keep-alive's race) is asked
    again: the client here retries both, as the OpenAI SDK does by default. A refused
    connection is never retried: that is what socket activation must prevent."""
    sup = make_process_supervised({}, models_dir=long_models, gateway={"enabled": True})
    long_config(sup)
    listener = socket.create_server(("127.0.0.1", sup.gateway_port), backlog=128)
    try:
        sup.start(listener)
        sup.wait_for(lambda s: s["state"] == "RUNNING", 60, "RUNNING")
        assert "gateway.socket_inherited" in sup.logs(200)
        statuses: list[int | str] = []
        retried = 0
        stop = asyncio.Event()

        async def client(http: aiohttp.ClientSession) -> None:
            nonlocal retried
            while not stop.is_set():
                for _attempt in range(3):
                    try:
                        async with http.post(sup.gateway_url + "/v1/chat/completions",
                                             json=chat_body("tiny-a", 4)) as resp:
                            body = await resp.read()
                            if resp.status == 503 and b"supervisor-stopping" in body:
                                assert resp.headers["Retry-After"] == "1"
                                assert resp.headers["Connection"] == "close"
                                retried += 1
                                await asyncio.sleep(0.1)
                                continue
                            statuses.append(resp.status)
                        break
                    except aiohttp.ClientConnectorError as exc:  # refused: the promise broken
                        statuses.append(type(exc).__name__)
                        break
                    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                        retried += 1  # closed or reset before any answer (keep-alive's race)
                    except aiohttp.ClientError as exc:
                        statuses.append(type(exc).__name__)
                        break
                else:
                    statuses.append("3 attempts")

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            clients = [asyncio.create_task(client(http)) for _ in range(3)]
            await asyncio.sleep(1.0)
            before = len(statuses)
            assert await asyncio.to_thread(sup.stop) == 0  # the server stops with it
            sup.start(listener)
            await asyncio.to_thread(sup.wait_for, lambda s: s["state"] == "RUNNING", 60,
                                    "RUNNING again")
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*clients)
        refused = [s for s in statuses if s != 200]
        print(f"{len(statuses)} requests ({before} before the restart), not answered 200: "
              f"{refused}; asked again (503 supervisor-stopping, or a kept-alive connection "
              f"closed): {retried}")
        assert len(statuses) > before + 3
        # Requests in flight when the first daemon stopped were drained; new connections
        # waited in the backlog for the second one: none refused, none failed.
        assert not refused
        assert retried <= 6  # once or twice per client
    finally:
        listener.close()


async def test_a_stopping_supervisor_serves_what_it_had_received_and_refuses_a_swap(
        gateway_sup: Callable[..., Supervised]) -> None:
    """SIGTERM with one request generating and another for the same model waiting for the only
    slot (parallel 1): both are answered 200 before the server stops, the waiting one during
    the drain, not refused (systemd's socket-activated restart hit exactly this race: a
    request the old daemon had read got 503). A request that would need a model swap is
    refused at once with 503 supervisor-stopping, Retry-After: 1, so its client asks the
    next daemon."""
    sup = gateway_sup(parallel=1)

    def queued(s: dict[str, Any]) -> dict[str, int]:
        return {m["model"]: m["queued"] for m in s["gateway"]["models"]}

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        first = asyncio.create_task(stream_chat(http, sup.gateway_url, "tiny-a", 3000))
        await asyncio.to_thread(sup.wait_for, lambda s: any(
            m["in_flight"] for m in s["gateway"]["models"]), 10, "tiny-a in flight")

        async def ask(model: str) -> tuple[int, str, dict[str, Any]]:
            async with http.post(sup.gateway_url + "/v1/chat/completions",
                                 json=chat_body(model, 4)) as resp:
                return resp.status, resp.headers.get("Retry-After", ""), await resp.json()

        second = asyncio.create_task(ask("tiny-a"))
        swap = asyncio.create_task(ask("tiny-b"))
        await asyncio.to_thread(sup.wait_for, lambda s: queued(s).get("tiny-a") == 1
                                and queued(s).get("tiny-b") == 1, 10, "both waiting")
        assert sup.proc is not None
        sup.proc.send_signal(signal.SIGTERM)
        status, retry, body = await swap
        assert (status, retry, body["error"]["code"]) == (503, "1", "supervisor-stopping")
        assert not first.done()  # refused at once, while tiny-a still generates
        assert await first == (200, mock.ANY, True)
        status, _, body = await second
        assert status == 200 and body["choices"], body
    assert await asyncio.to_thread(sup.proc.wait, 60) == 0
    refusals = [line for line in sup.logs(400).splitlines() if "gateway.refused" in line]
    assert len(refusals) == 1 and "supervisor-stopping" in refusals[0], refusals


async def test_several_resident_models_fit_the_memory_budget_evicting_the_least_recent(
        make_process_supervised: Callable[..., Supervised], tmp_path: Path) -> None:
    """Single active backend off, a memory budget for two of three models: the third model
    is admitted only after the least recently used idle one is unloaded (/models/unload)."""
    from supervisor.gateway import rules_from
    from supervisor.ggufinfo import inspect_gguf
    from supervisor.modelconfig import load_model_set
    from supervisor.settings import load_settings

    models = tmp_path / "three"
    models.mkdir()
    for i, name in enumerate(("tiny-a", "tiny-b", "tiny-c")):
        write_tiny_llama(models / f"{name}.gguf", seed=i + 1, name=name, context_length=2048)
    sup = make_process_supervised({n: f"{n}.gguf" for n in ("tiny-a", "tiny-b", "tiny-c")},
                                  models_dir=models, gateway={"enabled": True},
                                  llama_server={"models_max": 3})
    # The budget: room for two of them, by the gateway's own estimate.
    settings = load_settings(sup.settings_file)
    model_set = load_model_set(sup.config_file, models)
    ggufs = {n: inspect_gguf(models / f"{n}.gguf") for n in model_set.names}
    footprint = rules_from(settings, model_set, ggufs).models["tiny-a"].footprint
    assert footprint
    budget_gb = 2.5 * footprint / 1024**3
    sup = make_process_supervised({n: f"{n}.gguf" for n in ("tiny-a", "tiny-b", "tiny-c")},
                                  models_dir=models, gateway={"enabled": True},
                                  llama_server={"models_max": 3},
                                  server={"single_active_backend": False,
                                          "gpu_memory_gb": budget_gb})
    sup.start()
    sup.wait_for(lambda s: s["state"] == "RUNNING", 60, "RUNNING")

    async def loaded(http: aiohttp.ClientSession) -> set[str]:
        async with http.get(sup.server_url + "/models") as resp:
            data = (await resp.json())["data"]
        return {m["id"] for m in data if m["status"]["value"] == "loaded"}

    async with aiohttp.ClientSession() as http:
        for model in ("tiny-a", "tiny-b"):
            async with http.post(sup.gateway_url + "/v1/chat/completions",
                                 json=chat_body(model)) as resp:
                assert resp.status == 200
        assert await loaded(http) == {"tiny-a", "tiny-b"}
        async with http.post(sup.gateway_url + "/v1/chat/completions",
                             json=chat_body("tiny-c")) as resp:
            assert resp.status == 200
        deadline = time.monotonic() + 15
        while (now := await loaded(http)) != {"tiny-b", "tiny-c"}:
            assert time.monotonic() < deadline, now
            await asyncio.sleep(0.2)
    gw = {m["model"]: m for m in sup.status()["gateway"]["models"]}
    assert [gw[m]["resident"] for m in ("tiny-a", "tiny-b", "tiny-c")] == [False, True, True]
    assert gw["tiny-c"]["swaps"] == 1 and "gateway.swap" in sup.logs(300)


async def test_a_stream_cut_by_a_crash_ends_with_an_error_event_and_is_counted(
        gateway_sup: Callable[..., Supervised]) -> None:
    sup = gateway_sup()
    async with aiohttp.ClientSession() as http, \
            http.post(sup.gateway_url + "/v1/chat/completions",
                      json=chat_body("tiny-a", 7000, stream=True, ignore_eos=True)) as resp:
        assert resp.status == 200
        await resp.content.readline()
        os.kill(sup.status()["instance"]["pid"], signal.SIGKILL)
        tail = [line async for line in resp.content if line.strip()]
    last = json.loads(tail[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "cut-off", tail[-3:]
    gw = {m["model"]: m for m in sup.status()["gateway"]["models"]}
    assert gw["tiny-a"]["requests"].get("cut-off") == 1
    assert '"gateway.cut_off"' in sup.logs(300)
    # And the next request is held until the supervisor has the server back.
    async with aiohttp.ClientSession() as http, \
            http.post(sup.gateway_url + "/v1/chat/completions",
                      json=chat_body("tiny-a")) as resp:
        assert resp.status == 200
