"""Structured logging: JSON lines for files and pipes, readable columns on a terminal, and
under journald one line per event with its priority and without a second timestamp."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Iterator, MutableMapping
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from .settings import LogFormat


class EventRing:
    """The daemon's last structured events, for ``supervisorctl events``, and live followers
    (``-f``). A log sink, not state anyone decides from: a structlog processor feeds it, from
    whichever thread logged."""

    def __init__(self, keep: int = 1000, follower_backlog: int = 1000) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=keep)
        self._followers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]] = []
        self._backlog = follower_backlog
        self._lock = threading.Lock()

    def __call__(self, logger: Any, method: str,
                 event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        record = {k: v if isinstance(v, str | int | float | bool | type(None) | list | dict)
                  else str(v) for k, v in event_dict.items() if k != "exc_info"}
        with self._lock:
            self._events.append(record)
            followers = list(self._followers)
        for loop, queue in followers:
            with contextlib.suppress(RuntimeError):  # its loop is closed: it is leaving
                loop.call_soon_threadsafe(_offer, queue, record)
        return event_dict

    def recent(self, n: int) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)[-n:] if n > 0 else []

    @contextlib.contextmanager
    def follow(self) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of the events logged from now on (on the caller's loop)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._backlog)
        entry = (asyncio.get_running_loop(), queue)
        with self._lock:
            self._followers.append(entry)
        try:
            yield queue
        finally:
            with self._lock:
                self._followers.remove(entry)


def _offer(queue: asyncio.Queue[dict[str, Any]], record: dict[str, Any]) -> None:
    with contextlib.suppress(asyncio.QueueFull):  # a follower that cannot keep up misses some
        queue.put_nowait(record)


EVENTS = EventRing()


def under_journald(environ: MutableMapping[str, str] | None = None, fd: int = 2) -> bool:
    """Whether ``fd`` is the stream systemd connected to the journal (JOURNAL_STREAM names its
    device and inode, so a redirected stderr of a child of the unit does not count)."""
    env = os.environ if environ is None else environ
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


# sd-daemon(3) priority prefixes: journald stores the level, so `journalctl -p err` works.
_PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "info": 6, "debug": 7}


def _journal_line(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
    """One journal line: ``<prio>event key=value ...``; journald adds time, unit and pid."""
    level = str(event_dict.pop("level", "info"))
    event_dict.pop("timestamp", None)
    event = str(event_dict.pop("event", ""))
    fields = " ".join(f"{k}={_journal_value(v)}" for k, v in event_dict.items())
    return f"<{_PRIORITY.get(level, 6)}>{event}" + (f" {fields}" if fields else "")


def _journal_value(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    if text and not any(c.isspace() or c in '"=' for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def configure(fmt: LogFormat = LogFormat.AUTO, level: str = "info") -> None:
    """``auto``: columns on a terminal, one prefixed line per event under journald, else
    JSON lines. ``json`` and ``console`` are used as asked (JSON keeps its timestamp: it is
    read by machines that may ship it elsewhere)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    tty = sys.stderr.isatty()
    renderer: structlog.typing.Processor
    if fmt is LogFormat.CONSOLE or (fmt is LogFormat.AUTO and tty):
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
    elif fmt is LogFormat.AUTO and under_journald():
        renderer = _journal_line
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            EVENTS,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


# A bounded error text: whatever a client sent never makes a log line longer than this.
MAX_ERROR_TEXT = 200


class _StructlogHandler(logging.Handler):
    """aiohttp's server errors (a malformed request, a handler's exception) as one structured
    event each: the message and the exception cut to MAX_ERROR_TEXT, no traceback, no echo of
    what the client sent."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        fields = {"error": record.getMessage()[:MAX_ERROR_TEXT],
                  "exception": type(exc).__name__ if exc else None,
                  "detail": str(exc)[:MAX_ERROR_TEXT] if exc else None,
                  "action": "answered the client with an error; nothing else affected"}
        logger = structlog.get_logger("supervisor.http")
        if isinstance(exc, HttpProcessingError):  # the client's bytes were not HTTP
            fields["action"] = "answered with a short error status; nothing else affected"
            logger.warning("http.bad_request", **fields)
        elif record.levelno >= logging.ERROR:
            logger.error("http.request_failed", **fields)
        elif record.levelno >= logging.WARNING:
            logger.warning("http.request_failed", **fields)
        else:
            logger.debug("http.request_failed", **fields)


def http_logger() -> logging.Logger:
    """The logger the daemon's HTTP servers (status API, control socket, gateway) report
    their errors to (aiohttp's ``logger`` argument)."""
    logger = logging.getLogger("localai_supervisor.http")
    if not logger.handlers:
        logger.addHandler(_StructlogHandler())
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
    return logger
