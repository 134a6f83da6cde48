"""systemd notifications (Type=notify): READY, STATUS, RELOADING, STOPPING, EXTEND_TIMEOUT_USEC
and the watchdog, and when READY=1 is due.

READY=1 means the server serves (so `systemctl start` returning means requests are answered),
or that waiting longer cannot help: the server gave up (FATAL), is stopped for maintenance, or
waits for the container engine. Meanwhile the start is bounded by the supervisor's own
deadlines (server.startup_timeout per attempt, restart.start_retries attempts), which it tells
systemd with EXTEND_TIMEOUT_USEC, so TimeoutStartSec only has to cover the supervisor's own
boot while a 70B model's first load may take minutes.

Silent no-ops when not run by systemd (no NOTIFY_SOCKET), so the daemon never cares.
"""

from __future__ import annotations

import os
import time

import sdnotify

from .policy import State

# EXTEND_TIMEOUT_USEC is the time within which the next word must come: the supervisor's own
# deadline plus this margin, sent again this often.
EXTEND_MARGIN_SECONDS = 30.0
EXTEND_EVERY_SECONDS = 10.0


def ready_reason(state: State, *, maintenance: bool) -> str | None:
    """Why READY=1 may be sent in ``state``, or None while the start is still under way."""
    if state in (State.RUNNING, State.UNHEALTHY):
        return "serving"
    if state is State.FATAL:
        return "gave up starting the server (FATAL)"
    if state is State.WAITING:
        return "waiting for the container engine"
    if state is State.STOPPED and maintenance:
        return "stopped for maintenance"
    return None


def start_time_left(state: State, since: float, retry_at: float | None, now: float,
                    startup_timeout: float) -> float:
    """Seconds the supervisor itself may still wait before it decides this start attempt (or
    the next one, from a back-off); systemd must wait at least this long."""
    if state is State.STARTING:
        return max(0.0, since + startup_timeout - now)
    if state is State.BACKOFF and retry_at is not None:
        return max(0.0, retry_at - now) + startup_timeout
    return startup_timeout


class Notifier:
    def __init__(self) -> None:
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sd = sdnotify.SystemdNotifier() if self._enabled else None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # Ping at half the interval systemd expects, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval: float | None = (
            int(usec) / 2e6 if usec.isdigit() and mine and self._enabled else None
        )
        self._last_ping = 0.0
        self._last_extend: float | None = None

    def _send(self, text: str) -> None:
        if self._sd is not None:
            self._sd.notify(text)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def reloaded(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def extend(self, now: float, seconds: float) -> None:
        """Ask systemd for ``seconds`` more of start-up (at most every EXTEND_EVERY_SECONDS)."""
        if self._last_extend is not None and now - self._last_extend < EXTEND_EVERY_SECONDS:
            return
        self._last_extend = now
        self._send(f"EXTEND_TIMEOUT_USEC={int((seconds + EXTEND_MARGIN_SECONDS) * 1e6)}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self, now: float) -> None:
        if self.watchdog_interval is not None and now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self._send("WATCHDOG=1")
