"""Closed vocabularies: every value that becomes a metric label or a log field people group by.

Free text (a reason, a detail) stays in its own field next to one of these; a counter is only
ever keyed by an enum, so label cardinality is bounded by this file.
"""

from __future__ import annotations

from enum import StrEnum


class RestartReason(StrEnum):
    """Why an instance replaced the one before it; the key of ``restarts_by_reason``. A
    launch that fails and is retried is still the same restart, counted once it runs."""

    CONFIG_CHANGE = "config-change"
    OPERATOR = "operator"
    CRASH = "crash"
    HANG = "hang"
    UNHEALTHY = "unhealthy"
    STARTUP_TIMEOUT = "startup-timeout"
    MODEL_ESCALATION = "model-escalation"
    # The instance was stopped by the container engine's own outage (restart of dockerd).
    ENGINE_OUTAGE = "engine-outage"


class ProbeKind(StrEnum):
    LIVENESS = "liveness"
    READINESS = "readiness"
    MODEL = "model"
    SMOKE = "smoke"
    # The container engine's own HEALTHCHECK verdict (docker only).
    DOCKER_HEALTHCHECK = "docker-healthcheck"


class LoadState(StrEnum):
    """Whether the engine has a model in memory, as far as it tells."""

    LOADED = "loaded"
    LOADING = "loading"
    UNLOADED = "unloaded"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: object) -> LoadState:
        """An engine's own word for it; anything unexpected is UNKNOWN, never an error."""
        try:
            return cls(str(value).lower())
        except ValueError:
            return cls.UNKNOWN


class Level(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
