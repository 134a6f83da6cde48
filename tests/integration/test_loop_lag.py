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
from lagkit import TICK, big_model_settings, measure

from supervisor.configuration import ConfigOwner, Validated
from supervisor.engines import engine_for
from supervisor.status import CheckOutcome, Journal

pytestmark = pytest.mark.integration

LIMIT = 0.020


async def test_validating_a_14b_header_repeatedly_never_stalls_the_loop(tmp_path: Path) -> None:
    settings = big_model_settings(tmp_path)
    inbox: asyncio.Queue[Validated] = asyncio.Queue()
    owner = ConfigOwner(settings, engine_for(settings.server.engine), inbox.put_nowait,
                        lambda notice: None, Journal(), time.monotonic)
    outcomes = []

    async def validate_ten_times() -> None:
        for _ in range(10):
            owner.request("test")
            outcomes.append(owner.on_validated(await inbox.get())[0])

    started = time.perf_counter()
    delays = await measure(validate_ten_times)
    busy = time.perf_counter() - started
    assert outcomes[0] is CheckOutcome.APPLIED and set(outcomes[1:]) == {CheckOutcome.UNCHANGED}
    worst = max(delays)
    print(f"10 validations in {busy:.2f}s; {len(delays)} ticks, worst delay "
          f"{worst * 1000:.1f} ms")
    assert len(delays) >= busy / (2 * TICK), "the ticker hardly ran: the loop was blocked"
    assert worst < LIMIT, f"the loop stalled {worst * 1000:.1f} ms during validation"
