"""A Debian 12 box with a real systemd 252 as PID 1, run by the bench's private dockerd.

For tests that must see what systemd does with our unit (``apt-get install ./x.deb``, then
``systemctl start/reload/stop``, the journal, a SIGSTOPped main process) rather than what a
test imagines it does.

The root filesystem is made once by ``debootstrap`` and cached as a tarball under
``$LOCALAI_SUPERVISOR_CACHE/systemd-rootfs/<key>.tar`` (default ``~/.cache/localai-supervisor``);
the key changes with the package list, so later runs skip the ~1 min debootstrap. Each dockerd
gets it by ``docker import`` (no registry), once per tag.

How the box is run, and why (found on the bench host: cgroup v1 hybrid, docker 28, no host
systemd):

* ``--cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw``: systemd reads its own cgroup
  (``/docker/<id>``) from /proc/1/cgroup and builds its tree beneath it, which runc deletes
  with the container. Pinned rather than left to docker's default, because ``private`` *with*
  that bind mount makes systemd believe it is at the root and it creates init.scope,
  system.slice... in the host's root cgroups; ``host`` *without* the bind leaves cgroupfs
  read-only and systemd exits at once.
* ``--cap-add SYS_ADMIN --security-opt seccomp=unconfined`` (``--privileged`` does not work
  here), ``--tmpfs /run --tmpfs /run/lock`` as systemd expects, ``--stop-signal SIGRTMIN+3``.
* The container's own bridge address is reachable from the host (the dockerd has its own
  bridge with a host-side address), so services in the box are reached at ``box.address``
  without publishing ports; ``network_mode="host"`` also boots fine if a test needs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import Mount
from testbed import Dockerd

SUITE = "bookworm"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# systemd itself; python3 for the .deb under test (and tiny HTTP services in tests); the
# runtime libraries of a llama-server build; procps/iproute2 to look around (pgrep, ss).
PACKAGES: tuple[str, ...] = (
    "systemd", "systemd-sysv", "dbus", "python3",
    "libstdc++6", "libgcc-s1", "libgomp1",
    "procps", "iproute2",
)
# Bump when _finish_rootfs changes what goes into the tarball.
RECIPE_REVISION = 1
IMAGE_REPO = "localai-supervisor-systemd"
LABEL = "localai-supervisor.systemdbox"


def log(msg: str) -> None:
    print(f"[systemdbox] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Same root as scripts/build_llama_server.py, so one cache directory holds the bench."""
    base = os.environ.get("LOCALAI_SUPERVISOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "localai-supervisor"
    )
    return Path(base) / "systemd-rootfs"


def rootfs_key() -> str:
    """Names the tarball and the image tag: changes with suite, arch, packages or recipe."""
    recipe = {"suite": SUITE, "variant": "minbase", "arch": os.uname().machine,
              "packages": sorted(PACKAGES), "revision": RECIPE_REVISION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def rootfs_path() -> Path:
    """Where the tarball is (or will be): lets a fixture tell "cached" from "must build"."""
    return cache_dir() / f"{rootfs_key()}.tar"


def systemd_rootfs() -> Path:
    """The cached rootfs tarball, debootstrapped first if missing (~1 min, needs root + network).

    Built in a temporary sibling and renamed into place under an flock, so an interrupted
    build leaves nothing half-made and two pytest processes build it once.
    """
    final = rootfs_path()
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with (final.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_file():  # built by the process we waited for
            return final
        for stale in final.parent.glob(".build-*"):  # ours to clear: we hold the lock
            _remove_tree(stale)
        if shutil.which("debootstrap") is None:
            raise FileNotFoundError("debootstrap not installed (apt-get install debootstrap)")
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.stem}-", dir=final.parent))
        try:
            started = time.monotonic()
            root = tmp / "rootfs"
            log(f"debootstrap {SUITE} ({', '.join(PACKAGES)}) into {root}")
            out = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 SUITE, str(root), MIRROR],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
                # debootstrap holds the lock too: should this process be killed, the next
                # one waits for the orphan to finish before clearing its build directory.
                pass_fds=(lock.fileno(),),
            )
            if out.returncode != 0:
                raise RuntimeError(f"debootstrap failed ({out.returncode}):\n"
                                   + "\n".join(out.stdout.splitlines()[-40:]))
            _finish_rootfs(root)
            staged = tmp / "rootfs.tar"
            subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf",
                            str(staged), "."], check=True)
            staged.rename(final)
            log(f"rootfs {final} ({final.stat().st_size / 1e6:.0f} MB) built in "
                f"{time.monotonic() - started:.1f}s")
        finally:
            _remove_tree(tmp)
    return final


def _finish_rootfs(root: Path) -> None:
    """Make the tree small and offline: no package lists (so ``apt-get install ./x.deb`` can
    only use what is installed and never fetches), no .debs, docs, man pages or locales."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*", "usr/share/doc/*", "usr/share/man/*",
                    "usr/share/info/*", "usr/share/locale/*"):
        for path in root.glob(pattern):
            if path.name in ("lock", "partial"):  # apt's own: keep them as apt left them
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # A fresh machine-id per boot (systemd makes a transient one when the file is empty).
    (root / "etc/machine-id").write_text("")


def _remove_tree(path: Path) -> None:
    """rmtree that first unmounts what debootstrap may have left mounted (proc, sys, a /dev
    bind) after an interruption: rmtree must never descend into the host's /dev."""
    prefix = f"{path}/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mnt in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    if any(m.startswith(prefix) for m in mounts):
        raise RuntimeError(f"{path} still has mounts beneath it; not removing it")
    shutil.rmtree(path, ignore_errors=True)


def systemd_image(dockerd: Dockerd) -> str:
    """Tag of the box image in ``dockerd``, imported from the cached rootfs on first use."""
    tag = f"{IMAGE_REPO}:{rootfs_key()}"
    with contextlib.suppress(docker.errors.ImageNotFound):
        dockerd.client().images.get(tag)
        return tag
    tarball = systemd_rootfs()
    started = time.monotonic()
    out = subprocess.run(
        ["docker", "-H", dockerd.host, "import", "--change", 'CMD ["/sbin/init"]',
         str(tarball), tag],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"docker import of {tarball} failed: {out.stderr.strip()}")
    log(f"imported {tag} in {time.monotonic() - started:.1f}s")
    return tag


@dataclass(frozen=True)
class Bind:
    """A host path mounted into the box (a file, a directory or a unix socket)."""

    source: Path | str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ExecResult:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class BoxError(AssertionError):
    """A command in the box failed or the box did not boot; the message carries the output.

    An AssertionError so pytest shows it like a failed check, with the full text."""


_names = itertools.count()


@dataclass
class SystemdBox:
    """One booted container with systemd as PID 1. Use :meth:`boot`, end with :meth:`stop`."""

    dockerd: Dockerd
    container: Container
    boot_seconds: float = 0.0
    _started: float = field(default_factory=time.monotonic, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    def start(cls, dockerd: Dockerd, *, binds: Sequence[Bind] = (),
              options: Mapping[str, Any] | None = None, name: str | None = None) -> SystemdBox:
        """Create and start the container; does not wait for systemd (see :meth:`boot`).

        ``options`` go to ``client.containers.run`` and win over the defaults, e.g.
        ``{"network_mode": "host"}`` or ``{"environment": {...}}``.
        """
        image = systemd_image(dockerd)
        mounts = [Mount("/sys/fs/cgroup", "/sys/fs/cgroup", type="bind", read_only=False)]
        mounts += [Mount(b.target, str(b.source), type="bind", read_only=b.read_only)
                   for b in binds]
        run: dict[str, Any] = {
            "name": name or f"lsv-systemd-{os.getpid()}-{next(_names)}",
            "detach": True,
            "cgroupns": "host",
            "cap_add": ["SYS_ADMIN"],
            "security_opt": ["seccomp=unconfined"],
            "tmpfs": {"/run": "", "/run/lock": ""},
            "mounts": mounts,
            # What `systemctl poweroff` is to systemd; SIGTERM would make it re-execute.
            # (`docker import --change` cannot set STOPSIGNAL.)
            "stop_signal": "SIGRTMIN+3",
            "labels": {LABEL: "1"},
            **(options or {}),
        }
        started = time.monotonic()
        try:
            container = dockerd.client().containers.run(image, **run)
        except docker.errors.APIError:
            # run = create + start: a refused start leaves the created container behind.
            with contextlib.suppress(docker.errors.DockerException):
                dockerd.client().containers.get(run["name"]).remove(force=True)
            raise
        return cls(dockerd, container, _started=started)

    @classmethod
    def boot(cls, dockerd: Dockerd, *, binds: Sequence[Bind] = (),
             options: Mapping[str, Any] | None = None, name: str | None = None,
             timeout: float = 60.0) -> SystemdBox:
        """:meth:`start` then :meth:`wait_running`; the container is removed if that fails."""
        box = cls.start(dockerd, binds=binds, options=options, name=name)
        try:
            box.wait_running(timeout)
        except BaseException:
            box.stop()
            raise
        return box

    def __enter__(self) -> SystemdBox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.container.name)

    @property
    def address(self) -> str:
        """Host-reachable address of the box: its bridge IP, or 127.0.0.1 on the host network."""
        self.container.reload()
        settings = self.container.attrs["NetworkSettings"]
        if self.container.attrs["HostConfig"].get("NetworkMode") == "host":
            return "127.0.0.1"
        for net in (settings.get("Networks") or {}).values():
            if net.get("IPAddress"):
                return str(net["IPAddress"])
        raise BoxError(f"{self.name} has no IP address: {json.dumps(settings)[:2000]}")

    def wait_running(self, timeout: float = 60.0, allow_degraded: bool = False) -> float:
        """Poll ``systemctl is-system-running`` until ``running``; returns seconds since
        :meth:`start` asked for the container (creating it, a vfs copy, is ~1.5 s of that).
        ``degraded`` fails (with ``systemctl --failed`` and the failed units' journal) unless
        allowed: a failing unit in the box would otherwise be noise that hides the one a
        test is about."""
        started = time.monotonic()
        deadline = started + timeout
        state = "(no answer)"
        while time.monotonic() < deadline:
            self.container.reload()
            if self.container.status not in ("created", "running"):
                raise BoxError(f"{self.name} exited ({self.container.status}) while booting:\n"
                               f"{self.diagnostics()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                res = self.exec("systemctl", "is-system-running", check=False, timeout=10)
                state = res.stdout.strip() or res.stderr.strip()
            if state == "running" or (state == "degraded" and allow_degraded):
                break
            if state in ("degraded", "maintenance"):
                raise BoxError(f"{self.name}: systemd is {state}:\n{self.diagnostics()}")
            time.sleep(0.1)
        else:
            raise BoxError(f"{self.name}: systemd not running after {timeout:.0f}s "
                           f"(last: {state}):\n{self.diagnostics()}")
        seconds = time.monotonic() - self._started
        self.boot_seconds = self.boot_seconds or seconds
        return seconds

    def diagnostics(self) -> str:
        """What to read when the box misbehaves: failed units, their journal, warnings."""
        parts: list[str] = []
        for title, argv in (
            ("systemctl --failed", ["systemctl", "--failed", "--no-pager"]),
            ("journal of failed units",
             ["sh", "-c", "for u in $(systemctl --failed --plain --no-legend | "
                          "awk '{print $1}'); do journalctl -b -u \"$u\" --no-pager -n 30; done"]),
            ("journal warnings", ["journalctl", "-b", "-p", "warning", "--no-pager", "-n", "50"]),
        ):
            try:
                res = self.exec(*argv, check=False, timeout=15)
                parts.append(f"--- {title}:\n{res.stdout}{res.stderr}")
            except (subprocess.TimeoutExpired, BoxError, OSError) as err:
                parts.append(f"--- {title}: ({err})")
        with contextlib.suppress(docker.errors.DockerException):
            logs = self.container.logs(tail=50).decode(errors="replace")
            parts.append(f"--- docker logs:\n{logs}")
        return "\n".join(parts)

    # -- commands ---------------------------------------------------------------------------

    def exec(self, *argv: str, check: bool = True, timeout: float = 60.0,
             input: str | None = None, env: Mapping[str, str] | None = None,
             user: str | None = None) -> ExecResult:
        """Run ``argv`` in the box (``docker exec``). With ``check`` a non-zero exit raises
        :class:`BoxError` carrying stdout and stderr. ``timeout`` bounds the host side
        (raises ``subprocess.TimeoutExpired``); a process it abandons may live on in the box."""
        cmd = ["docker", "-H", self.dockerd.host, "exec"]
        if input is not None:
            cmd.append("-i")
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        if user is not None:
            cmd += ["-u", user]
        cmd += [self.name, *argv]
        out = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                             check=False)
        res = ExecResult(tuple(argv), out.returncode, out.stdout, out.stderr)
        if check and not res.ok:
            raise BoxError(f"in {self.name}: {shlex.join(argv)} exited {res.rc}\n"
                           f"--- stdout:\n{res.stdout}--- stderr:\n{res.stderr}")
        return res

    def sh(self, script: str, **kwargs: Any) -> ExecResult:
        """``sh -c script`` in the box; keyword arguments as for :meth:`exec`."""
        return self.exec("sh", "-c", script, **kwargs)

    def copy_in(self, host_path: Path | str, container_path: str) -> None:
        """``docker cp`` a file or directory into the box (not onto its /run tmpfs: use
        :meth:`write_file` or a :class:`Bind` there)."""
        subprocess.run(["docker", "-H", self.dockerd.host, "cp", str(host_path),
                        f"{self.name}:{container_path}"], check=True, capture_output=True)

    def write_file(self, container_path: str, text: str, mode: int = 0o644) -> None:
        """Write ``text`` to a file in the box (parents made), e.g. a unit drop-in."""
        self.exec("sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
                  "sh", container_path, f"{mode:o}", input=text)

    def systemctl(self, *args: str, check: bool = True, timeout: float = 90.0) -> ExecResult:
        return self.exec("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def journal(self, unit: str, lines: int = 100) -> str:
        """``journalctl -u UNIT -n LINES -o cat``: the unit's messages without prefixes."""
        return self.exec("journalctl", "-u", unit, "--no-pager", "-n", str(lines), "-o", "cat",
                         check=False).stdout

    def main_pid(self, unit: str) -> int:
        """The unit's MainPID as the box sees it (0 when it has none)."""
        return int(self.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip())

    # -- host side --------------------------------------------------------------------------

    def init_host_pid(self) -> int:
        """Host PID of the box's systemd."""
        self.container.reload()
        return int(self.container.attrs["State"]["Pid"])

    def host_pid(self, container_pid: int) -> int:
        """Host PID of the box's process ``container_pid`` (for signals sent from the host,
        e.g. SIGSTOP fault injection): found by NSpid among the host processes that share
        the box's PID namespace."""
        ns = os.readlink(f"/proc/{self.init_host_pid()}/ns/pid")
        for pid, nspids in _host_pids_in_namespace(ns):
            if nspids[-1] == container_pid:
                return pid
        raise BoxError(f"no process {container_pid} in {self.name}")

    def unit_host_pid(self, unit: str) -> int:
        """Host PID of ``unit``'s main process."""
        pid = self.main_pid(unit)
        if pid == 0:
            raise BoxError(f"{unit} has no main process in {self.name}:\n"
                           f"{self.systemctl('status', unit, check=False).stdout}")
        return self.host_pid(pid)

    def stop(self) -> None:
        """Remove the container (SIGKILL, no shutdown: tests want it gone, not polite).
        Idempotent and quiet when the container or its dockerd is already gone; runc
        deletes the box's cgroups with it."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            self.container.remove(force=True, v=True)


def _host_pids_in_namespace(ns: str) -> Iterator[tuple[int, list[int]]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns/pid") != ns:
                continue
            status = (entry / "status").read_text()
        except OSError:  # gone meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                yield int(entry.name), [int(p) for p in line.split()[1:]]

