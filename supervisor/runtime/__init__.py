"""Runtimes: where the server runs (a Docker container, or a host child process)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from ..engines import EngineAdapter
from ..settings import RuntimeKind, Settings
from ..versions import VersionSource
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
    "program_says",
    "program_version",
]

# docker/metadata-action's label on LocalAI's release images (.github/workflows/image_build.yml).
IMAGE_VERSION_LABEL = "org.opencontainers.image.version"
# `local-ai --help` prints "Version: v4.9.0 (sha)" (cmd/local-ai/main.go); there is no --version.
_HELP_VERSION = re.compile(r"^\s*Version:\s*(\S+)", re.MULTILINE)
_HELP_TIMEOUT = 10.0


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


def program_version(settings: Settings) -> tuple[str, VersionSource] | None:
    """Blocking: the LocalAI version the server will run, before it runs, and where it was
    read: the image's version label, or the binary's
    ``--help``. None when neither says (a locally built image, no binary yet)."""
    if settings.server.runtime is RuntimeKind.DOCKER:
        _import_requests_without_charset_detection()
        import docker.errors
        import requests

        from .docker import client_for

        try:
            client = client_for(settings.docker.host, 10)
            try:
                labels = client.images.get(settings.docker.image).labels or {}
            finally:
                client.close()
        except (docker.errors.DockerException, requests.RequestException, OSError):
            return None
        raw = labels.get(IMAGE_VERSION_LABEL)
        return (str(raw), VersionSource.IMAGE_LABEL) if raw else None
    program = str(settings.process.binary) if settings.process.binary else "local-ai"
    found = program_says([program, "--help"], _HELP_VERSION)
    return (found, VersionSource.PROGRAM) if found else None


def program_says(argv: list[str], pattern: re.Pattern[str]) -> str | None:
    """Blocking: the first group of ``pattern`` in what ``argv`` prints (None: it does not
    run, or does not say)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_HELP_TIMEOUT,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = pattern.search(done.stdout + done.stderr)
    return match.group(1).strip() if match else None


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
