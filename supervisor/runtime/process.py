"""Process runtime: the server as a child process group of the supervisor (no container engine).

The child gets its own session so a terminal's Ctrl-C reaches the supervisor only, and the
whole group is signalled on stop: llama-server's router spawns one child per model, which
must not outlive it. A pidfile lets the next supervisor clean up a group left behind by a
supervisor that was SIGKILLed (a non-child cannot be watched, so it is not adopted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from ..settings import Settings
from ..spec import ServerSpec
from .base import Emit, Instance, InstanceExited, LaunchError

log = structlog.get_logger("supervisor.runtime.process")

# Environment passed through from the supervisor; everything else comes from the spec.
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES")
_LOG_KEEP_BYTES = 8 * 1024 * 1024
_MARKER_PREFIX = "--- localai-supervisor: starting "


def _proc_start_ticks(pid: int) -> int | None:
    """Process start time from /proc, to tell our old child from a recycled pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def _marker(token: str) -> str:
    """The line the log gets before each instance's own output."""
    return f"--- localai-supervisor: starting {token} "


def _section(lines: list[str], token: str) -> list[str]:
    """The log lines of instance ``token`` only (a relaunch may already have written more)."""
    start = 0
    for i, line in enumerate(lines):
        if line.startswith(_marker(token)):
            start = i + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(_MARKER_PREFIX)),
               len(lines))
    return lines[start:end]


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


FOLLOW_POLL_SECONDS = 0.25


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> tuple[int, bytes]:
    """(the new offset, the bytes after ``offset``); from 0 when the file got shorter."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size < offset:
                offset = 0
            fh.seek(offset)
            data = fh.read(1 << 20)
    except OSError:
        return offset, b""
    return offset + len(data), data


class ProcessRuntime:
    name = "process"

    def __init__(self, settings: Settings) -> None:
        self._state_dir = settings.supervisor.state_dir
        self._pidfile = self._state_dir / "server.pid"
        self.log_path = self._state_dir / "server.log"
        self._emit: Emit | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._token: str | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._expected_exit: set[str] = set()

    async def open(self, emit: Emit) -> None:
        self._emit = emit
        self._state_dir.mkdir(parents=True, exist_ok=True)
        await self._reap_stale()

    async def _reap_stale(self) -> None:
        try:
            info = json.loads(self._pidfile.read_text())
        except (OSError, ValueError):
            return
        pid, pgid, ticks = int(info["pid"]), int(info["pgid"]), info.get("start_ticks")
        if _proc_start_ticks(pid) is not None and _proc_start_ticks(pid) == ticks:
            log.warning("process.stale_killed", pid=pid, cause="left by an earlier supervisor",
                        action="terminated its process group before starting")
            _signal_group(pgid, signal.SIGTERM)
            for _ in range(50):
                if _proc_start_ticks(pid) is None:
                    break
                await asyncio.sleep(0.1)
            _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._pidfile.unlink()

    async def find(self, spec_digest: str) -> Instance | None:
        return None

    def _rotate_log(self) -> None:
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > _LOG_KEEP_BYTES:
                self.log_path.replace(self.log_path.with_suffix(".log.1"))

    async def launch(self, spec: ServerSpec) -> Instance:
        if self._proc is not None and self._proc.returncode is None:
            await self.terminate(10)
        binary = shutil.which(spec.program)
        if binary is None:
            raise LaunchError(f"server binary {spec.program!r} not found; set process.binary",
                              permanent=True)
        env = {k: v for k, v in os.environ.items() if k in _PASS_ENV}
        env.update(dict(spec.env))
        self._rotate_log()
        token = uuid.uuid4().hex[:12]
        with self.log_path.open("ab") as out:
            out.write(f"{_marker(token)}at {time.ctime()}\n".encode())
            out.flush()
            try:
                proc = await asyncio.create_subprocess_exec(
                    binary, *spec.args, env=env, cwd=str(self._state_dir),
                    stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                    start_new_session=True,
                )
            except OSError as exc:
                raise LaunchError(f"cannot execute {binary}: {exc.strerror}",
                                  permanent=isinstance(exc, PermissionError)) from exc
        self._proc, self._token = proc, token
        self._pidfile.write_text(json.dumps({
            "pid": proc.pid, "pgid": proc.pid, "start_ticks": _proc_start_ticks(proc.pid),
            "spec": spec.digest(),
        }))
        self._waiter = asyncio.create_task(self._wait(proc, token), name=f"wait-{token}")
        return Instance(token=token, ident=str(proc.pid), spec_digest=spec.digest(),
                        started_at=time.time(), pid=proc.pid)

    async def _wait(self, proc: asyncio.subprocess.Process, token: str) -> None:
        code = await proc.wait()
        # The router's per-model children share the group; none may outlive it.
        _signal_group(proc.pid, signal.SIGKILL)
        if token in self._expected_exit:
            self._expected_exit.discard(token)
            return
        if self._token == token:
            self._token = None
        detail = f"killed by {signal.Signals(-code).name}" if code < 0 else ""
        if self._emit is not None:
            self._emit(InstanceExited(token, code, detail=detail, at=time.time()))

    async def terminate(self, timeout: float) -> None:
        proc, token = self._proc, self._token
        if proc is None or token is None:
            return
        self._expected_exit.add(token)
        self._token = None
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.warning("process.kill", pid=proc.pid, cause=f"no exit within {timeout:g}s",
                            action="SIGKILL to the process group")
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._waiter is not None:
            await self._waiter
        with contextlib.suppress(OSError):
            self._pidfile.unlink()

    async def unpause(self) -> None:
        # Nothing here freezes a child (no pause events); SIGCONT is the nearest thaw.
        if self._proc is not None and self._proc.returncode is None:
            _signal_group(self._proc.pid, signal.SIGCONT)

    async def detach(self) -> None:
        # A child process cannot outlive our watch usefully: `leave` still stops it.
        await self.terminate(10)

    async def exit_details(self, exited: InstanceExited) -> InstanceExited:
        return exited  # a child's exit status says all there is

    async def logs(self, lines: int, exited: InstanceExited | None = None) -> list[str]:
        def tail() -> list[str]:
            try:
                with self.log_path.open("rb") as fh:
                    fh.seek(0, os.SEEK_END)
                    size = fh.tell()
                    fh.seek(max(0, size - 256 * 1024))
                    data = fh.read().decode("utf-8", "replace")
            except OSError:
                return []
            text = data.splitlines()
            if exited is not None:
                text = _section(text, exited.token)
            return list(deque(text, maxlen=lines))

        return await asyncio.to_thread(tail)

    async def follow_logs(self) -> AsyncIterator[str]:
        """Reads only what was appended since the last look (every FOLLOW_POLL_SECONDS); a
        log rotated or truncated meanwhile is followed from its start."""
        offset = await asyncio.to_thread(_size_of, self.log_path)
        pending = b""
        while True:
            offset, chunk = await asyncio.to_thread(_read_from, self.log_path, offset)
            if not chunk:
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
                continue
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace")

    async def close(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()
