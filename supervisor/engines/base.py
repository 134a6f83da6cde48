"""What an engine (the program inside the container) contributes to a launch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..modelconfig import ModelSet
from ..settings import Engine, Settings


@dataclass(frozen=True)
class ServerPaths:
    """Paths as the server sees them (inside the container, or on the host for `process`)."""

    models_dir: str
    model_config: str
    # Directory holding files the supervisor renders for the server (e.g. a models preset).
    rendered_dir: str


@dataclass(frozen=True)
class RenderedFile:
    name: str
    content: str


@dataclass(frozen=True)
class EngineLaunch:
    """Arguments, environment and files for one start of the server."""

    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    files: tuple[RenderedFile, ...] = ()
    # model name -> LocalAI fields this engine cannot carry over (logged once per render).
    dropped: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())


class EngineAdapter(Protocol):
    """One per engine; pure rendering plus the facts probes need."""

    kind: Engine
    liveness_path: str
    # Lists every configured model (llama-server: with its load state).
    readiness_path: str
    default_binary: str

    def render(self, models: ModelSet, paths: ServerPaths, settings: Settings) -> EngineLaunch:
        ...

    def listed_models(self, body: Any) -> dict[str, str | None]:
        """Model ids in a ``/v1/models``-style answer, with their load state where known."""
        ...
