"""What an engine (the program inside the container) contributes to a launch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from ..modelconfig import ModelSet
from ..settings import Engine, Settings
from ..versions import Version
from ..vocab import LoadState


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
    # Holds a secret: written 0600, never printed.
    secret: bool = False


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
    # (variable, why) for variables left out or passed though they do nothing on this
    # version (logged once per render).
    env_notes: tuple[tuple[str, str], ...] = field(default=())


class RestartAnswer(StrEnum):
    DONE = "done"
    # Not loaded: nothing to stop, the next request loads it (never a failure).
    NOT_LOADED = "not-loaded"
    # The engine refused to stop a model with work in flight (a hung one looks the same):
    # only a restart of the server can free it.
    BUSY = "busy"
    FAILED = "failed"


def plain_restart_answer(status: int, text: str) -> RestartAnswer:
    """200 done; 400/404 ("not running", "already running") leave the model restartable."""
    if status == 200:
        return RestartAnswer.DONE
    if status in (400, 404):
        return RestartAnswer.NOT_LOADED
    return RestartAnswer.FAILED


class EngineAdapter(Protocol):
    """One per engine; pure rendering plus the facts probes need."""

    kind: Engine
    liveness_path: str
    # Lists every configured model (llama-server: with its load state).
    readiness_path: str
    default_binary: str

    def render(self, models: ModelSet, paths: ServerPaths, settings: Settings,
               api_key: str | None = None) -> EngineLaunch:
        ...

    def listed_models(self, body: Any) -> dict[str, LoadState | None]:
        """Model ids in a ``/v1/models``-style answer, with their load state where known."""
        ...

    def loaded_call(self) -> Call:
        """Where to read which models are loaded (without loading any)."""
        ...

    def loaded_models(self, body: Any) -> dict[str, LoadState]:
        """Model id -> load state, as far as the engine tells."""
        ...

    def probe_call(self, model: str, embeddings: bool, *, allow_load: bool = False) -> Call:
        """The smallest real request for what the model does; loads it only if allowed."""
        ...

    def restart_model_calls(self, model: str) -> list[Call]:
        """Restart one model without restarting the server."""
        ...

    def restart_answer(self, status: int, text: str) -> RestartAnswer:
        """What one restart call's answer means."""
        ...

    def restart_alone_refused(self, version: Version | None, hung: bool) -> str | None:
        """Why a model that stopped answering (``hung``) or fails cannot be restarted alone
        on this engine version without harm (None: ``restart_model_calls`` is safe)."""
        ...

    def cooldown_seconds(self, status: int, text: str) -> float | None:
        """Seconds the engine refuses to load a model after a failed load, when this answer
        says so (None: not a cooldown answer)."""
        ...

    def model_log_call(self, model: str) -> Call | None:
        """Where the engine keeps one model's own log (None: it is in the server's log)."""
        ...

    def model_log_lines(self, body: Any) -> list[tuple[str, str]]:
        """(timestamp, line) for each line ``model_log_call`` returned, oldest first."""
        ...

    def model_log_filter(self, model: str) -> Callable[[str], bool]:
        """Picks one model's lines out of the server's log (engines without a per-model
        log: ``model_log_call`` is None)."""
        ...

    def model_log_missing(self, model: str, kept: bool) -> str | None:
        """A line saying why ``model`` has no log to show (``kept``: the engine answered
        for its per-model log, with nothing in it), or None when an empty log is normal."""
        ...

    def version_call(self) -> Call:
        """Where the running engine says its version."""
        ...

    def version(self, body: Any) -> str | None:
        """The version in ``version_call``'s answer."""
        ...

    def unload_call(self, model: str) -> Call:
        """Unload one model now (the gateway does this before a swap)."""
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


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]] | None:
    """(labels, value) of every sample named ``name`` in Prometheus text format.

    None when the text does not parse: a reading that cannot be trusted is unknown, not 0.
    """
    from prometheus_client.parser import text_string_to_metric_families

    try:
        return [(dict(sample.labels), float(sample.value))
                for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name == name]
    except ValueError:
        return None
