"""Event-loop lag: a config naming a 14B-shaped GGUF, and a ticker that measures how late the
loop runs. Shared by tests/integration/test_loop_lag.py and bench/loop_lag.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from supervisor.ggufinfo import inspect_gguf
from supervisor.settings import (
    Engine,
    RuntimeKind,
    ServerSection,
    Settings,
    SupervisorSection,
    WatchSection,
)
from supervisor.tinygguf import write_qwen14b_header

TICK = 0.010


def big_model_settings(base: Path) -> Settings:
    """One model: a 14B-shaped GGUF (a 6.6 MB header; the tensor data a sparse hole)."""
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
    """How late (seconds) each tick of a TICK-second ticker on the loop fired while ``work``
    ran."""
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
