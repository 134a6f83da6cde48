"""Structured logging: JSON lines for journald and files, readable columns on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from .settings import LogFormat


def configure(fmt: LogFormat = LogFormat.AUTO, level: str = "info") -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    use_console = fmt is LogFormat.CONSOLE or (fmt is LogFormat.AUTO and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
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
