"""When READY=1 goes to systemd, and EXTEND_TIMEOUT_USEC until then (notify.py says why)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from daemonkit import Harness

from supervisor.notify import EXTEND_MARGIN_SECONDS, ready_reason, start_time_left
from supervisor.policy import State
from supervisor.server import maintenance_file


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    await harness.close()


@pytest.mark.parametrize(("state", "maintenance", "ready"), [
    (State.RUNNING, False, True), (State.UNHEALTHY, False, True), (State.FATAL, False, True),
    (State.WAITING, False, True), (State.STOPPED, True, True), (State.STOPPED, False, False),
    (State.STARTING, False, False), (State.BACKOFF, False, False),
    (State.STOPPING, False, False)])
def test_ready_once_serving_or_when_waiting_cannot_help(state: State, maintenance: bool,
                                                        ready: bool) -> None:
    assert (ready_reason(state, maintenance=maintenance) is not None) is ready


def test_the_time_left_is_the_supervisors_own_deadline() -> None:
    assert start_time_left(State.STARTING, 100.0, None, 160.0, 600.0) == 540.0
    assert start_time_left(State.STARTING, 100.0, None, 900.0, 600.0) == 0.0
    # From a back-off: the wait, then a whole attempt.
    assert start_time_left(State.BACKOFF, 100.0, 105.0, 101.0, 600.0) == 604.0


def extends(h: Harness) -> list[float]:
    return [int(m.split("=")[1]) / 1e6 for m in h.notifier.sent
            if m.startswith("EXTEND_TIMEOUT_USEC=")]


def readies(h: Harness) -> list[str]:
    return [m for m in h.notifier.sent if m.startswith("READY=1")]


async def test_a_long_first_load_extends_the_start_then_is_ready_once(h: Harness) -> None:
    h.prober.alive = False  # loading: /health does not answer yet
    await h.start()
    await h.tick()
    assert not extends(h), "nothing before the listeners are up"
    h.daemon.listening()
    await h.tick(1)
    timeout = h.settings.server.startup_timeout
    assert extends(h) and extends(h)[-1] == pytest.approx(timeout + EXTEND_MARGIN_SECONDS, abs=2)
    assert not readies(h)
    await h.tick(3)
    assert len(extends(h)) == 1, "sent again only every few seconds"
    await h.tick(20)
    assert len(extends(h)) == 2
    assert extends(h)[-1] == pytest.approx(timeout - 24 + EXTEND_MARGIN_SECONDS, abs=2)
    h.prober.alive = True
    for _ in range(10):
        await h.tick(1)
    assert len(readies(h)) == 1 and "RUNNING" in readies(h)[0]
    assert "models ready 1/1" in readies(h)[0]
    n = len(extends(h))
    await h.tick(30)
    assert len(readies(h)) == 1 and len(extends(h)) == n


async def test_a_start_that_gives_up_is_ready_with_the_reason_in_status(h: Harness) -> None:
    h.runtime.fail_next = "image 'localai' not found"
    await h.start()
    h.daemon.listening()
    await h.until(lambda: h.state == "FATAL", "FATAL")
    await h.tick()
    assert len(readies(h)) == 1 and "FATAL" in readies(h)[0] and "not found" in readies(h)[0]


async def test_maintenance_kept_from_the_last_run_is_ready_while_stopped(
        tmp_path: Path) -> None:
    h = Harness(tmp_path)
    maintenance_file(h.settings).parent.mkdir(parents=True, exist_ok=True)
    maintenance_file(h.settings).write_text("")
    await h.start()
    h.daemon.listening()
    await h.tick(1)
    assert h.state == "STOPPED" and len(readies(h)) == 1 and h.runtime.launched == []
    await h.close()
