"""Bytes read and wall time of ``inspect_gguf`` on 10 GiB sparse GGUF files.

Two files: the tiny test model stretched to 10 GiB, and a Qwen2.5-14B-shaped Q4_K_M header
(152k-token vocabulary, 151k merges, 579 tensors) whose tensor data is a hole. "cold" runs
first drop the file's pages with posix_fadvise(DONTNEED), which works on ext4/xfs, not tmpfs.

Usage: python bench/gguf_read_bytes.py [--dir DIR] [--runs N] [--gguf-reader]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import gguf

from supervisor.ggufinfo import inspect_gguf
from supervisor.tinygguf import write_qwen14b_header, write_tiny_llama

GiB = 1 << 30


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench(label: str, path: Path, runs: int, gguf_reader: bool) -> None:
    info = inspect_gguf(path)
    print(f"{label}: {path.stat().st_size} bytes on disk as {path.stat().st_blocks * 512} bytes")
    print(
        f"  data_offset {info.data_offset}  expected_size {info.expected_size}  "
        f"complete {info.complete}  quantization {info.quantization}  eos {info.eos_token!r}"
    )
    for cold in (False, True):
        times = []
        for _ in range(runs):
            if cold:
                drop_cache(path)
            start = time.perf_counter()
            info = inspect_gguf(path)
            times.append(time.perf_counter() - start)
        print(
            f"  {'cold' if cold else 'warm'}: header_bytes_read {info.header_bytes_read}  "
            f"median {statistics.median(times) * 1000:.1f} ms  min {min(times) * 1000:.1f} ms"
        )
    if gguf_reader:
        start = time.perf_counter()
        reader = gguf.GGUFReader(path)
        print(
            f"  gguf.GGUFReader for comparison: {(time.perf_counter() - start) * 1000:.0f} ms, "
            f"{len(reader.fields)} fields, {len(reader.tensors)} tensors"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write the sparse files (default: tmp)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--gguf-reader", action="store_true", help="also time gguf.GGUFReader")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tiny = write_tiny_llama(Path(tmp) / "tiny-10g.gguf")
        os.truncate(tiny, 10 * GiB)
        bench("tiny model stretched to 10 GiB", tiny, args.runs, args.gguf_reader)

        big = Path(tmp) / "qwen14b-q4km.gguf"
        write_qwen14b_header(big)
        os.truncate(big, max(inspect_gguf(big).expected_size, 10 * GiB))
        bench("14B Q4_K_M header, sparse data", big, args.runs, args.gguf_reader)


if __name__ == "__main__":
    main()
