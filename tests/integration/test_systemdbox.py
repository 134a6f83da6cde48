"""Proves the systemd box (tests/systemdbox.py): systemd 252 boots to ``running`` as PID 1 in a
container of the private dockerd, runs units whose output lands in the journal, serves a port
the host reaches, sees a bind-mounted unix socket, installs a local .deb offline, and leaves
nothing behind.

The fixtures here (``systemd_image``, ``make_systemd_box``, ``systemd_box``) can move to
tests/integration/conftest.py as they are once other tests want them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import systemdbox
from systemdbox import Bind, SystemdBox
from testbed import Dockerd

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="needs root: boots systemd in a container of a private dockerd"),
]

PORT = 40080


@pytest.fixture(scope="session")
def systemd_image(dockerd: Dockerd) -> str:
    """The box image in the session's dockerd (rootfs debootstrapped on the first run ever)."""
    if not systemdbox.rootfs_path().is_file() and shutil.which("debootstrap") is None:
        pytest.skip("debootstrap not installed (apt-get install debootstrap) and no cached "
                    f"rootfs at {systemdbox.rootfs_path()}")
    started = time.monotonic()
    systemdbox.systemd_rootfs()
    ready = time.monotonic()
    tag = systemdbox.systemd_image(dockerd)
    print(f"systemdbox: rootfs {ready - started:.1f}s, import {time.monotonic() - ready:.1f}s")
    return tag


@pytest.fixture
def make_systemd_box(dockerd: Dockerd, systemd_image: str) -> Iterator[Callable[..., SystemdBox]]:
    """Boots boxes (``SystemdBox.boot`` arguments) and removes them all at teardown."""
    boxes: list[SystemdBox] = []

    def make(**kwargs: Any) -> SystemdBox:
        box = SystemdBox.boot(dockerd, **kwargs)
        boxes.append(box)
        print(f"systemdbox: {box.name} running {box.boot_seconds:.1f}s after docker run")
        return box

    yield make
    for box in boxes:
        box.stop()


@pytest.fixture
def systemd_box(make_systemd_box: Callable[..., SystemdBox]) -> SystemdBox:
    return make_systemd_box()


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode()


def wait_get(url: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = get(url)
            if status == 200:
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def wait_journal(box: SystemdBox, unit: str, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while needle not in (text := box.journal(unit)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in the journal of {unit}:\n{text}")
        time.sleep(0.1)
    return text


UNIT = """\
[Unit]
Description=systemdbox probe package

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/python3 -c "import sys; print('lsv-probe on', sys.version.split()[0])"
ExecReload=/bin/echo lsv-probe reloaded
"""


def build_deb(tmp_path: Path) -> Path:
    """A tiny .deb shaped like the supervisor's: depends on python3 only, ships a unit."""
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: lsv-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: bench <b@x>\n"
        "Depends: python3 (>= 3.11)\nDescription: systemdbox probe\n")
    unit_dir = root / "lib/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / "lsv-probe.service").write_text(UNIT)
    deb = tmp_path / "lsv-probe_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


PING_DOCKER = """
import http.client, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sys.argv[1])
conn = Unix("docker")
conn.request("GET", "/_ping")
print(conn.getresponse().read().decode())
"""


def test_box_boots_serves_installs_and_cleans_up(
    make_systemd_box: Callable[..., SystemdBox], dockerd: Dockerd, tmp_path: Path
) -> None:
    """One box for everything: with vfs, each boot copies the whole rootfs."""
    socket_path = dockerd.base / "docker.sock"
    box = make_systemd_box(binds=[Bind(socket_path, "/run/bench-docker.sock")])
    assert box.exec("systemctl", "is-system-running").stdout.strip() == "running"
    assert box.exec("cat", "/proc/1/comm").stdout.strip() == "systemd"

    # A transient unit's output goes to its journal.
    box.exec("systemd-run", "--unit=probe", "--property=Type=exec", "--wait", "--quiet",
             "/bin/echo", "probe-says-hi")
    wait_journal(box, "probe", "probe-says-hi")

    # A unit listening in the box is reached from the host at the box's bridge address.
    box.write_file("/srv/www/hello.txt", "hello from the box\n")
    box.exec("systemd-run", "--unit=web", "--property=Type=exec",
             "--working-directory=/srv/www", "python3", "-m", "http.server", str(PORT))
    url = f"http://{box.address}:{PORT}/hello.txt"
    assert wait_get(url) == "hello from the box\n"
    wait_journal(box, "web", "GET /hello.txt")

    # Its main process can be found, frozen and thawed from the host.
    host_pid = box.unit_host_pid("web")
    assert b"http.server" in Path(f"/proc/{host_pid}/cmdline").read_bytes()
    os.kill(host_pid, signal.SIGSTOP)
    try:
        with pytest.raises(OSError):  # TimeoutError or URLError(timeout)
            get(url, timeout=1.0)
    finally:
        os.kill(host_pid, signal.SIGCONT)
    assert wait_get(url) == "hello from the box\n"

    # The dockerd socket mounted over the /run tmpfs answers from inside.
    listing = box.exec("ls", "-ln", "/run/bench-docker.sock").stdout
    assert listing.startswith("s"), listing
    print(f"systemdbox: socket in the box: {listing.strip()} "
          f"(host gid {socket_path.stat().st_gid})")
    ping = box.exec("python3", "-c", PING_DOCKER, "/run/bench-docker.sock").stdout
    assert ping.strip() == "OK"

    # A local .deb depending on python3 installs offline (the box has no package lists, so
    # apt can only use what is installed) and systemd drives its unit.
    box.copy_in(build_deb(tmp_path), "/tmp/lsv-probe.deb")
    apt = box.exec("apt-get", "install", "-y", "/tmp/lsv-probe.deb",
                   env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=120)
    fetched = [line for line in apt.stdout.splitlines()
               if line.startswith("Get:") and "/tmp/lsv-probe.deb" not in line]
    assert not fetched, apt.stdout
    box.systemctl("start", "lsv-probe")
    box.systemctl("reload", "lsv-probe")
    wait_journal(box, "lsv-probe", "lsv-probe reloaded")
    assert "lsv-probe on 3.11" in box.journal("lsv-probe")
    box.systemctl("stop", "lsv-probe")
    assert box.systemctl("is-active", "lsv-probe", check=False).stdout.strip() == "inactive"

    # stop() leaves no container, mount or cgroup of the box on the host.
    container_id = box.container.id
    box.stop()
    assert container_id not in {c.id for c in dockerd.client().containers.list(all=True)}
    assert container_id not in Path("/proc/self/mountinfo").read_text()
    leftovers = list(Path("/sys/fs/cgroup").glob(f"*/docker/{container_id}"))
    assert not leftovers, leftovers
