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
class Call:
    """One HTTP request to the server, described (the engine decides, health.py sends)."""

    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class Activity:
    """How busy the server is: a counter that grows with work, and requests in flight."""

    work: float | None
    in_flight: int | None


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

    def loaded_call(self) -> Call:
        """Where to read which models are loaded (without loading any)."""
        ...

    def loaded_models(self, body: Any) -> dict[str, str]:
        """Model id -> state ("loaded", "loading", "unloaded", "failed") as far as known."""
        ...

    def probe_call(self, model: str, embeddings: bool, *, allow_load: bool = False) -> Call:
        """The smallest real request for what the model does; loads it only if allowed."""
        ...

    def restart_model_calls(self, model: str) -> list[Call]:
        """Restart one model without restarting the server."""
        ...

    def activity_calls(self, loaded: list[str]) -> list[Call]:
        """Requests whose answers ``activity`` reads (never load a model)."""
        ...

    def activity(self, answers: list[tuple[int, str]]) -> Activity:
        """Sum what ``activity_calls`` returned (status, body text) into one reading."""
        ...


PROBE_PROMPT = "ping"


def openai_probe(model: str, embeddings: bool, query: str = "") -> Call:
    """A one-token chat completion, or a one-word embedding for embedding models."""
    if embeddings:
        return Call("POST", f"/v1/embeddings{query}", {"model": model, "input": PROBE_PROMPT})
    return Call("POST", f"/v1/chat/completions{query}", {
        "model": model, "max_tokens": 1, "temperature": 0,
        "messages": [{"role": "user", "content": PROBE_PROMPT}],
    })


def prometheus_values(text: str, name: str) -> list[tuple[str, float]]:
    """(labels, value) of every sample of ``name`` in Prometheus text format."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        if "{" in line:
            metric, _, rest = line.partition("{")
            labels, _, tail = rest.rpartition("}")
        else:
            metric, _, tail = line.partition(" ")
            labels = ""
        fields = tail.split()  # value, then an optional timestamp
        if metric.strip() != name or not fields:
            continue
        try:
            out.append((labels, float(fields[0])))
        except ValueError:
            continue
    return out
