"""GPU memory as NVML reports it, and the bounded wait for an unloaded model's memory to show
as free before the next model is let in.

GPU free-memory reporting lags the exit of the process that held it; a model loaded into
memory that still reads as used can fail to load. Ollama waits the same way (polling every
250 ms, up to 5 s, until about 75 % of the old runner's memory is free). NVML comes from the
optional ``nvidia-ml-py`` package (``pynvml``); without it, or without a GPU, nothing waits.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

FREED_FRACTION = 0.75
POLL_SECONDS = 0.25
MAX_WAIT_SECONDS = 5.0

_nvml: Any = None


def used_bytes() -> int | None:
    """Memory in use over all GPUs, or None without NVML. Blocking: run it in a thread."""
    return _read("used")


def total_bytes() -> int | None:
    """Memory of all GPUs together, or None without NVML. Blocking: run it in a thread."""
    return _read("total")


@dataclass(frozen=True)
class GpuReading:
    """One device as NVML reports it (for /metrics)."""

    index: int
    name: str
    uuid: str
    memory_used: int
    memory_total: int
    utilization: float | None
    temperature: float | None
    power_watts: float | None


def devices() -> list[GpuReading]:
    """Every GPU's memory, utilisation, temperature and power; empty without NVML. Blocking:
    run it in a thread."""
    nvml = _load()
    if nvml is None:
        return []
    try:
        return [_device(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
    except nvml.NVMLError:
        return []


def _device(nvml: Any, index: int) -> GpuReading:
    h = nvml.nvmlDeviceGetHandleByIndex(index)
    mem = nvml.nvmlDeviceGetMemoryInfo(h)
    return GpuReading(
        index, _text(nvml.nvmlDeviceGetName(h)), _text(nvml.nvmlDeviceGetUUID(h)),
        int(mem.used), int(mem.total),
        _optional(lambda: float(nvml.nvmlDeviceGetUtilizationRates(h).gpu), nvml),
        _optional(lambda: float(nvml.nvmlDeviceGetTemperature(h, 0)), nvml),
        _optional(lambda: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0, nvml))


def may_have_nvml() -> bool:
    """False once NVML was found missing (no package, driver or GPU): no need to ask again."""
    return _nvml is not False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(read: Callable[[], float], nvml: Any) -> float | None:
    """Some devices do not report some readings (NVML_ERROR_NOT_SUPPORTED)."""
    try:
        return read()
    except nvml.NVMLError:
        return None


def _load() -> Any:
    """The initialised pynvml module, or None (no package, no driver, no GPU)."""
    global _nvml
    if _nvml is None:
        try:
            pynvml = importlib.import_module("pynvml")  # optional: nvidia-ml-py
        except ImportError:
            _nvml = False
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            _nvml = False
            return None
        _nvml = pynvml
    return _nvml or None


def _read(field: str) -> int | None:
    nvml = _load()
    if nvml is None:
        return None
    try:
        total = 0
        for i in range(nvml.nvmlDeviceGetCount()):
            info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i))
            total += int(getattr(info, field))
        return total
    except nvml.NVMLError:
        return None


@dataclass(frozen=True)
class FreedWait:
    # None: nothing to wait for (no NVML, nothing expected).
    freed: int | None
    seconds: float
    reached: bool


async def wait_freed(read: Callable[[], Awaitable[int | None]], before: int | None,
                     expected: int, clock: Callable[[], float], *,
                     timeout: float = MAX_WAIT_SECONDS, poll: float = POLL_SECONDS) -> FreedWait:
    """Poll ``read`` until the memory in use is ``FREED_FRACTION`` of ``expected`` below
    ``before`` (a reading taken before the unload), or ``timeout`` passed."""
    if before is None or expected <= 0:
        return FreedWait(None, 0.0, True)
    start = clock()
    goal = FREED_FRACTION * expected
    freed = 0
    while True:
        used = await read()
        if used is None:
            return FreedWait(None, clock() - start, True)
        freed = before - used
        if freed >= goal:
            return FreedWait(freed, clock() - start, True)
        if clock() - start >= timeout:
            return FreedWait(freed, clock() - start, False)
        await asyncio.sleep(poll)
