"""Runtimes: where the server runs (a Docker container, or a host child process)."""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

from ..engines import EngineAdapter
from ..settings import RuntimeKind, Settings
from .base import (
    Instance,
    InstanceExited,
    InstanceHealth,
    InstancePaused,
    LaunchError,
    Runtime,
    RuntimeConnection,
    RuntimeEvent,
)

__all__ = [
    "Instance",
    "InstanceExited",
    "InstanceHealth",
    "InstancePaused",
    "LaunchError",
    "Runtime",
    "RuntimeConnection",
    "RuntimeEvent",
    "make_runtime",
    "program_for",
]


def _cached_llama_server() -> Path | None:
    """The test bench's build (scripts/build_llama_server.py), newest version first."""
    base = os.environ.get("LOCALAI_SUPERVISOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "localai-supervisor"
    )
    found = sorted(Path(base, "llama-server").glob("*/llama-server"), reverse=True)
    return found[0] if found else None


def program_for(settings: Settings, engine: EngineAdapter) -> str:
    """The image (docker) or binary (process) that runs the engine."""
    if settings.server.runtime is RuntimeKind.DOCKER:
        return settings.docker.image
    if settings.process.binary is not None:
        return str(settings.process.binary)
    if shutil.which(engine.default_binary) is None and engine.default_binary == "llama-server":
        cached = _cached_llama_server()
        if cached is not None:
            return str(cached)
    return engine.default_binary


def _import_requests_without_charset_detection() -> None:
    """Import requests (docker-py's transport) without a charset detector: 2.9 MB of the
    daemon's RSS that nothing here uses.

    The Docker API answers JSON in UTF-8, which is what requests (2.32+) assumes when no
    detector is installed. An older requests cannot import without one: it then gets it.
    """
    if "requests" in sys.modules:
        return
    blocked = [name for name in ("chardet", "charset_normalizer") if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # requests warns that it has no detector
            import requests  # noqa: F401
    except ImportError:
        pass  # an older requests: imported with its detector by the docker runtime below
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def make_runtime(settings: Settings) -> Runtime:
    if settings.server.runtime is RuntimeKind.DOCKER:
        _import_requests_without_charset_detection()
        from .docker import DockerRuntime

        return DockerRuntime(settings)
    from .process import ProcessRuntime

    return ProcessRuntime(settings)
