"""`supervisorctl stop` / `start`: the server stays down until `start`, whatever else happens
(config changes, escalations, a restart of the supervisor itself)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from daemonkit import Harness

from supervisor.daemon import MaintenanceRequest
from supervisor.policy import Escalate, Restart
from supervisor.runtime import Instance
from supervisor.server import maintenance_file
from supervisor.status import CommandResult
from supervisor.vocab import RestartReason


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    await harness.close()


async def file_becomes(h: Harness, present: bool) -> None:
    """The state dir is written by a thread that posts nothing: poll it."""
    for _ in range(500):
        if maintenance_file(h.settings).exists() is present:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"maintenance file never {'written' if present else 'removed'}")


async def maintenance(h: Harness, on: bool) -> CommandResult:
    reply: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
    h.daemon.post(MaintenanceRequest(reply, on))
    await h.until(reply.done, "the answer")
    return reply.result()


async def test_stop_keeps_the_server_down_until_start(h: Harness) -> None:
    await h.start()
    await h.running()
    assert (await maintenance(h, True)).ok
    await h.until(lambda: h.state == "STOPPED", "stopped")
    st = h.daemon.status()
    assert st.maintenance and h.runtime.terminated
    await file_becomes(h, True)
    # Nothing else starts it: a config change's restart, a model's escalation.
    h.daemon.post(Restart("config changed", cause=RestartReason.CONFIG_CHANGE))
    h.daemon.post(Escalate("tiny-a", "model failed"))
    await h.settle()
    assert h.state == "STOPPED" and h.runtime.launched == ["t1"]
    assert (await maintenance(h, False)).ok
    await h.running()
    assert not h.daemon.status().maintenance and h.runtime.launched == ["t1", "t2"]
    await file_becomes(h, False)


async def test_a_supervisor_restart_keeps_the_maintenance(tmp_path: Path) -> None:
    first = Harness(tmp_path)
    await first.start()
    await first.running()
    assert (await maintenance(first, True)).ok
    await file_becomes(first, True)
    await first.close()
    # The next supervisor finds the server still running (on_stop = leave, say): it adopts
    # it and takes it down again; with none running, it starts nothing.
    second = Harness(tmp_path)
    second.runtime.adoptable = Instance("adopted", "c0ffee", "spec", started_at=4000.0, pid=7)
    await second.start()
    await second.until(lambda: second.state == "STOPPED" and bool(second.runtime.terminated),
                       "adopted, then stopped")
    assert second.daemon.status().maintenance and second.runtime.launched == []
    await second.close()
    third = Harness(tmp_path)
    await third.start()
    await third.settle()
    assert third.state == "STOPPED" and third.runtime.launched == []
    await third.close()


async def test_a_restart_asked_during_a_reload_waits_for_it_and_restarts_once(
        h: Harness) -> None:
    from supervisor.daemon import ReloadRequest, RestartRequest
    from supervisor.status import ReloadResult

    await h.start()
    await h.running()
    config = h.settings.server.model_config_file
    config.write_text(config.read_text().replace("context_size: 1024", "context_size: 2048"))
    loop = asyncio.get_running_loop()
    reloads: list[asyncio.Future[ReloadResult]] = [loop.create_future() for _ in range(2)]
    restarted: asyncio.Future[CommandResult] = loop.create_future()
    h.daemon.post(ReloadRequest(reloads[0]))
    h.daemon.post(ReloadRequest(reloads[1]))  # coalesced with the first
    h.daemon.post(RestartRequest(restarted))  # waits for the reload's outcome
    await h.until(lambda: all(f.done() for f in (*reloads, restarted)), "the answers")
    assert [f.result().applied for f in reloads] == [True, True]
    assert restarted.result().ok
    await h.running()
    st = h.daemon.status()
    # One restart, onto the new config: not one onto the old config and another.
    assert st.restarts == 1 and h.runtime.launched == ["t1", "t2"]
    assert st.restarts_by_reason == {RestartReason.CONFIG_CHANGE: 1}
