"""The event loop stays responsive while the model config is validated over and over.

Validation reads a 14B-shaped GGUF header (6.6 MB, ~50 ms of parsing) on every watcher batch
and every second while a file is pending; it runs in a worker thread, and its reads are large
enough that the worker does not starve the loop thread of the GIL. A 10 ms ticker on the loop
measures how late it fires. bench/loop_lag.py prints the same numbers for validation on the
loop (before) and off it (after).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from supervisor.configuration import ConfigOwner, Validated
from supervisor.engines import engine_for
from supervisor.ggufinfo import inspect_gguf
from supervisor.settings import (
    Engine,
    RuntimeKind,
    ServerSection,
    Settings,
    SupervisorSection,
    WatchSection,
)
from supervisor.status import CheckOutcome, Journal
from supervisor.tinygguf import write_qwen14b_header

pytestmark = pytest.mark.integration

TICK = 0.010
LIMIT = 0.020


def settings_for_a_14b_model(base: Path) -> Settings:
    models = base / "models"
    models.mkdir()
    big = models / "qwen14b.gguf"
    write_qwen14b_header(big)
    with big.open("r+b") as fh:  # sparse: the tensor data is a hole
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


async def test_validating_a_14b_header_repeatedly_never_stalls_the_loop(tmp_path: Path) -> None:
    settings = settings_for_a_14b_model(tmp_path)
    inbox: asyncio.Queue[Validated] = asyncio.Queue()
    owner = ConfigOwner(settings, engine_for(settings.server.engine), inbox.put_nowait,
                        lambda notice: None, Journal(), time.monotonic)
    delays: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            planned = time.perf_counter() + TICK
            await asyncio.sleep(TICK)
            delays.append(time.perf_counter() - planned)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    outcomes = []
    for _ in range(10):
        owner.request("test")
        outcomes.append(owner.on_validated(await inbox.get())[0])
    busy = time.perf_counter() - started
    done.set()
    await task
    assert outcomes[0] is CheckOutcome.APPLIED and set(outcomes[1:]) == {CheckOutcome.UNCHANGED}
    worst = max(delays)
    print(f"10 validations in {busy:.2f}s; {len(delays)} ticks, worst delay "
          f"{worst * 1000:.1f} ms")
    assert len(delays) >= busy / (2 * TICK), "the ticker hardly ran: the loop was blocked"
    assert worst < LIMIT, f"the loop stalled {worst * 1000:.1f} ms during validation"
