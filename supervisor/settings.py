"""The supervisor's own settings: a TOML file layered under ``LOCALAI_SUPERVISOR_*`` variables.

Defaults reproduce the hand-run LocalAI container (image ``localai``, port 40080, models at
``/localai/model``, all GPUs), so an empty settings file supervises what people run today.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_SETTINGS_FILE = Path("/etc/localai-supervisor/supervisor.toml")
ENV_PREFIX = "LOCALAI_SUPERVISOR_"

# Which TOML file the next Settings() reads; a context variable so tests can load several.
_settings_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "settings_file", default=None
)


class Engine(StrEnum):
    LOCALAI = "localai"
    LLAMA_SERVER = "llama-server"


class RuntimeKind(StrEnum):
    DOCKER = "docker"
    PROCESS = "process"


class OnStop(StrEnum):
    """What SIGTERM does to the LLM server."""

    STOP = "stop"
    LEAVE = "leave"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SupervisorSection(_Section):
    state_dir: Path = Path("/var/lib/localai-supervisor")
    control_socket: Path = Path("/run/localai-supervisor/control.sock")
    control_socket_group: str | None = None
    # host:port of the read-only status API; empty disables it.
    status_api: str = "127.0.0.1:40081"
    # A file holding a bearer token the status API then asks for (but on /healthz, /readyz).
    status_api_token_file: Path | None = None
    on_stop: OnStop = OnStop.STOP
    log_format: LogFormat = LogFormat.AUTO
    log_level: str = "info"

    @field_validator("status_api")
    @classmethod
    def _check_status_api(cls, value: str) -> str:
        if value:
            split_host_port(value)
        return value


@dataclass(frozen=True)
class ServerEndpoint:
    """Where the server listens (in its container, or on the host) and where the host reaches
    it. With the gateway on, the host side is loopback only."""

    listen_host: str
    listen_port: int
    publish_host: str
    publish_port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.publish_port}"


class ServerSection(_Section):
    engine: Engine = Engine.LOCALAI
    runtime: RuntimeKind = RuntimeKind.DOCKER
    model_config_file: Path = Path("/etc/localai/config.yaml")
    models_dir: Path = Path("/var/lib/localai/model")
    # Where the server itself listens (inside its container, or on the host for `process`).
    # Kept separate from the published address so a gateway can take the public port later.
    listen_host: str = "0.0.0.0"
    listen_port: int = Field(40080, ge=1, le=65535)
    # Docker only: the host address the container port is published on.
    publish_host: str = "0.0.0.0"
    publish_port: int = Field(40080, ge=1, le=65535)
    single_active_backend: bool = True
    threads: int = Field(8, ge=1)
    parallel: int = Field(8, ge=1)
    startup_timeout: float = Field(600.0, gt=0)
    stop_timeout: float = Field(30.0, gt=0)
    # GPU memory in GiB for lint's "models will not fit together" check; unset: not checked.
    gpu_memory_gb: float | None = Field(None, gt=0)



def _upper_keys(value: dict[str, str]) -> dict[str, str]:
    """Environment names are upper case; pydantic-settings lower-cases names read from env."""
    return {k.upper(): str(v) for k, v in value.items()}


class LocalAISection(_Section):
    # The LocalAI version run (e.g. "v4.9.0"); unset: read from the image's label (or the
    # binary's --help) before the first start, then from
    # the server's GET /version once it is up. Behaviour that differs by version follows it.
    version: str | None = None
    # A file holding the API key LocalAI asks of every client: passed to LocalAI in a file
    # (api_keys.json), never in its environment or arguments, and sent with every probe.
    api_key_file: Path | None = None
    # Added to (and overriding) the engine's defaults; see engines/localai.py.
    environment: dict[str, str] = Field(default_factory=dict)
    extra_args: list[str] = Field(default_factory=list)

    @field_validator("environment")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _upper_keys(value)

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        from .versions import Version

        if value is not None and Version.parse(value) is None:
            raise ValueError(f"{value!r} is not a version such as \"v4.9.0\"")
        return value


class LlamaServerSection(_Section):
    # Unset: 1 with single_active_backend, else llama-server's own default of 4.
    models_max: int | None = Field(None, ge=1)
    environment: dict[str, str] = Field(default_factory=dict)
    extra_args: list[str] = Field(default_factory=list)

    @field_validator("environment")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _upper_keys(value)


class DockerSection(_Section):
    host: str | None = None
    image: str = "localai"
    container_name: str = "localai"
    # "all", "none", or a comma-separated list of device ids.
    gpus: str = "all"
    # Where the models dir and config appear inside the container.
    container_models_dir: str = "/localai/model"
    container_model_config: str = "/localai/config.yaml"
    # After losing the engine, reconnect attempts start at 0.1 s and double up to this.
    reconnect_max_delay: float = Field(1.0, gt=0)


class ProcessSection(_Section):
    # Unset: `local-ai` or `llama-server` from PATH (and the test-bench cache for llama-server).
    binary: Path | None = None


class ProbeUnloaded(StrEnum):
    WHEN_IDLE = "when-idle"
    NEVER = "never"


class HealthSection(_Section):
    # A hung server is detected within interval + timeout + (failure_threshold - 1) x
    # (0.5 + timeout) seconds: 9 s with these defaults.
    interval: float = Field(2.0, gt=0)
    timeout: float = Field(2.0, gt=0)
    failure_threshold: int = Field(3, ge=1)
    # Readiness (every model listed) may fail this long before the server is restarted.
    unhealthy_grace: float = Field(120.0, ge=0)
    # Per-model probes: a one-token request to each model.
    model_probes: bool = True
    model_interval: float = Field(30.0, gt=0)
    model_timeout: float = Field(15.0, gt=0)
    model_load_timeout: float = Field(300.0, gt=0)
    model_failure_threshold: int = Field(2, ge=1)
    # Unloaded models: probe only after the server was idle this long, or never (each such
    # probe loads the model, which evicts another with a single active backend).
    probe_unloaded: ProbeUnloaded = ProbeUnloaded.WHEN_IDLE
    idle_seconds: float = Field(120.0, gt=0)
    # Restarts of one model (in place) before the whole server is restarted for it.
    model_restarts: int = Field(2, ge=0)
    # Planned restarts and stops wait this long for requests in flight (0: no drain).
    drain_timeout: float = Field(60.0, ge=0)
    # Output smoke check: a fixed prompt to each *loaded* model every smoke_interval seconds
    # (0: off); answers ending in special tokens or cut off early are reported as warnings.
    smoke_interval: float = Field(0.0, ge=0)
    smoke_max_tokens: int = Field(64, ge=1)


class RestartSection(_Section):
    # The first retry after a failure is immediate; consecutive ones back off from
    # backoff_initial, doubling up to backoff_max (Docker: 100 ms doubling, 1 min cap).
    backoff_initial: float = Field(0.2, gt=0)
    backoff_max: float = Field(60.0, gt=0)
    backoff_multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.2, ge=0, le=1)
    # Give up (FATAL) after this many starts in a row that never became ready (supervisord's
    # startretries). A server that was serving is restarted without end.
    start_retries: int = Field(5, ge=1)
    # Failures within this window are counted for "crash-looping" in status and logs.
    failure_window: float = Field(300.0, gt=0)
    # Serving this long resets the backoff (Docker: 10 s).
    stable_after: float = Field(10.0, ge=0)


class GatewaySection(_Section):
    """The swap-aware gateway on the public port (see gateway.py and scheduler.py)."""

    enabled: bool = True
    # host:port clients connect to (the address the server itself had without a gateway).
    listen: str = "0.0.0.0:40080"
    # The loopback port the server gets behind the gateway (published there for docker).
    upstream_port: int = Field(40089, ge=1, le=65535)
    # While requests for another model wait, the loaded model admits new requests this long.
    max_hold: float = Field(30.0, gt=0)
    # Waiting requests per model; beyond it: 429.
    queue_max: int = Field(256, ge=1)
    # The longest a request waits in the gateway, for a swap, a free slot or a server being
    # (re)started; then 503 with Retry-After.
    queue_timeout: float = Field(120.0, gt=0)
    # An explicit unload before a swap is waited for this long at most.
    unload_timeout: float = Field(30.0, gt=0)
    # Largest request body accepted (uploads for transcription included).
    max_body_mb: int = Field(256, ge=1)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_host_port(value)
        return value


class WatchSection(_Section):
    enabled: bool = True
    step_ms: int = Field(50, ge=1)
    debounce_ms: int = Field(1600, ge=1)
    # A referenced model file must be unchanged this long before it is used (still copying?).
    settle_seconds: float = Field(3.0, ge=0)


class Settings(BaseSettings):
    """Every setting; see etc/localai-supervisor/supervisor.toml for the commented reference."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    supervisor: SupervisorSection = Field(default_factory=SupervisorSection)
    server: ServerSection = Field(default_factory=ServerSection)
    localai: LocalAISection = Field(default_factory=LocalAISection)
    llama_server: LlamaServerSection = Field(default_factory=LlamaServerSection)
    docker: DockerSection = Field(default_factory=DockerSection)
    process: ProcessSection = Field(default_factory=ProcessSection)
    health: HealthSection = Field(default_factory=HealthSection)
    restart: RestartSection = Field(default_factory=RestartSection)
    watch: WatchSection = Field(default_factory=WatchSection)
    gateway: GatewaySection = Field(default_factory=GatewaySection)

    @property
    def endpoint(self) -> ServerEndpoint:
        """The server's addresses: as configured, or behind the gateway on loopback."""
        srv = self.server
        if not self.gateway.enabled:
            return ServerEndpoint(srv.listen_host, srv.listen_port, srv.publish_host,
                                  srv.publish_port)
        port = self.gateway.upstream_port
        if srv.runtime is RuntimeKind.PROCESS:
            return ServerEndpoint("127.0.0.1", port, "127.0.0.1", port)
        return ServerEndpoint(srv.listen_host, srv.listen_port, "127.0.0.1", port)

    @property
    def probe_base_url(self) -> str:
        """Where the supervisor reaches the server from the host."""
        return self.endpoint.base_url

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _settings_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


class SettingsError(Exception):
    """The settings file or environment is unusable; the message names file and field."""


def load_settings(path: Path | None, *, required: bool = False, **overrides: Any) -> Settings:
    """Read ``path`` (TOML) under the environment; a missing default file means defaults."""
    import tomllib

    if path is not None and not path.exists():
        if required:
            raise SettingsError(f"{path}: settings file not found")
        path = None
    if path is not None:
        try:
            tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: invalid TOML: {exc}") from exc
        except OSError as exc:
            raise SettingsError(f"{path}: cannot read: {exc.strerror}") from exc
    token = _settings_file.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        where = str(path) if path else "environment"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"{where}: {problems}") from exc
    finally:
        _settings_file.reset(token)


def split_host_port(value: str) -> tuple[str, int]:
    """Parse ``host:port`` (``[v6]:port`` too) and reject nonsense early."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    host = host.strip("[]")
    if host != "localhost":
        ip_address(host)
    return host, int(port_s)
