"""The typed status every surface renders: control socket, status API, CLI, demo.

Owners hand the daemon typed snapshots of their own state; ``Status`` puts them together.
``supervisor/openapi.json`` is generated from these models (``python -m supervisor.status``)
and a test keeps the file, the models and the live responses in agreement.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .classify import Cause
from .doctor import Symptom, smoke_code, symptom_of
from .modelhealth import ModelState
from .policy import State
from .scheduler import Phase, Refusal
from .settings import Engine, RuntimeKind
from .versions import VersionSource
from .vocab import LoadState, RestartReason

OPENAPI_FILE = Path(__file__).with_name("openapi.json")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CheckOutcome(StrEnum):
    """What one check of the config and models dir concluded."""

    APPLIED = "applied"
    UNCHANGED = "unchanged"
    REJECTED = "rejected"
    PENDING = "pending"


class InstanceStatus(_Model):
    id: str = Field(description="container id, or the process id for the process runtime")
    pid: int | None = Field(description="the server's host pid, when known")
    image: str | None
    spec: str = Field(description="digest of the spec the instance runs")
    started_at: float = Field(description="wall-clock start time (Unix seconds)")


class FailureStatus(_Model):
    cause: Cause
    hint: str
    evidence: str


class DrainStatus(_Model):
    drains: int = 0
    drained_requests: int = 0
    cut_off_requests: int = 0


class RejectionStatus(_Model):
    at: float = Field(description="when the rejected revision was read (Unix seconds)")
    errors: list[str]


class PendingFile(_Model):
    model: str
    file: str
    reason: str


class Finding(_Model):
    severity: str
    code: str
    symptom: Symptom = Field(Symptom.OTHER, description="what people see when it bites "
                             "(supervisorctl doctor groups by it)")
    file: str
    line: int | None
    column: int | None
    model: str | None
    field: str | None
    message: str
    hint: str | None


class ConfigStatus(_Model):
    file: str
    models_dir: str
    revision: str | None = Field(description="revision of the applied model config")
    spec: str | None = Field(description="digest of the applied server spec")
    rejected: RejectionStatus | None = Field(
        description="the latest change, when it was rejected (the applied revision keeps "
        "running)")
    pending: list[PendingFile] = Field(description="model files still being written")
    warnings: list[Finding]
    checks: int = Field(description="how many times the files were checked since start")
    last_check: CheckOutcome | None = Field(description="what the latest check concluded")
    last_check_at: float | None = Field(description="when it finished (Unix seconds)")


class ModelStatus(_Model):
    name: str
    file: str | None
    size: int | None
    listed: bool = Field(description="the server lists the model (readiness)")
    state: LoadState | None = Field(description="load state as the readiness answer gave it")
    loaded: bool
    health: ModelState
    last_probe_seconds_ago: float | None
    last_error: str | None
    restarts: int = Field(description="in-place restarts of this model (recent window)")
    cooldown_seconds: float | None = Field(
        None, description="state cooldown: seconds until the engine loads it again after a "
        "failed load (LocalAI v4.7.0+)")
    output_warning: str | None = Field(description="what the output smoke check found")
    architecture: str | None = Field(None, description="from the GGUF header")
    context_size: int | None = Field(None, description="the config's context_size")
    trained_context: int | None = Field(None, description="from the GGUF header")
    quantization: str | None = Field(None, description="from the GGUF header (the type "
                                     "holding most tensor bytes)")


class RecentEvent(_Model):
    at: float
    event: str
    detail: str


class EngineVersionStatus(_Model):
    """The engine version behaviour follows, and where it was learnt."""

    version: str = Field(description="e.g. v4.9.0")
    source: VersionSource = Field(description="setting (localai.version), image-label, "
                                  "program (the binary's --help), or server (its GET "
                                  "/version)")
    reported: str = Field(description="the text as given, e.g. v4.9.0-22-g82c191af")


class ServerSnapshot(_Model):
    """The server owner's part of the status."""

    state: State
    since_seconds: float
    reason: str | None
    runtime_connected: bool
    instance: InstanceStatus | None
    uptime_seconds: float | None = Field(
        description="seconds since the current instance started (not since the last state "
        "change); null when no instance serves")
    restarts: int
    restarts_by_reason: dict[RestartReason, int]
    consecutive_failures: int
    recent_failures: int = Field(description="failures within restart.failure_window")
    crash_looping: bool = Field(description="3 or more failures within the window: the "
                                "server keeps failing (it is still restarted)")
    last_failure: FailureStatus | None
    drain: DrainStatus
    retry_in_seconds: float | None
    maintenance: bool = Field(False, description="stopped by `supervisorctl stop` until "
                              "`supervisorctl start`")
    failures_by_cause: dict[Cause, int] = Field(default_factory=dict)
    engine_version: EngineVersionStatus | None = None


class GatewayModelStatus(_Model):
    """One model as the gateway sees it (``-``: requests that name no configured model)."""

    model: str
    resident: bool
    in_flight: int
    queued: int
    # Outcome (completed, cut-off, queue-full, ...) -> requests.
    requests: dict[str, int]
    swaps: int
    # Requests that arrived while the server was not serving and waited for it.
    held: int
    prompt_tokens: int
    completion_tokens: int
    mean_wait_seconds: float
    max_wait_seconds: float

    @property
    def refused(self) -> int:
        """Requests the gateway answered itself (queue full, too long a wait, server down)."""
        return sum(self.requests.get(r.value, 0) for r in Refusal)


class GatewaySnapshot(_Model):
    """The gateway's part of the status (absent when the gateway is off)."""

    phase: Phase
    listen: str
    upstream: str
    unloading: list[str]
    models: list[GatewayModelStatus]


class ModelsSnapshot(_Model):
    """The models owner's part of the status."""

    models: list[ModelStatus]
    model_restarts: int
    idle_seconds: float | None


class Status(_Model):
    """``GET /status`` and ``supervisorctl status --json``."""

    version: str
    state: State
    since_seconds: float
    reason: str | None
    engine: Engine
    runtime: RuntimeKind
    runtime_connected: bool
    server_url: str
    instance: InstanceStatus | None
    uptime_seconds: float | None
    supervisor_uptime_seconds: float
    restarts: int
    restarts_by_reason: dict[RestartReason, int]
    consecutive_failures: int
    recent_failures: int
    crash_looping: bool
    last_failure: FailureStatus | None
    model_restarts: int
    drain: DrainStatus
    idle_seconds: float | None
    retry_in_seconds: float | None
    maintenance: bool = Field(False, description="stopped by `supervisorctl stop` until "
                              "`supervisorctl start` (survives reloads and restarts of the "
                              "supervisor)")
    failures_by_cause: dict[Cause, int] = Field(
        default_factory=dict, description="server failures since the supervisor started, by "
        "the cause its log named")
    engine_version: EngineVersionStatus | None = Field(
        None, description="the engine version behaviour follows (null: unknown)")
    findings_by_symptom: dict[Symptom, int] = Field(
        default_factory=dict, description="what `supervisorctl doctor` would report, counted "
        "by symptom: config warnings, the smoke check's verdicts, models failing to load")
    config: ConfigStatus
    models: list[ModelStatus]
    gateway: GatewaySnapshot | None = None
    recent_events: list[RecentEvent]

    @classmethod
    def assemble(cls, *, version: str, engine: Engine, runtime: RuntimeKind, server_url: str,
                 supervisor_uptime: float, server: ServerSnapshot, config: ConfigStatus,
                 models: ModelsSnapshot, recent: list[RecentEvent],
                 gateway: GatewaySnapshot | None = None) -> Status:
        return cls(
            version=version, state=server.state, since_seconds=server.since_seconds,
            reason=server.reason, engine=engine, runtime=runtime,
            runtime_connected=server.runtime_connected, server_url=server_url,
            instance=server.instance, uptime_seconds=server.uptime_seconds,
            supervisor_uptime_seconds=round(supervisor_uptime, 3), restarts=server.restarts,
            restarts_by_reason=server.restarts_by_reason,
            consecutive_failures=server.consecutive_failures,
            recent_failures=server.recent_failures, crash_looping=server.crash_looping,
            last_failure=server.last_failure, model_restarts=models.model_restarts,
            drain=server.drain, idle_seconds=models.idle_seconds,
            retry_in_seconds=server.retry_in_seconds, maintenance=server.maintenance,
            failures_by_cause=server.failures_by_cause,
            engine_version=server.engine_version,
            findings_by_symptom=_count_symptoms(config, models.models),
            config=config, models=models.models,
            gateway=gateway, recent_events=recent,
        )


def _count_symptoms(config: ConfigStatus, models: list[ModelStatus]) -> dict[Symptom, int]:
    counts: dict[Symptom, int] = {}
    found = [w.symptom for w in config.warnings]
    found += [symptom_of(smoke_code(m.output_warning)) for m in models if m.output_warning]
    found += [Symptom.LOAD_FAILS for m in models if m.last_error
              and m.health in (ModelState.FAILED, ModelState.FAILING, ModelState.COOLDOWN)]
    for symptom in found:
        counts[symptom] = counts.get(symptom, 0) + 1
    return counts


class Readiness(_Model):
    """``GET /readyz``: ready, or why not."""

    ready: bool
    reasons: list[str]

    @classmethod
    def of(cls, st: Status) -> Readiness:
        reasons = [] if st.state is State.RUNNING else [f"server {st.state.value}"]
        reasons += [f"model {m.name} not listed" for m in st.models if not m.listed]
        reasons += [f"model {m.name} failed" for m in st.models
                    if m.health is ModelState.FAILED]
        return cls(ready=not reasons, reasons=reasons)


class ReloadResult(_Model):
    """The answer to ``reload`` (and SIGHUP, in the log): applied, or why not."""

    applied: bool
    restarting: bool
    revision: str | None = None
    errors: list[str] = Field(default_factory=list)
    pending: list[str] = Field(default_factory=list)


class CommandResult(_Model):
    """The answer to ``restart [MODEL]``."""

    ok: bool
    state: State | None = None
    model: str | None = None
    error: str | None = None


class Journal:
    """The last events worth showing an operator; append-only, on the loop."""

    def __init__(self, keep: int = 50, wall: Any = time.time) -> None:
        self._events: deque[RecentEvent] = deque(maxlen=keep)
        self._wall = wall

    def note(self, event: str, detail: str) -> None:
        self._events.append(RecentEvent(at=self._wall(), event=event, detail=detail))

    def recent(self, n: int = 10) -> list[RecentEvent]:
        return list(self._events)[-n:]


def openapi() -> dict[str, Any]:
    """The control socket's and status API's OpenAPI document, from the models above."""
    from pydantic.json_schema import models_json_schema

    _, defs = models_json_schema(
        [(m, "serialization") for m in (Status, Readiness, ReloadResult, CommandResult)],
        ref_template="#/components/schemas/{model}")

    def answer(model: str, what: str) -> dict[str, Any]:
        return {"description": what, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{model}"}}}}

    restart_body = {"content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": False, "properties": {
            "model": {"type": ["string", "null"],
                      "description": "restart only this model, in place"},
            "force": {"type": "boolean", "description": "do not wait for requests in flight"},
        }}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "localai-supervisor", "version": "1",
                 "description": "Status API (TCP, loopback by default) and control socket "
                 "(HTTP on a unix socket, paths under /v1/)."},
        "paths": {
            "/status": {"get": {"summary": "the supervisor's typed status",
                                "responses": {"200": answer("Status", "status")}}},
            "/healthz": {"get": {"summary": "the supervisor itself answers",
                                 "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "the server serves and every model is listed and "
                                "not failed (for load balancers)",
                                "responses": {"200": answer("Readiness", "ready"),
                                              "503": answer("Readiness", "not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text exposition format)",
                                 "responses": {"200": {"description": "metrics"}}}},
            "/": {"get": {"summary": "a read-only HTML status page (refreshes itself)",
                          "responses": {"200": {"description": "text/html"}}}},
            "/v1/status": {"get": {"summary": "control socket: status",
                                   "responses": {"200": answer("Status", "status")}}},
            "/v1/reload": {"post": {
                "summary": "control socket: re-read settings and model config; answers "
                "once applied or rejected",
                "responses": {"200": answer("ReloadResult", "applied or rejected")}}},
            "/v1/restart": {"post": {
                "summary": "control socket: restart the server (or one model)",
                "requestBody": restart_body,
                "responses": {"200": answer("CommandResult", "accepted or refused")}}},
        },
        "components": {"schemas": defs["$defs"]},
    }


def render_openapi() -> str:
    return json.dumps(openapi(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    """Regenerate supervisor/openapi.json (``python -m supervisor.status``)."""
    OPENAPI_FILE.write_text(render_openapi())
    sys.stdout.write(f"wrote {OPENAPI_FILE}\n")


if __name__ == "__main__":
    main()
