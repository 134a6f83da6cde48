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
import numpy as np

from supervisor.ggufinfo import inspect_gguf
from supervisor.tinygguf import DEFAULT_CHAT_TEMPLATE, write_tiny_llama

GiB = 1 << 30
Q4_K, Q6_K, F32 = (gguf.GGMLQuantizationType[n] for n in ("Q4_K", "Q6_K", "F32"))


def write_qwen14b_header(path: Path) -> None:
    """Header, metadata and tensor table of a 14B Q4_K_M model, with no tensor data."""
    n_vocab, n_embd, n_layer, n_ff, n_kv = 152064, 5120, 48, 13824, 1024
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_name("Qwen2.5 14B Instruct (bench)")
    writer.add_block_count(n_layer)
    writer.add_context_length(32768)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(40)
    writer.add_head_count_kv(8)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    tokens = [f"\u0120tok{i:06d}" for i in range(n_vocab)]
    tokens[151643], tokens[151645] = "<|endoftext|>", "<|im_end|>"
    writer.add_token_list(tokens)
    writer.add_token_types([1] * n_vocab)
    writer.add_token_merges([f"\u0120a{i} b{i}" for i in range(151387)])
    writer.add_eos_token_id(151645)
    writer.add_bos_token_id(151643)
    writer.add_chat_template(DEFAULT_CHAT_TEMPLATE * 8)

    def tensor(name: str, shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> None:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(shape)) // block * type_size
        writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)

    tensor("token_embd.weight", (n_vocab, n_embd), Q4_K)
    for i in range(n_layer):
        heavy = Q6_K if i % 2 == 0 else Q4_K  # Q4_K_M keeps half of v/down at Q6_K
        tensor(f"blk.{i}.attn_norm.weight", (n_embd,), F32)
        tensor(f"blk.{i}.attn_q.weight", (n_embd, n_embd), Q4_K)
        tensor(f"blk.{i}.attn_q.bias", (n_embd,), F32)
        tensor(f"blk.{i}.attn_k.weight", (n_kv, n_embd), Q4_K)
        tensor(f"blk.{i}.attn_k.bias", (n_kv,), F32)
        tensor(f"blk.{i}.attn_v.weight", (n_kv, n_embd), heavy)
        tensor(f"blk.{i}.attn_v.bias", (n_kv,), F32)
        tensor(f"blk.{i}.attn_output.weight", (n_embd, n_embd), Q4_K)
        tensor(f"blk.{i}.ffn_norm.weight", (n_embd,), F32)
        tensor(f"blk.{i}.ffn_gate.weight", (n_ff, n_embd), Q4_K)
        tensor(f"blk.{i}.ffn_up.weight", (n_ff, n_embd), Q4_K)
        tensor(f"blk.{i}.ffn_down.weight", (n_embd, n_ff), heavy)
    tensor("output_norm.weight", (n_embd,), F32)
    tensor("output.weight", (n_vocab, n_embd), Q6_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()


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
