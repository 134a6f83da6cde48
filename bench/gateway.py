"""The swap-aware gateway against the server it fronts: the same load sent directly to
llama-server (router mode, --models-max 1, two tiny models) and through the gateway, in one
run, on one supervisor (process runtime; no container engine needed).

Scenarios (each direct, then through the gateway):
- busy A, B every few seconds: clients keep model A streaming back to back (1,500-token
  answers, ignore_eos) while a request for model B arrives every 5 s; A streams completed and
  cut off, B requests answered and failed (no answer within 30 s), B latency. This is the
  seed's two-models-at-once failure and the starvation case together.
- mixed load: clients alternating between the two models: completed requests per minute,
  swaps, p50/p99 latency.
- overhead: small non-streaming requests and time to first token of streams at 1, 16 and 64
  concurrent clients: added p50/p99, throughput ratio, the supervisor's CPU seconds per 1,000
  requests; while 64 streams pass, how late the supervisor's own status API answers (its
  loop) and whether any probe failed.
- restart under load: steady requests while config.yaml changes (a restart): failed ones.

Usage: .venv/bin/python bench/gateway.py [--seconds N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from supervised import Supervised  # noqa: E402
from testbed import llama_server_dir  # noqa: E402

from supervisor.tinygguf import write_tiny_llama  # noqa: E402

CTX = 8192
B_TIMEOUT = 30.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(v: float) -> str:
    return f"{v * 1000:.1f} ms"


def body(model: str, tokens: int, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "max_tokens": tokens, "stream": stream, "ignore_eos": True,
            "messages": [{"role": "user", "content": "hi"}]}


async def stream(http: aiohttp.ClientSession, url: str, model: str, tokens: int
                 ) -> tuple[str, float | None]:
    """('done' | 'cut' | 'failed', seconds to the first data event)."""
    started = time.perf_counter()
    first = None
    outcome = "cut"
    try:
        async with http.post(url + "/v1/chat/completions", json=body(model, tokens, True)) as r:
            if r.status != 200:
                await r.read()
                return "failed", None
            async for line in r.content:  # to the end, as a client that got all of it
                if line.startswith(b"data: [DONE]"):
                    outcome = "done"
                elif line.startswith(b"data:"):
                    if first is None:
                        first = time.perf_counter() - started
                    if b'"error"' in line:
                        outcome = "cut"
            return outcome, first
    except (aiohttp.ClientError, TimeoutError):
        return "cut" if first is not None else "failed", first


async def small(http: aiohttp.ClientSession, url: str, model: str, tokens: int = 1
                ) -> tuple[bool, float]:
    started = time.perf_counter()
    try:
        async with http.post(url + "/v1/chat/completions", json=body(model, tokens)) as r:
            await r.read()
            return r.status == 200, time.perf_counter() - started
    except (aiohttp.ClientError, TimeoutError):
        return False, time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Report:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, what: str, direct: str, gateway: str, note: str = "") -> None:
        self.rows.append((what, direct, gateway, note))
        print(f"  {what}: direct {direct} | gateway {gateway} {note}", flush=True)

    def table(self) -> str:
        lines = ["| measure | direct | gateway | |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return "\n".join(lines)


class Bench:
    def __init__(self, sup: Supervised, seconds: float) -> None:
        self.sup = sup
        self.seconds = seconds
        self.report = Report()
        self.urls = {"direct": sup.server_url, "gateway": sup.gateway_url}

    def gw_status(self) -> dict[str, dict[str, Any]]:
        return {m["model"]: m for m in self.sup.status()["gateway"]["models"]}

    async def settle(self) -> None:
        """Let anything still generating finish before the next measurement."""
        await asyncio.sleep(3)

    # -- busy A, B every few seconds ------------------------------------------------------

    async def busy_a(self, url: str) -> dict[str, Any]:
        stop = asyncio.Event()
        a: list[str] = []
        b: list[tuple[bool, float]] = []

        async def keep_busy(http: aiohttp.ClientSession, i: int) -> None:
            await asyncio.sleep(0.3 * i)
            while not stop.is_set():
                a.append((await stream(http, url, "tiny-a", 1500 + 300 * i))[0])

        async def ask_b() -> None:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=B_TIMEOUT)) as http:
                ok, took = await small(http, url, "tiny-b", 4)
                b.append((ok, took))

        async with aiohttp.ClientSession() as http:
            clients = [asyncio.create_task(keep_busy(http, i)) for i in range(3)]
            asks = []
            await asyncio.sleep(1)
            end = time.monotonic() + self.seconds
            while time.monotonic() < end:
                asks.append(asyncio.create_task(ask_b()))
                await asyncio.sleep(5)
            await asyncio.gather(*asks)
            stop.set()
            await asyncio.gather(*clients)
        answered = [t for ok, t in b if ok]
        return {"a_done": a.count("done"), "a_cut": a.count("cut"),
                "a_failed": a.count("failed"), "b_ok": len(answered),
                "b_failed": len(b) - len(answered),
                "b_p50": pct(answered, 0.5), "b_max": max(answered) if answered else None}

    async def scenario_busy(self) -> None:
        print("busy A, B every 5 s", flush=True)
        res = {}
        for way in ("gateway", "direct"):  # direct last: it leaves B's abandoned requests
            res[way] = await self.busy_a(self.urls[way])
            await self.settle()
        d, g = res["direct"], res["gateway"]
        self.report.add("A streams completed / cut off / failed",
                        f"{d['a_done']} / {d['a_cut']} / {d['a_failed']}",
                        f"{g['a_done']} / {g['a_cut']} / {g['a_failed']}")
        self.report.add(f"B requests answered / failed (no answer in {B_TIMEOUT:.0f} s)",
                        f"{d['b_ok']} / {d['b_failed']}", f"{g['b_ok']} / {g['b_failed']}")

        def lat(r: dict[str, Any]) -> str:
            return "-" if r["b_max"] is None else f"{r['b_p50']:.1f} s / {r['b_max']:.1f} s"

        self.report.add("B latency p50 / max", lat(d), lat(g), "(max_hold 3 s)")

    # -- mixed load ------------------------------------------------------------------------

    async def mixed(self, url: str, clients: int) -> dict[str, Any]:
        lat: list[float] = []
        failed = 0
        end = time.monotonic() + self.seconds

        async def client(http: aiohttp.ClientSession, i: int) -> None:
            nonlocal failed
            model = ("tiny-a", "tiny-b")[i % 2]
            while time.monotonic() < end:
                ok, took = await small(http, url, model, 64)
                if ok:
                    lat.append(took)
                else:
                    failed += 1
                model = "tiny-b" if model == "tiny-a" else "tiny-a"

        loads_before = self.router_loads()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            await asyncio.gather(*(client(http, i) for i in range(clients)))
        return {"per_min": len(lat) / self.seconds * 60, "failed": failed,
                "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                "loads": self.router_loads() - loads_before}

    def router_loads(self) -> int:
        log = self.sup.base / "state" / "server.log"
        return log.read_text(errors="replace").count("spawning server instance")

    async def scenario_mixed(self) -> None:
        print("mixed load: 8 clients alternating models", flush=True)
        res = {}
        for way in ("direct", "gateway"):
            res[way] = await self.mixed(self.urls[way], 8)
            await self.settle()
        d, g = res["direct"], res["gateway"]
        self.report.add("mixed: requests per minute (failed)",
                        f"{d['per_min']:.0f} ({d['failed']})", f"{g['per_min']:.0f} "
                        f"({g['failed']})", f"ratio {g['per_min'] / max(d['per_min'], 1):.2f}")
        self.report.add("mixed: model loads (swaps)", str(d["loads"]), str(g["loads"]))
        self.report.add("mixed: latency p50 / p99", f"{d['p50']:.2f} s / {d['p99']:.2f} s",
                        f"{g['p50']:.2f} s / {g['p99']:.2f} s")

    # -- overhead ----------------------------------------------------------------------------

    async def load(self, url: str, clients: int, seconds: float,
                   one: Callable[[aiohttp.ClientSession], Awaitable[tuple[bool, float]]]
                   ) -> tuple[list[float], int]:
        lat: list[float] = []
        failed = 0
        end = time.monotonic() + seconds

        async def client(http: aiohttp.ClientSession) -> None:
            nonlocal failed
            while time.monotonic() < end:
                ok, took = await one(http)
                if ok:
                    lat.append(took)
                else:
                    failed += 1

        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn,
                                         timeout=aiohttp.ClientTimeout(total=120)) as http:
            await asyncio.gather(*(client(http) for _ in range(clients)))
        return lat, failed

    async def scenario_overhead(self) -> None:
        print("overhead", flush=True)
        assert self.sup.proc is not None
        pid = self.sup.proc.pid
        secs = max(4.0, self.seconds / 6)
        cpu_per_k = []
        for clients in (1, 16, 64):
            res = {}
            for way in ("direct", "gateway"):
                cpu0 = cpu_seconds(pid)
                lat, failed = await self.load(
                    self.urls[way], clients, secs,
                    lambda http, u=self.urls[way]: small(http, u, "tiny-a"))  # type: ignore[misc]
                res[way] = (lat, failed, cpu_seconds(pid) - cpu0)
            (dl, df, dcpu), (gl, gf, gcpu) = res["direct"], res["gateway"]
            # The direct run's supervisor CPU (probes, housekeeping) is the baseline.
            per_k = max(0.0, gcpu - dcpu) / max(len(gl), 1) * 1000
            cpu_per_k.append(per_k)
            self.report.add(
                f"small requests, {clients} client(s): p50 / p99",
                f"{ms(pct(dl, .5))} / {ms(pct(dl, .99))}",
                f"{ms(pct(gl, .5))} / {ms(pct(gl, .99))}",
                f"added p50 {ms(pct(gl, .5) - pct(dl, .5))}; throughput ratio "
                f"{len(gl) / max(len(dl), 1):.3f}; failed {df}/{gf}; supervisor CPU "
                f"{per_k:.2f} s per 1,000")
            for way in ("direct", "gateway"):
                lat, failed = await self.load(
                    self.urls[way], clients, secs,
                    lambda http, u=self.urls[way]: self.ttft(http, u))  # type: ignore[misc]
                res[way] = (lat, failed, 0.0)
            (dl, df, _), (gl, gf, _) = res["direct"], res["gateway"]
            self.report.add(
                f"stream time to first token, {clients} client(s): p50 / p99",
                f"{ms(pct(dl, .5))} / {ms(pct(dl, .99))}",
                f"{ms(pct(gl, .5))} / {ms(pct(gl, .99))}",
                f"added p50 {ms(pct(gl, .5) - pct(dl, .5))}; streams ratio "
                f"{len(gl) / max(len(dl), 1):.3f}")
        # The same, with answers of 128 tokens: requests that do some work, as real ones do.
        res = {}
        for way in ("direct", "gateway"):
            res[way] = await self.load(
                self.urls[way], 16, secs,
                lambda http, u=self.urls[way]: small(http, u, "tiny-a", 128))  # type: ignore[misc]
        dl, gl = res["direct"][0], res["gateway"][0]
        self.report.add("128-token answers, 16 clients: p50 / p99",
                        f"{ms(pct(dl, .5))} / {ms(pct(dl, .99))}",
                        f"{ms(pct(gl, .5))} / {ms(pct(gl, .99))}",
                        f"throughput ratio {len(gl) / max(len(dl), 1):.3f}")
        await self.loop_lag_under_streams(64)

    async def ttft(self, http: aiohttp.ClientSession, url: str) -> tuple[bool, float]:
        outcome, first = await stream(http, url, "tiny-a", 16)
        return outcome == "done" and first is not None, first or 0.0

    async def loop_lag_under_streams(self, clients: int) -> None:
        lags: list[float] = []
        stop = asyncio.Event()
        status_url = f"http://127.0.0.1:{self.sup.status_port}/healthz"
        failed_before = self.sup.logs(100000).count('"probe.failed"')

        async def poll() -> None:
            async with aiohttp.ClientSession() as http:
                while not stop.is_set():
                    t = time.perf_counter()
                    async with http.get(status_url) as r:
                        await r.read()
                    lags.append(time.perf_counter() - t)
                    await asyncio.sleep(0.02)

        poller = asyncio.create_task(poll())
        await self.load(self.urls["gateway"], clients, max(6.0, self.seconds / 4),
                        lambda http: self.long_stream(http))
        stop.set()
        await poller
        failed = self.sup.logs(100000).count('"probe.failed"') - failed_before
        self.report.add(f"{clients} streams through the gateway: supervisor API latency "
                        "p50 / max (its loop)", "-", f"{ms(pct(lags, .5))} / {ms(max(lags))}",
                        f"probe failures meanwhile: {failed}")

    async def long_stream(self, http: aiohttp.ClientSession) -> tuple[bool, float]:
        outcome, first = await stream(http, self.urls["gateway"], "tiny-a", 256)
        return outcome == "done", first or 0.0

    # -- restart under load ----------------------------------------------------------------

    async def scenario_restart(self) -> None:
        print("restart under load", flush=True)
        res = {}
        for i, way in enumerate(("direct", "gateway")):
            url = self.urls[way]
            task = asyncio.create_task(self.load(url, 4, 8.0,
                                                 lambda http, u=url: small(http, u, "tiny-a", 8)))
            await asyncio.sleep(2)
            text = self.sup.config_file.read_text()
            self.sup.config_file.write_text(text.replace("max_tokens: 16",
                                                         f"max_tokens: {17 + i}", 1))
            lat, failed = await task
            res[way] = (len(lat), failed)
            await asyncio.to_thread(self.sup.wait_running, 60)
        self.report.add("restart under load: answered / failed",
                        f"{res['direct'][0]} / {res['direct'][1]}",
                        f"{res['gateway'][0]} / {res['gateway'][1]}")


async def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    models = base / "models"
    models.mkdir()
    for name, seed in (("tiny-a", 1), ("tiny-b", 2)):
        write_tiny_llama(models / f"{name}.gguf", seed=seed, name=name, context_length=CTX)
    await asyncio.sleep(3.1)  # older than settle_seconds: the supervisor starts at once
    sup = Supervised.create(
        base / "sup", models, {"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"},
        server={"runtime": "process", "threads": max(1, (os.cpu_count() or 2) // 2)},
        process={"binary": str(llama_server_dir() / "llama-server")},
        gateway={"enabled": True, "max_hold": 3.0},
        supervisor={"log_level": "info"},
    )
    sup.config_file.write_text("".join(
        f"- name: {m}\n  context_size: {CTX}\n  parameters:\n    model: {m}.gguf\n"
        "    max_tokens: 16\n" for m in ("tiny-a", "tiny-b")))
    sup.start()
    try:
        sup.wait_running(60)
        bench = Bench(sup, args.seconds)
        print(f"gateway bench, {datetime.now():%Y-%m-%d %H:%M}, {platform.node()}, "
              f"{os.cpu_count()} CPUs; {args.seconds:.0f} s per scenario", flush=True)
        scenarios = {"overhead": bench.scenario_overhead, "busy": bench.scenario_busy,
                     "mixed": bench.scenario_mixed, "restart": bench.scenario_restart}
        for name, scenario in scenarios.items():
            if not args.only or name in args.only:
                await scenario()
        print("\n" + bench.report.table())
        gw = bench.gw_status()
        print("\ngateway counters:", json.dumps({m: v["requests"] for m, v in gw.items()}))
        return 0
    finally:
        sup.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each scenario")
    parser.add_argument("--quick", action="store_true", help="10 s scenarios")
    parser.add_argument("--only", action="append", choices=["overhead", "busy", "mixed",
                                                            "restart"],
                        help="run only this scenario (repeatable)")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 10.0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
