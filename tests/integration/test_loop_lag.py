"""Validation never runs on the event loop, and it reads a big header in few large reads.

Validation reads a 14B-shaped GGUF header (6.6 MB, ~50 ms of parsing) on every watcher batch
and every second while a file is pending. Two properties keep the loop responsive, and both
are checked here without timing anything: the check runs in a worker thread, and the header
reader fetches the header in a handful of growing reads (many small reads make the worker
release and retake the GIL so often that the loop thread starves). How late the loop actually
runs is a number for a benchmark, not a test: bench/loop_lag.py prints it.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lagkit import big_model_settings

from supervisor import configuration, ggufinfo
from supervisor.configuration import ConfigOwner, Validated
from supervisor.engines import engine_for
from supervisor.status import CheckOutcome, Journal

pytestmark = pytest.mark.integration

MAX_READS = 16  # the 6.6 MB header takes 8 doubling reads; 64 KiB reads would take ~100


class CountingFile(io.FileIO):
    reads = 0

    def read(self, size: int = -1, /) -> bytes:
        CountingFile.reads += 1
        return super().read(size)


async def test_validation_runs_off_the_loop_and_reads_a_14b_header_in_few_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = big_model_settings(tmp_path)
    threads: list[int] = []
    real_check = configuration.check

    def recording_check(*args: Any) -> configuration.Checked:
        threads.append(threading.get_ident())
        return real_check(*args)

    def counting_open(path: Any, mode: str = "r", buffering: int = -1) -> io.FileIO:
        assert mode == "rb" and buffering == 0
        return CountingFile(path, "r")

    monkeypatch.setattr(configuration, "check", recording_check)
    monkeypatch.setattr(ggufinfo, "open", counting_open, raising=False)
    inbox: asyncio.Queue[Validated] = asyncio.Queue()
    owner = ConfigOwner(settings, engine_for(settings.server.engine), inbox.put_nowait,
                        lambda notice: None, Journal(), time.monotonic)
    outcomes = []
    for _ in range(3):
        CountingFile.reads = 0
        owner.request("test")
        outcomes.append(owner.on_validated(await inbox.get())[0])
        assert 0 < CountingFile.reads <= MAX_READS, f"{CountingFile.reads} reads of the header"
    assert outcomes == [CheckOutcome.APPLIED, CheckOutcome.UNCHANGED, CheckOutcome.UNCHANGED]
    assert len(threads) == 3
    assert threading.get_ident() not in threads, "validation ran on the event loop's thread"
