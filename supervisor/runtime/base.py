"""Where the server runs: the interface both runtimes (docker, process) implement."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from ..spec import ServerSpec


@dataclass(frozen=True)
class Instance:
    """One started server: a container (id) or a child process (pid)."""

    token: str
    ident: str
    spec_digest: str
    # Wall-clock time the instance itself started (an adopted container: its StartedAt).
    started_at: float
    pid: int | None = None
    image: str | None = None


@dataclass(frozen=True)
class InstanceExited:
    token: str
    exit_code: int | None
    oom_killed: bool = False
    detail: str = ""
    # Found dead only after the container engine came back: its outage stopped it.
    outage: bool = False
    # Wall-clock time of the exit when known (its log ends there).
    at: float | None = None
    # The container id (docker), for what is asked about the exit afterwards.
    ident: str = ""

    @property
    def reason(self) -> str:
        parts = [f"exit code {self.exit_code}" if self.exit_code is not None else "exited"]
        if self.oom_killed:
            parts.append("OOM-killed")
        if self.detail:
            parts.append(self.detail)
        return ", ".join(parts)


@dataclass(frozen=True)
class InstancePaused:
    """The container engine froze the instance (``docker pause``)."""

    token: str


@dataclass(frozen=True)
class InstanceHealth:
    """The container engine's own verdict (Docker HEALTHCHECK), when the image has one."""

    token: str
    healthy: bool
    detail: str = ""


@dataclass(frozen=True)
class RuntimeConnection:
    """The runtime lost or regained its container engine (Docker's API; docker only)."""

    connected: bool
    detail: str = ""


RuntimeEvent = InstanceExited | InstancePaused | InstanceHealth | RuntimeConnection
Emit = Callable[[RuntimeEvent], None]


class LaunchError(Exception):
    """The instance could not be started; the message says why and what to do.

    ``permanent``: retrying cannot help without a change (a missing image or binary).
    ``engine_down``: the container engine did not answer at all.
    """

    def __init__(self, message: str, *, permanent: bool = False,
                 engine_down: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.engine_down = engine_down


class Runtime(Protocol):
    """Starts, stops and watches the one server instance; reports via ``emit``."""

    name: str

    async def open(self, emit: Emit) -> None:
        """Connect and start watching; events go to ``emit`` from the event loop."""
        ...

    async def find(self, spec_digest: str) -> Instance | None:
        """A running instance that already matches ``spec_digest`` (to adopt), else None."""
        ...

    async def launch(self, spec: ServerSpec) -> Instance:
        """Make the instance run ``spec`` (recreate it if needed); raise LaunchError."""
        ...

    async def terminate(self, timeout: float) -> None:
        """Stop the current instance: graceful, then killed after ``timeout``."""
        ...

    async def unpause(self) -> None:
        """Thaw the current instance (``docker pause`` undone); raise if it cannot be."""
        ...

    async def detach(self) -> None:
        """Stop watching but leave the instance running (on_stop = leave)."""
        ...

    async def exit_details(self, exited: InstanceExited) -> InstanceExited:
        """What the fast exit report left out (OOMKilled), asked after the relaunch began."""
        ...

    async def logs(self, lines: int, exited: InstanceExited | None = None) -> list[str]:
        """The last ``lines`` of the server's log; with ``exited``, of that dead instance
        only (it may already have been relaunched)."""
        ...

    def follow_logs(self) -> AsyncIterator[str]:
        """The server's log lines from now on, as they are written (``supervisorctl logs
        -f``); ends only when the caller stops reading."""
        ...

    async def close(self) -> None:
        ...
