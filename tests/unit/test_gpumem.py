"""The wait for NVML to show an unloaded model's memory free (a fake reader, a fake clock)."""

from __future__ import annotations

from supervisor import gpumem
from supervisor.gpumem import FreedWait, wait_freed

GIB = 1 << 30


class FakeGPU:
    """Memory in use falls by ``step`` bytes per reading (the lag of a real GPU's report)."""

    def __init__(self, used: int, step: int) -> None:
        self.used = used
        self.step = step
        self.now = 0.0

    async def read(self) -> int | None:
        self.now += gpumem.POLL_SECONDS
        self.used = max(0, self.used - self.step)
        return self.used


async def test_it_waits_until_three_quarters_of_the_model_show_free() -> None:
    gpu = FakeGPU(used=20 * GIB, step=2 * GIB)
    got = await wait_freed(gpu.read, 20 * GIB, 8 * GIB, lambda: gpu.now, poll=0)
    assert got == FreedWait(6 * GIB, 0.75, True)


async def test_it_gives_up_after_the_timeout_and_says_so() -> None:
    gpu = FakeGPU(used=20 * GIB, step=0)
    got = await wait_freed(gpu.read, 20 * GIB, 8 * GIB, lambda: gpu.now, poll=0, timeout=5.0)
    assert (got.freed, got.reached) == (0, False) and got.seconds >= 5.0


async def test_without_nvml_or_an_estimate_nothing_is_waited_for() -> None:
    gpu = FakeGPU(used=20 * GIB, step=0)
    assert await wait_freed(gpu.read, None, 8 * GIB, lambda: gpu.now) == FreedWait(None, 0, True)
    assert await wait_freed(gpu.read, 20 * GIB, 0, lambda: gpu.now) == FreedWait(None, 0, True)


def test_no_nvml_here_reads_as_none() -> None:
    # The test machines have no NVIDIA GPU (the device test reads a real one).
    assert gpumem.used_bytes() is None
