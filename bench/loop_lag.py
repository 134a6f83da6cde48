"""Event-loop lag while the model config is validated over and over (a 14B-shaped GGUF).

A 10 ms ticker on the loop records how late each tick fires. Two ways to validate, each
``--runs`` times back to back:

- *on the loop*: ``validate()`` called from a coroutine, which is what the daemon did before
  validation moved off the loop (a watcher batch, and every second while a file was pending);
- *config owner*: ``ConfigOwner.request()`` as the daemon does now: the check runs in a
  worker thread and comes back as an event.

Prints the worst and the 99th-percentile tick delay of each, and their ratio.

Usage: python bench/loop_lag.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from supervisor import logs
from supervisor.configuration import ConfigOwner, Validated
from supervisor.engines import engine_for
from supervisor.ggufinfo import inspect_gguf
from supervisor.lint import context_for
from supervisor.modelconfig import validate
from supervisor.settings import (
    Engine,
    LogFormat,
    RuntimeKind,
    ServerSection,
    Settings,
    SupervisorSection,
    WatchSection,
)
from supervisor.status import Journal
from supervisor.tinygguf import write_qwen14b_header

TICK = 0.010


def big_model_settings(base: Path) -> Settings:
    """A config naming one 14B-shaped GGUF (header only, sparse data), as the bench and the
    loop-lag test use it."""
    models = base / "models"
    models.mkdir(parents=True, exist_ok=True)
    big = models / "qwen14b.gguf"
    if not big.exists():
        write_qwen14b_header(big)
        with big.open("r+b") as fh:
            fh.truncate(inspect_gguf(big).expected_size)
    config = base / "config.yaml"
    config.write_text("- name: qwen14b\n  context_size: 4096\n  parameters:\n"
                      "    model: qwen14b.gguf\n    max_tokens: 256\n")
    return Settings(
        supervisor=SupervisorSection(state_dir=base / "state", status_api=""),
        server=ServerSection(engine=Engine.LLAMA_SERVER, runtime=RuntimeKind.PROCESS,
                             model_config_file=config, models_dir=models),
        watch=WatchSection(enabled=False, settle_seconds=0),
    )


async def measure(work: Callable[[], Awaitable[None]]) -> list[float]:
    """Tick delays (seconds late) while ``work`` runs."""
    delays: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            planned = time.perf_counter() + TICK
            await asyncio.sleep(TICK)
            delays.append(max(0.0, time.perf_counter() - planned))

    task = asyncio.create_task(ticker())
    await asyncio.sleep(5 * TICK)
    await work()
    done.set()
    await task
    return delays


async def on_the_loop(settings: Settings, runs: int) -> None:
    srv = settings.server
    for _ in range(runs):
        validate(srv.model_config_file, srv.models_dir, context_for(settings))
        await asyncio.sleep(0)


async def through_the_owner(settings: Settings, runs: int) -> None:
    inbox: asyncio.Queue[Validated] = asyncio.Queue()
    owner = ConfigOwner(settings, engine_for(settings.server.engine), inbox.put_nowait,
                        lambda notice: None, Journal(), time.monotonic)
    for _ in range(runs):
        owner.request("bench")
        owner.on_validated(await inbox.get())


def summary(delays: list[float]) -> tuple[float, float]:
    ordered = sorted(delays)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return max(delays), p99


async def main_async(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = big_model_settings(Path(tmp))
        srv = settings.server
        start = time.perf_counter()
        validate(srv.model_config_file, srv.models_dir, context_for(settings))
        one = time.perf_counter() - start
        print(f"one validation of the 14B-shaped config: {one * 1000:.1f} ms")
        results = {}
        for label, work in (("on the loop (before)", on_the_loop),
                            ("config owner, worker thread (after)", through_the_owner)):
            delays = await measure(lambda w=work: w(settings, runs))  # type: ignore[misc]
            worst, p99 = summary(delays)
            results[label] = worst
            print(f"{label}: {runs} validations, {len(delays)} ticks of {TICK * 1000:.0f} ms: "
                  f"worst delay {worst * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
                  f"median {statistics.median(delays) * 1000:.2f} ms")
        before, after = results.values()
        print(f"worst delay after / before: {after / before:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    logs.configure(LogFormat.CONSOLE, "warning")
    asyncio.run(main_async(args.runs))


if __name__ == "__main__":
    main()
