"""Settings: defaults, the TOML file, environment overrides and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from supervisor.engines.localai import DEFAULT_ENV
from supervisor.policy import Rules
from supervisor.server import rules_from
from supervisor.settings import (
    Engine,
    LogFormat,
    OnStop,
    RestartSection,
    RuntimeKind,
    Settings,
    SettingsError,
    SupervisorSection,
    load_settings,
    split_host_port,
)


def write(tmp_path: Path, text: str, name: str = "supervisor.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_reproduce_the_hand_run_container() -> None:
    s = load_settings(None)
    assert s.server.engine is Engine.LOCALAI
    assert s.server.runtime is RuntimeKind.DOCKER
    assert s.server.model_config_file == Path("/etc/localai/config.yaml")
    assert s.server.models_dir == Path("/var/lib/localai/model")
    assert (s.server.listen_host, s.server.listen_port) == ("0.0.0.0", 40080)
    assert (s.server.publish_host, s.server.publish_port) == ("0.0.0.0", 40080)
    assert s.probe_base_url == "http://127.0.0.1:40089"
    assert (s.server.threads, s.server.parallel, s.server.single_active_backend) == (8, 8, True)
    assert s.docker.image == "localai"
    assert s.docker.container_name == "localai"
    assert s.docker.gpus == "all"
    assert s.docker.host is None
    assert s.docker.container_models_dir == "/localai/model"
    assert s.docker.container_model_config == "/localai/config.yaml"
    # The hand-run container's extra variables are the engine's defaults (engines/localai.py);
    # [localai] environment only adds to or overrides them.
    assert s.localai.environment == {}
    assert DEFAULT_ENV == {
        "LOCALAI_LOG_LEVEL": "info",
        "LOCALAI_PARALLEL_REQUESTS": "true",
        "PYTHON_GRPC_MAX_WORKERS": "8",
    }
    assert s.llama_server.models_max is None
    assert s.supervisor.status_api == "127.0.0.1:40081"
    assert s.supervisor.on_stop is OnStop.STOP
    assert s.supervisor.log_format is LogFormat.AUTO
    assert s.restart == RestartSection()
    assert (s.restart.start_retries, s.restart.failure_window) == (5, 300.0)
    assert (s.health.interval, s.health.timeout, s.health.failure_threshold) == (2.0, 2.0, 3)
    assert (s.watch.enabled, s.watch.step_ms, s.watch.debounce_ms) == (True, 50, 1600)
    assert s == Settings()


def test_toml_file_is_loaded(tmp_path: Path) -> None:
    path = write(tmp_path, """
[server]
engine = "llama-server"
runtime = "process"
models_dir = "/srv/models"
listen_port = 8080

[docker]
gpus = "0,1"

[restart]
start_retries = 3
backoff_max = 30.0

[localai]
environment = { LOCALAI_LOG_LEVEL = "debug" }
""")
    s = load_settings(path)
    assert s.server.engine is Engine.LLAMA_SERVER
    assert s.server.runtime is RuntimeKind.PROCESS
    assert s.server.models_dir == Path("/srv/models")
    assert s.server.listen_port == 8080
    assert s.docker.gpus == "0,1"
    assert (s.restart.start_retries, s.restart.backoff_max) == (3, 30.0)
    assert s.restart.backoff_initial == RestartSection().backoff_initial  # untouched: default
    # Only what the file sets; the engine's defaults are merged under it when rendering.
    assert s.localai.environment == {"LOCALAI_LOG_LEVEL": "debug"}


def test_empty_toml_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "# nothing\n"), required=True) == Settings()


def test_environment_beats_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, """
[server]
engine = "localai"
threads = 4

[docker]
image = "from-toml"
container_name = "toml-name"
""")
    monkeypatch.setenv("LOCALAI_SUPERVISOR_SERVER__ENGINE", "llama-server")
    monkeypatch.setenv("LOCALAI_SUPERVISOR_DOCKER__IMAGE", "from-env:1.0")
    s = load_settings(path)
    assert s.server.engine is Engine.LLAMA_SERVER
    assert s.docker.image == "from-env:1.0"
    # Other keys of the same sections still come from the file.
    assert s.server.threads == 4
    assert s.docker.container_name == "toml-name"


def test_environment_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALAI_SUPERVISOR_SERVER__LISTEN_PORT", "9000")
    monkeypatch.setenv("LOCALAI_SUPERVISOR_HEALTH__INTERVAL", "0.5")
    monkeypatch.setenv("LOCALAI_SUPERVISOR_WATCH__ENABLED", "false")
    s = load_settings(None)
    assert s.server.listen_port == 9000
    assert s.health.interval == 0.5
    assert s.watch.enabled is False


def test_config_path_variable_is_not_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # cli.py reads LOCALAI_SUPERVISOR_CONFIG itself; it must not trip extra="forbid".
    monkeypatch.setenv("LOCALAI_SUPERVISOR_CONFIG", "/etc/localai-supervisor/other.toml")
    assert load_settings(None) == Settings()


def test_overrides_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALAI_SUPERVISOR_SERVER__ENGINE", "llama-server")
    s = load_settings(None, server={"engine": "localai"})
    assert s.server.engine is Engine.LOCALAI


def test_environment_variable_names_for_the_server_keep_their_case(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALAI_SUPERVISOR_LOCALAI__ENVIRONMENT__LOCALAI_LOG_LEVEL", "debug")
    monkeypatch.setenv("LOCALAI_SUPERVISOR_LLAMA_SERVER__ENVIRONMENT__CUDA_VISIBLE_DEVICES", "0")
    s = load_settings(None)
    assert s.localai.environment == {"LOCALAI_LOG_LEVEL": "debug"}
    assert s.llama_server.environment == {"CUDA_VISIBLE_DEVICES": "0"}


def test_environment_names_from_toml_are_upper_cased(tmp_path: Path) -> None:
    path = write(tmp_path, "[localai]\nenvironment = { localai_log_level = 'debug' }\n"
                 "[llama_server]\nenvironment = { Cuda_Visible_Devices = '1' }\n")
    s = load_settings(path)
    assert s.localai.environment == {"LOCALAI_LOG_LEVEL": "debug"}
    assert s.llama_server.environment == {"CUDA_VISIBLE_DEVICES": "1"}


def test_unknown_key_in_toml_names_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nengine = 'localai'\nmodel_dir = '/x'\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "server.model_dir" in message
    assert "Extra inputs are not permitted" in message


def test_unknown_section_in_toml(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="gateway"):
        load_settings(write(tmp_path, "[gateway]\nport = 1\n"))


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[server]\nlisten_port = 0\n", "server.listen_port"),
        ("[server]\nengine = 'ollama'\n", "server.engine"),
        ("[restart]\njitter = 1.5\n", "restart.jitter"),
        ("[health]\nfailure_threshold = 0\n", "health.failure_threshold"),
        ("[supervisor]\nstatus_api = 'nonsense'\n", "supervisor.status_api"),
        ("[llama_server]\nmodels_max = 0\n", "llama_server.models_max"),
    ],
)
def test_invalid_values_name_file_and_field(tmp_path: Path, toml: str, field: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: {field}: ")


def test_invalid_environment_value_names_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALAI_SUPERVISOR_SERVER__RUNTIME", "kubernetes")
    with pytest.raises(SettingsError, match=r"^environment: server\.runtime: "):
        load_settings(None)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nengine = 'x'\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: invalid TOML: ")


def test_missing_file_required_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="settings file not found"):
        load_settings(tmp_path / "absent.toml", required=True)


def test_missing_file_not_required_means_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "absent.toml", required=False) == Settings()


def test_loading_a_file_does_not_leak_into_later_settings(tmp_path: Path) -> None:
    load_settings(write(tmp_path, "[docker]\nimage = 'other'\n"))
    assert Settings().docker.image == "localai"
    assert load_settings(None).docker.image == "localai"


def test_settings_are_frozen() -> None:
    s = load_settings(None)
    with pytest.raises(ValidationError):
        s.server.listen_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:40081", ("127.0.0.1", 40081)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:80", ("::", 80)),
    ],
)
def test_split_host_port_good(value: str, expected: tuple[str, int]) -> None:
    assert split_host_port(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:http",
        ":8080",
        "example.com:80",
        "256.0.0.1:80",
        "[::1]",
    ],
)
def test_split_host_port_bad(value: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(value)


def test_status_api_validation() -> None:
    assert SupervisorSection(status_api="").status_api == ""  # disabled
    assert SupervisorSection(status_api="[::1]:9").status_api == "[::1]:9"
    with pytest.raises(ValidationError, match="status_api"):
        SupervisorSection(status_api="localhost")
    with pytest.raises(ValidationError, match="status_api"):
        SupervisorSection(status_api="myhost:80")


def test_rules_from_settings(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, """
[restart]
start_retries = 2
[health]
failure_threshold = 4
unhealthy_grace = 10
[server]
startup_timeout = 90
"""))
    assert rules_from(s) == Rules(restart=s.restart, failure_threshold=4, startup_timeout=90.0,
                                  unhealthy_grace=10.0)
    assert rules_from(s).restart.start_retries == 2
