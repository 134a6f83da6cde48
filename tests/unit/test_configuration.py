"""The configuration owner on a fake clock: coalesced checks, a copy that stopped, and one
log event per rejected change."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from daemonkit import CONFIG, FakeClock, make_settings

from supervisor.configuration import STALLED_SECONDS, ConfigApplied, ConfigOwner, Validated
from supervisor.engines import engine_for
from supervisor.settings import Settings
from supervisor.status import CheckOutcome, Journal


class Owner:
    """A ConfigOwner whose checks the test waits for."""

    def __init__(self, settings: Settings) -> None:
        self.clock = FakeClock()
        self.inbox: asyncio.Queue[Validated] = asyncio.Queue()
        self.applied: list[ConfigApplied] = []
        self.owner = ConfigOwner(settings, engine_for(settings.server.engine),
                                 self.inbox.put_nowait, self.applied.append, Journal(),
                                 self.clock, wall=lambda: 5000.0)

    async def check(self) -> CheckOutcome:
        self.owner.request("test")
        outcome, _ = self.owner.on_validated(await asyncio.wait_for(self.inbox.get(), 10))
        return outcome


async def test_a_copy_that_stopped_growing_says_so_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    model = settings.server.models_dir / "tiny-a.gguf"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])  # a copy cut off halfway
    o = Owner(settings)
    with structlog.testing.capture_logs() as logs:
        assert await o.check() is CheckOutcome.PENDING
        (pending,) = o.owner.snapshot().pending
        assert "incomplete" in pending.reason and "stopped" not in pending.reason
        o.clock.now += STALLED_SECONDS - 1
        await o.check()
        assert "stopped" not in o.owner.snapshot().pending[0].reason
        o.clock.now += 1
        await o.check()
        (pending,) = o.owner.snapshot().pending
        assert "its size has not changed for 2 min: the copy seems to have stopped" in (
            pending.reason)
        o.clock.now += 60
        await o.check()
    stalled = [e for e in logs if e["event"] == "config.pending_stalled"]
    assert len(stalled) == 1 and stalled[0]["size"] == len(data) // 2
    # It grows again: a copy in progress, not a stopped one.
    with model.open("ab") as fh:
        fh.write(data[len(data) // 2: len(data) * 3 // 4])
    await o.check()
    assert "stopped" not in o.owner.snapshot().pending[0].reason
    # Complete: applied.
    model.write_bytes(data)
    assert await o.check() is CheckOutcome.APPLIED


async def test_one_log_event_per_rejected_change(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    config = settings.server.model_config_file
    config.write_text("- name: tiny-a\n  context_size: huge\n"
                      "- name: tiny-b\n  parameters: {model: nope.gguf}\n")
    o = Owner(settings)
    with structlog.testing.capture_logs() as logs:
        assert await o.check() is CheckOutcome.REJECTED
        assert await o.check() is CheckOutcome.REJECTED  # the same files checked again
        config.write_text("- name: [\n")
        assert await o.check() is CheckOutcome.REJECTED  # another rejected change
    rejected = [e for e in logs if e["event"] == "config.rejected"]
    assert len(rejected) == 2
    assert len(rejected[0]["errors"]) == 2  # every error of the change, in one event
    assert rejected[0]["line"] == 2 and rejected[0]["field"] == "tiny-a.context_size"
    assert "invalid YAML" in rejected[1]["error"]
    config.write_text(CONFIG)
    assert await o.check() is CheckOutcome.APPLIED
    assert o.owner.snapshot().rejected is None
