"""/metrics and /readyz from the typed status, on the daemon under a fake runtime and clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from daemonkit import Harness
from prometheus_client.parser import text_string_to_metric_families

from supervisor.metrics import exposition
from supervisor.status import Readiness

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(h: Harness) -> Samples:
    text = exposition(h.daemon.metrics).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    await harness.close()


async def test_the_servers_state_restarts_and_failure_cause_are_series(h: Harness) -> None:
    await h.start()
    await h.running()
    m = scrape(h)
    assert m[("localai_supervisor_server_up", ())] == 1
    assert m[("localai_supervisor_server_state", (("state", "RUNNING"),))] == 1
    assert m[("localai_supervisor_server_state", (("state", "FATAL"),))] == 0
    assert m[("localai_supervisor_server_restarts_total", (("reason", "crash"),))] == 0
    assert m[("localai_supervisor_runtime_connected", ())] == 1
    assert ("localai_supervisor_server_start_time_seconds", ()) in m
    revision = h.daemon.status().config.revision
    assert any(k[0] == "localai_supervisor_config_info" and ("revision", revision) in k[1]
               for k in m)
    assert m[("localai_supervisor_model_listed", (("model", "tiny-a"),))] == 1
    assert m[("localai_supervisor_config_last_check", (("outcome", "applied"),))] == 1
    assert ("process_resident_memory_bytes", ()) in m
    assert Readiness.of(h.daemon.status()) == Readiness(ready=True, reasons=[])

    h.runtime.crash()
    await h.until(lambda: h.runtime.launched == ["t1", "t2"], "the relaunch")
    await h.running()
    await h.until(lambda: h.daemon.status().last_failure is not None, "the diagnosis")
    m = scrape(h)
    assert m[("localai_supervisor_server_restarts_total", (("reason", "crash"),))] == 1
    assert m[("localai_supervisor_server_last_failure",
              (("cause", "model-load-failed"),))] == 1
    assert m[("localai_supervisor_server_failures_total",
              (("cause", "model-load-failed"),))] == 1
    probes = {k: v for k, v in m.items() if k[0] == "localai_supervisor_probe_results_total"}
    assert any(("probe", "liveness") in k[1] and ("result", "ok") in k[1] and v >= 1
               for k, v in probes.items()), probes
    assert any(k[0] == "localai_supervisor_probe_duration_seconds_count" for k in m)


async def test_readiness_says_why_not(h: Harness) -> None:
    await h.start()
    h.runtime.engine(False)  # nothing can start: never RUNNING
    await h.settle()
    ready = Readiness.of(h.daemon.status())
    assert not ready.ready and ready.reasons[0].startswith("server ")


def test_gpu_readings_become_per_device_series_and_nothing_without_nvml() -> None:
    from supervisor.gpumem import GpuReading
    from supervisor.gpumetrics import gpu_exposition

    reading = GpuReading(0, "NVIDIA H200", "GPU-89bc", 644939776, 150754820096, 12.0, 33.0,
                         77.9)
    samples = {(s.name, s.labels["gpu"]): s.value for f in text_string_to_metric_families(
        gpu_exposition([reading]).decode()) for s in f.samples}
    assert samples == {("localai_supervisor_gpu_memory_used_bytes", "0"): 644939776,
                       ("localai_supervisor_gpu_memory_total_bytes", "0"): 150754820096,
                       ("localai_supervisor_gpu_utilization_ratio", "0"): 0.12,
                       ("localai_supervisor_gpu_temperature_celsius", "0"): 33.0,
                       ("localai_supervisor_gpu_power_watts", "0"): 77.9}
    assert gpu_exposition([]) == b""
