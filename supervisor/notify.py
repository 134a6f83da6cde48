"""systemd notifications (Type=notify): READY, STATUS, RELOADING, STOPPING and the watchdog.

Silent no-ops when not run by systemd (no NOTIFY_SOCKET), so the daemon never cares.
"""

from __future__ import annotations

import os
import time

import sdnotify


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

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self, now: float) -> None:
        if self.watchdog_interval is not None and now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self._send("WATCHDOG=1")
