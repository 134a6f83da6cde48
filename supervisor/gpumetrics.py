"""GPU series for /metrics from NVML readings (gpumem.devices), kept apart from metrics.py so
it runs on a GPU machine with nothing but prometheus_client and pynvml."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .gpumem import GpuReading

SUP = "localai_supervisor"


class GpuCollector(Collector):
    """Per-device GPU readings (NVML), taken off the loop just before the scrape; absent
    without NVML. Labels: the device index, its UUID and its name."""

    def __init__(self, readings: list[GpuReading]) -> None:
        self._readings = readings

    def collect(self) -> Iterator[Metric]:
        if not self._readings:
            return
        labels = ("gpu", "uuid", "name")
        used = GaugeMetricFamily(f"{SUP}_gpu_memory_used_bytes", "GPU memory in use",
                                 labels=labels)
        total = GaugeMetricFamily(f"{SUP}_gpu_memory_total_bytes", "GPU memory",
                                  labels=labels)
        util = GaugeMetricFamily(f"{SUP}_gpu_utilization_ratio", "GPU busy time (0-1)",
                                 labels=labels)
        temp = GaugeMetricFamily(f"{SUP}_gpu_temperature_celsius", "GPU temperature",
                                 labels=labels)
        power = GaugeMetricFamily(f"{SUP}_gpu_power_watts", "GPU power draw", labels=labels)
        for r in self._readings:
            key = (str(r.index), r.uuid, r.name)
            used.add_metric(key, r.memory_used)
            total.add_metric(key, r.memory_total)
            if r.utilization is not None:
                util.add_metric(key, r.utilization / 100.0)
            if r.temperature is not None:
                temp.add_metric(key, r.temperature)
            if r.power_watts is not None:
                power.add_metric(key, r.power_watts)
        yield from (used, total, util, temp, power)


def gpu_exposition(readings: list[GpuReading]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GpuCollector(readings))
    return generate_latest(registry)


if __name__ == "__main__":  # on a GPU machine: what /metrics would add
    import sys

    from .gpumem import devices

    sys.stdout.write(gpu_exposition(devices()).decode())
