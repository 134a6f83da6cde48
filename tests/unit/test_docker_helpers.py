"""The Docker runtime's pure helpers: create() arguments, GPU requests, start times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from docker.types import DeviceRequest
from docker.types import Mount as DockerMount

from supervisor.engines import RenderedFile
from supervisor.runtime.docker import (
    LABEL_MANAGED,
    LABEL_REVISION,
    LABEL_SPEC,
    _started_ns,
    container_kwargs,
    device_requests,
)
from supervisor.settings import RuntimeKind
from supervisor.spec import Mount, ServerSpec


def make_spec(**changes: Any) -> ServerSpec:
    fields: dict[str, Any] = {
        "runtime": RuntimeKind.DOCKER,
        "engine": "llama-server",
        "program": "llama-server:test",
        "args": ("--models-preset", "/localai-supervisor/models-preset.ini", "--port", "40080"),
        "env": (("A", "1"), ("B", "two")),
        "files": (RenderedFile("models-preset.ini", "version = 1\n"),),
        "mounts": (
            Mount("/var/lib/localai/model", "/localai/model", read_only=False),
            Mount("/etc/localai/config.yaml", "/localai/config.yaml"),
            Mount("/var/lib/localai-supervisor/rendered", "/localai-supervisor"),
        ),
        "listen_port": 40080,
        "publish_host": "127.0.0.1",
        "publish_port": 40090,
        "gpus": "all",
        "revision": "0123456789ab",
        "models": ("tiny-a", "tiny-b"),
    }
    fields.update(changes)
    return ServerSpec(**fields)


# ---- device_requests ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["all", "ALL", " all "])
def test_all_gpus(value: str) -> None:
    assert device_requests(value) == [DeviceRequest(count=-1, capabilities=[["gpu"]])]


@pytest.mark.parametrize("value", ["none", "None", "", "  "])
def test_no_gpus(value: str) -> None:
    assert device_requests(value) == []


@pytest.mark.parametrize(
    ("value", "ids"),
    [("0", ["0"]), ("0,1", ["0", "1"]), (" 0 , 1 ,", ["0", "1"]), ("2,,3", ["2", "3"])],
)
def test_listed_gpus(value: str, ids: list[str]) -> None:
    assert device_requests(value) == [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]


# ---- container_kwargs ---------------------------------------------------------------------


def test_container_kwargs() -> None:
    spec = make_spec()
    kw = container_kwargs(spec, "localai")
    assert kw == {
        "image": "llama-server:test",
        "command": ["--models-preset", "/localai-supervisor/models-preset.ini", "--port",
                    "40080"],
        "name": "localai",
        "labels": {LABEL_MANAGED: "true", LABEL_SPEC: spec.digest(),
                   LABEL_REVISION: "0123456789ab"},
        "environment": {"A": "1", "B": "two"},
        "ports": {"40080/tcp": ("127.0.0.1", 40090)},
        "mounts": [
            DockerMount(target="/localai/model", source="/var/lib/localai/model", type="bind",
                        read_only=False),
            DockerMount(target="/localai/config.yaml", source="/etc/localai/config.yaml",
                        type="bind", read_only=True),
            DockerMount(target="/localai-supervisor",
                        source="/var/lib/localai-supervisor/rendered", type="bind",
                        read_only=True),
        ],
        "device_requests": [DeviceRequest(count=-1, capabilities=[["gpu"]])],
        "restart_policy": {"Name": "no"},
        "detach": True,
    }


def test_container_labels_follow_the_spec() -> None:
    a = container_kwargs(make_spec(), "c")["labels"]
    b = container_kwargs(make_spec(args=("--port", "1")), "c")["labels"]
    assert a[LABEL_SPEC] != b[LABEL_SPEC]
    assert len(a[LABEL_SPEC]) == 16
    assert LABEL_MANAGED == "io.localai-supervisor.managed"


def test_container_kwargs_without_gpus_or_mounts() -> None:
    kw = container_kwargs(make_spec(gpus="none", mounts=()), "x")
    assert kw["device_requests"] == []
    assert kw["mounts"] == []


# ---- _started_ns --------------------------------------------------------------------------


def _epoch(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("started_at", "expected"),
    [
        ("2024-05-01T12:34:56.123456789Z", _epoch(2024, 5, 1, 12, 34, 56) * 10**9 + 123456789),
        ("2024-05-01T12:34:56.000000001Z", _epoch(2024, 5, 1, 12, 34, 56) * 10**9 + 1),
        ("2024-05-01T12:34:56.5Z", _epoch(2024, 5, 1, 12, 34, 56) * 10**9 + 500_000_000),
        ("2024-05-01T12:34:56Z", _epoch(2024, 5, 1, 12, 34, 56) * 10**9),
        ("1970-01-01T00:00:01.25Z", 1_250_000_000),
        ("0001-01-01T00:00:00Z", 0),
        ("", 0),
    ],
)
def test_started_ns(started_at: str, expected: int) -> None:
    assert _started_ns({"State": {"StartedAt": started_at}}) == expected


def test_started_ns_without_state() -> None:
    assert _started_ns({}) == 0
    assert _started_ns({"State": {}}) == 0


def test_started_ns_orders_restarts_of_the_same_container() -> None:
    first = _started_ns({"State": {"StartedAt": "2024-05-01T12:34:56.999999999Z"}})
    second = _started_ns({"State": {"StartedAt": "2024-05-01T12:34:57.000000001Z"}})
    assert second - first == 2


def test_a_model_with_mmlock_gets_an_unlimited_memlock_ulimit() -> None:
    """Docker's default memlock limit (8 MiB) makes mlock of the weights fail."""
    assert "ulimits" not in container_kwargs(make_spec(), "c")
    (ulimit,) = container_kwargs(make_spec(memlock_unlimited=True), "c")["ulimits"]
    assert (ulimit["Name"], ulimit["Soft"], ulimit["Hard"]) == ("memlock", -1, -1)
    # A spec without it keeps the digest it had before the field existed (no restart on
    # upgrade); one with it differs.
    assert make_spec().digest() == make_spec(memlock_unlimited=False).digest()
    assert make_spec(memlock_unlimited=True).digest() != make_spec().digest()
