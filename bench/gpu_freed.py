"""On a GPU machine: how long after a process holding GPU memory dies does NVML show that
memory free, and does gpumem.wait_freed (what the gateway waits on before letting the next
model in) see it. A small CUDA program stands in for a model runner: it allocates N GiB with
cudaMalloc, touches it, and waits to be killed (SIGKILL, as the router does after its
stop-timeout).

Usage (needs nvcc and pynvml): python3 bench/gpu_freed.py [--gib 20] [--reps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor import gpumem

HOLDER = r"""
#include <cstdio>
#include <cstdlib>
#include <unistd.h>
#include <cuda_runtime.h>
int main(int argc, char** argv) {
    size_t bytes = (size_t)atof(argv[1]) * (1ull << 30);
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) { fprintf(stderr, "cudaMalloc failed\n"); return 1; }
    cudaMemset(p, 1, bytes);
    cudaDeviceSynchronize();
    printf("ready\n"); fflush(stdout);
    pause();
    return 0;
}
"""


def build(workdir: Path) -> Path:
    src = workdir / "holder.cu"
    src.write_text(HOLDER)
    exe = workdir / "holder"
    subprocess.run(["nvcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


async def read_used() -> int | None:
    return await asyncio.to_thread(gpumem.used_bytes)


def once(exe: Path, gib: float) -> tuple[float, float, bool]:
    """(seconds until the allocation shows, seconds until wait_freed says freed, reached)"""
    before_alloc = gpumem.used_bytes()
    assert before_alloc is not None, "no NVML"
    proc = subprocess.Popen([str(exe), str(gib)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    t = time.monotonic()
    while (gpumem.used_bytes() or 0) - before_alloc < 0.9 * gib * (1 << 30):
        time.sleep(0.01)
    shows = time.monotonic() - t
    before = gpumem.used_bytes()
    os.kill(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    got = asyncio.run(gpumem.wait_freed(read_used, before, int(gib * (1 << 30)),
                                        time.monotonic, poll=0.01))
    proc.wait()
    return shows, time.monotonic() - killed, got.reached


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=20.0)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        print(f"NVML: {gpumem.used_bytes()} bytes used before; holder allocates {args.gib} GiB")
        results = [once(exe, args.gib) for _ in range(args.reps)]
    for shows, freed, reached in results:
        print(f"allocation visible after {shows * 1000:.0f} ms; after SIGKILL, "
              f"75 % shown free after {freed * 1000:.0f} ms (reached: {reached})")
    print(f"median time from SIGKILL to 75 % free in NVML: "
          f"{statistics.median(r[1] for r in results) * 1000:.0f} ms over {args.reps} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
