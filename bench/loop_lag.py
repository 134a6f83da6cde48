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
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from lagkit import TICK, big_model_settings, measure  # noqa: E402

from supervisor import logs  # noqa: E402
from supervisor.configuration import ConfigOwner, Validated  # noqa: E402
from supervisor.engines import engine_for  # noqa: E402
from supervisor.lint import context_for  # noqa: E402
from supervisor.modelconfig import validate  # noqa: E402
from supervisor.settings import LogFormat, Settings  # noqa: E402
from supervisor.status import Journal  # noqa: E402


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
