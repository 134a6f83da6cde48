"""The shipped example files stay true: every setting documented, every example loadable."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from supervisor.modelconfig import ModelEntry
from supervisor.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
SETTINGS_EXAMPLE = REPO / "etc" / "localai-supervisor" / "supervisor.toml"
CONFIG_EXAMPLE = REPO / "etc" / "localai" / "config.yaml"


def _uncommented() -> str:
    return re.sub(r"^# ([a-z_]+ = .*)$", r"\1", SETTINGS_EXAMPLE.read_text(), flags=re.M)


def test_example_settings_file_loads_as_is() -> None:
    assert load_settings(SETTINGS_EXAMPLE, required=True) == load_settings(None)


def test_every_setting_is_documented_in_the_example() -> None:
    documented = tomllib.loads(_uncommented())
    for section, values in Settings().model_dump().items():
        missing = set(values) - set(documented.get(section, {}))
        assert not missing, f"[{section}] lacks {sorted(missing)} in {SETTINGS_EXAMPLE}"


def test_documented_values_are_the_defaults(tmp_path: Path) -> None:
    doc = tomllib.loads(_uncommented())
    # Settings whose default is "unset" show an example value instead.
    doc["supervisor"].pop("control_socket_group")
    doc["supervisor"].pop("status_api_token_file")
    doc["server"].pop("gpu_memory_gb")
    doc["llama_server"].pop("models_max")
    doc["docker"].pop("host")
    doc["process"].pop("binary")
    doc["localai"].pop("version")
    doc["localai"].pop("api_key_file")
    path = tmp_path / "uncommented.toml"
    path.write_text("\n".join(
        f"[{sec}]\n" + "\n".join(f"{k} = {_toml(v)}" for k, v in vals.items())
        for sec, vals in doc.items()))
    assert load_settings(path, required=True) == Settings()


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value + '"'
    return repr(value)


def test_example_model_config_has_the_three_models() -> None:
    data = yaml.safe_load(CONFIG_EXAMPLE.read_text())
    entries = [ModelEntry.model_validate(m) for m in data]
    assert [e.name for e in entries] == ["vicuna-13b", "karakuri-8x7b", "karakuri-70b"]
    assert all(e.parameters.model and e.parameters.model.endswith(".gguf") for e in entries)


def _unit_setting(name: str, unit_file: str = "localai-supervisor.service") -> str:
    unit = (REPO / "systemd" / unit_file).read_text()
    match = re.search(rf"^{name}=(.*)$", unit, flags=re.M)
    assert match, f"{name} missing from the unit"
    return match.group(1).strip()


def test_the_supervisors_own_stop_fits_inside_the_units_stop_timeout() -> None:
    from supervisor.daemon import FORCED_EXIT_SECONDS, SHUTDOWN_MARGIN_SECONDS

    s = Settings()
    worst = (s.health.drain_timeout + s.server.stop_timeout + SHUTDOWN_MARGIN_SECONDS
             + FORCED_EXIT_SECONDS)
    timeout = float(_unit_setting("TimeoutStopSec"))
    # systemd SIGKILLs what is left at TimeoutStopSec: the supervisor must be done first.
    assert worst + 5 <= timeout, (worst, timeout)


def test_the_socket_unit_passes_the_gateway_port_under_the_name_the_daemon_looks_for() -> None:
    from supervisor.settings import split_host_port
    from supervisor.sockets import GATEWAY_FD_NAME

    assert _unit_setting("FileDescriptorName", "localai-supervisor.socket") == GATEWAY_FD_NAME
    port = split_host_port(Settings().gateway.listen)[1]
    assert _unit_setting("ListenStream", "localai-supervisor.socket") == str(port)
    assert _unit_setting("Service", "localai-supervisor.socket") == "localai-supervisor.service"


def test_the_service_unit_is_hardened_below_exposure_4() -> None:
    """`systemd-analyze security` rates the shipped unit OK (< 4.0); the score is the same for
    both runtimes (one unit). Offline: no running systemd needed."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager",
         str(REPO / "systemd" / "localai-supervisor.service")],
        capture_output=True, text=True, check=False).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match, out[-2000:]
    assert float(match.group(1)) < 4.0, out
