"""A stop that arrives while the server is being launched stops the launched server.

The race this guards against (before the effect worker): the terminate ran before the launch
had produced an instance, found nothing to stop, and the launch then left a server running
after the supervisor exited. Both real runtimes: the process runtime driven in-process (so
the stop lands exactly between the launch decision and its outcome), and the docker runtime
stopped by SIGTERM the moment its log says STARTING, as ``systemctl stop`` right after
``systemctl start`` would.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import docker.errors
import pytest
from supervised import Supervised
from testbed import Dockerd

from supervisor.daemon import Daemon, SignalReceived
from supervisor.policy import State
from supervisor.settings import load_settings

pytestmark = pytest.mark.integration


def processes_using(needle: str) -> list[int]:
    """Pids whose command line mentions ``needle`` (the test's own preset path)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry))
    return found


async def test_process_runtime_stop_during_launch_leaves_no_server(make_process_supervised
                                                                   ) -> None:
    sup: Supervised = make_process_supervised({"tiny-a": "tiny-a.gguf"})
    settings = load_settings(sup.settings_file, required=True)
    daemon = Daemon(settings)
    assert await daemon.start() is None
    launching_when_stopped = False
    try:
        deadline = time.monotonic() + 30
        while daemon.exit_code is None:
            assert time.monotonic() < deadline, daemon.status()
            await daemon.process(0.5)
            st = daemon.status()
            if not launching_when_stopped and st.state is State.STARTING and st.instance is None:
                # The launch is decided and not reported back: stop now.
                launching_when_stopped = True
                daemon.post(SignalReceived(signal.SIGTERM))
    finally:
        await daemon.close()
    assert launching_when_stopped
    assert daemon.exit_code == 0
    st = daemon.status()
    assert st.state is State.STOPPED and st.instance is None
    events = [e.event for e in st.recent_events]
    assert "server.launched" in events and events[-1] == "server.stopped", events
    preset = str(settings.supervisor.state_dir / "rendered")
    deadline = time.monotonic() + 5
    while processes_using(preset) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_using(preset) == []


def test_docker_runtime_sigterm_while_starting_leaves_no_container(make_supervised,
                                                                   dockerd: Dockerd) -> None:
    sup: Supervised = make_supervised()
    name = sup.settings["docker"]["container_name"]
    sup.start()
    deadline = time.monotonic() + 60
    while '"new": "STARTING"' not in sup.logs(200):
        assert time.monotonic() < deadline, sup.logs()
        time.sleep(0.01)
    sup.signal(signal.SIGTERM)
    assert sup.proc is not None and sup.proc.wait(60) == 0, sup.logs()
    events = [json.loads(line)["event"] for line in sup.logs(400).splitlines()
              if line.startswith("{")]
    assert events.index("supervisor.stopping") < events.index("server.launched"), (
        "the stop did not land during the launch", events)
    assert events.index("server.launched") < events.index("server.terminated"), events
    try:
        container = dockerd.client().containers.get(name)
    except docker.errors.NotFound:
        return
    assert container.status != "running", container.status
