"""Engines: what runs inside the container (LocalAI or llama-server)."""

from __future__ import annotations

from ..settings import Engine
from .base import Activity, Call, EngineAdapter, EngineLaunch, RenderedFile, ServerPaths
from .llamaserver import LlamaServerEngine
from .localai import LocalAIEngine

__all__ = [
    "Activity", "Call", "EngineAdapter", "EngineLaunch", "RenderedFile", "ServerPaths",
    "engine_for",
]


def engine_for(kind: Engine) -> EngineAdapter:
    if kind is Engine.LLAMA_SERVER:
        return LlamaServerEngine()
    return LocalAIEngine()
