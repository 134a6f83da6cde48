"""GGUF header inspection against real files written by gguf-py's GGUFWriter.

gguf-py's own GGUFReader serves as the independent oracle for layout facts (data offset, tensor
extents); the byte counts are checked from outside by a spy on the module's ``open``.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import ggufinfo
from supervisor.ggufinfo import (
    GGUFError,
    GGUFInfo,
    inspect_gguf,
    inspect_model,
    shard_paths,
)
from supervisor.tinygguf import BOS_ID, DEFAULT_CHAT_TEMPLATE, EOS_ID, write_tiny_llama

GiB = 1 << 30


def oracle_expected_size(path: Path) -> tuple[int, int]:
    """(data offset, end of the furthest tensor) according to gguf-py's GGUFReader."""
    reader = gguf.GGUFReader(path)
    return reader.data_offset, max(t.data_offset + t.n_bytes for t in reader.tensors)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=3)


class ReadSpy:
    """Stands in for ``open`` inside ggufinfo and counts every byte handed out."""

    def __init__(self) -> None:
        self.bytes_read = 0

    def __call__(self, path: Path, mode: str, buffering: int) -> io.FileIO:
        assert mode == "rb" and buffering == 0
        spy = self

        class CountingFile(io.FileIO):
            def read(self, size: int | None = -1) -> bytes:
                data = super().read(size)
                spy.bytes_read += len(data)
                return data

            def readinto(self, buffer: Any) -> int:
                n = super().readinto(buffer)
                spy.bytes_read += n
                return n

            def readall(self) -> bytes:
                data = super().readall()
                spy.bytes_read += len(data)
                return data

        return CountingFile(path, "rb")


@pytest.fixture
def read_spy(monkeypatch: pytest.MonkeyPatch) -> ReadSpy:
    spy = ReadSpy()
    monkeypatch.setattr(ggufinfo, "open", spy, raising=False)
    return spy


# ---------------------------------------------------------------- fields of real files


@pytest.mark.parametrize(("seed", "context_length", "name"), [(0, 4096, "tiny"), (7, 131072, "x")])
def test_tiny_model_fields(tmp_path: Path, seed: int, context_length: int, name: str) -> None:
    path = write_tiny_llama(
        tmp_path / "m.gguf", seed=seed, context_length=context_length, name=name
    )
    info = inspect_gguf(path)
    data_offset, end = oracle_expected_size(path)

    assert info.path == path
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.name == name
    assert info.block_count == 2
    assert info.context_length == context_length
    assert info.embedding_length == 64
    assert (info.file_type, info.file_type_name) == (1, "MOSTLY_F16")
    assert info.quantization == "F16"
    assert (info.bos_token_id, info.bos_token) == (BOS_ID, "<s>")
    assert (info.eos_token_id, info.eos_token) == (EOS_ID, "</s>")
    assert (info.eot_token_id, info.eot_token) == (None, None)
    assert info.chat_template == DEFAULT_CHAT_TEMPLATE
    assert info.tensor_count == 3 + 9 * 2
    assert info.alignment == 32
    assert info.data_offset == data_offset
    assert info.expected_size == end
    assert info.unknown_tensor_types == ()
    assert info.actual_size == path.stat().st_size
    assert info.complete
    assert info.split is None and info.split_tensor_count is None


def test_chat_template_absent(tmp_path: Path) -> None:
    info = inspect_gguf(write_tiny_llama(tmp_path / "m.gguf", chat_template=None))
    assert info.chat_template is None
    assert info.eos_token == "</s>"


def test_header_bytes_read_is_what_the_file_handed_out(tiny: Path, read_spy: ReadSpy) -> None:
    info = inspect_gguf(tiny)
    assert info.header_bytes_read == read_spy.bytes_read
    assert info.header_bytes_read <= 64 * 1024


def write_model(
    path: Path,
    *,
    vocab_size: int = 2000,
    eos_id: int = 1500,
    eot_id: int = 1999,
    split_max_tensors: int = 0,
) -> list[Path]:
    """A model whose vocabulary spans several marks, ids written before the vocabulary, and a
    quantized (Q4_K) bulk; returns the files written (several when split)."""
    writer = gguf.GGUFWriter(path, "qwen2", split_max_tensors=split_max_tensors)
    writer.add_eos_token_id(eos_id)
    writer.add_eot_token_id(eot_id)
    writer.add_bos_token_id(0)
    writer.add_name("big vocab")
    writer.add_block_count(1)
    writer.add_context_length(32768)
    writer.add_embedding_length(256)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    tokens = [f"tok{i}-ü" for i in range(vocab_size)]
    tokens[eos_id] = "<|im_end|>"
    tokens[eot_id] = "<|eot_id|> ✓"
    writer.add_token_list(tokens)
    writer.add_token_merges([f"a{i} b{i}" for i in range(3000)])
    writer.add_token_scores([0.0] * vocab_size)
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_K]
    for name in ("token_embd.weight", "blk.0.ffn_up.weight", "output.weight"):
        data = np.zeros((64, 256 // block * type_size), dtype=np.uint8)
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    writer.add_tensor("output_norm.weight", np.ones(256, dtype=np.float32))
    files = writer.format_shard_names(path)
    finish(writer)
    return files


def finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_token_texts_are_found_anywhere_in_the_vocabulary(tmp_path: Path) -> None:
    [path] = write_model(tmp_path / "m.gguf")
    info = inspect_gguf(path)
    assert (info.bos_token_id, info.bos_token) == (0, "tok0-ü")
    assert (info.eos_token_id, info.eos_token) == (1500, "<|im_end|>")
    assert (info.eot_token_id, info.eot_token) == (1999, "<|eot_id|> ✓")
    assert info.architecture == "qwen2"
    assert (info.block_count, info.context_length, info.embedding_length) == (1, 32768, 256)
    assert info.file_type_name == "MOSTLY_Q4_K_M"
    assert info.quantization == "Q4_K"
    assert info.chat_template is None
    assert (info.data_offset, info.expected_size) == oracle_expected_size(path)
    assert info.complete


def test_token_ids_outside_the_vocabulary_have_no_text(tmp_path: Path) -> None:
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_eos_token_id(10)
    writer.add_token_list(["a", "b"])
    finish(writer)
    info = inspect_gguf(path)
    assert (info.eos_token_id, info.eos_token) == (10, None)
    assert info.tensor_count == 0
    assert info.quantization is None
    assert info.block_count is None
    assert info.complete


def test_custom_alignment_moves_the_data(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_custom_alignment(4096)
    writer.add_tensor("w", np.ones((4, 8), dtype=np.float32))
    finish(writer)
    info = inspect_gguf(path)
    assert info.alignment == 4096
    assert (info.data_offset, info.expected_size) == oracle_expected_size(path)
    assert info.data_offset == 4096 and info.expected_size == 4096 + 4 * 8 * 4


# ---------------------------------------------------------------- incomplete and damaged files


def copy_cut(src: Path, dst: Path, length: int) -> Path:
    dst.write_bytes(src.read_bytes()[:length])
    return dst


def test_cut_in_tensor_data_is_incomplete(tiny: Path, tmp_path: Path) -> None:
    full = inspect_gguf(tiny)
    cut = full.data_offset + 1000
    info = inspect_gguf(copy_cut(tiny, tmp_path / "cut.gguf", cut))
    assert not info.complete
    assert info.actual_size == cut
    assert info.expected_size == full.expected_size > cut
    assert info.eos_token == "</s>"


def test_every_cut_inside_the_header_says_truncated(tiny: Path, tmp_path: Path) -> None:
    full = inspect_gguf(tiny)
    data = tiny.read_bytes()
    path = tmp_path / "cut.gguf"
    for cut in [
        *range(64),
        *range(64, full.data_offset, 13),
        *range(full.data_offset - 40, full.data_offset),
    ]:
        path.write_bytes(data[:cut])
        try:
            info = inspect_gguf(path)
        except GGUFError as exc:
            assert f"header truncated at byte {cut}" in str(exc)
            assert "still being copied or is damaged" in str(exc)
            assert exc.path == path
        else:  # the tensor table is whole: only (some of) the alignment padding is missing
            assert cut > full.data_offset - full.alignment
            assert not info.complete


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.touch()
    with pytest.raises(GGUFError, match=r"header truncated at byte 0 \(empty file\)"):
        inspect_gguf(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\x03\x04\x14\x00\x00\x00", r"not a GGUF file \(starts with b'PK\\x03\\x04'\)$"),
        (b"hello world\n", r"not a GGUF file \(starts with b'hell'\)$"),
        (b"GGU!" + bytes(100), r"not a GGUF file \(starts with b'GGU!'\)"),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 4\n",
            "Git LFS pointer",
        ),
        (bytes(4096), "preallocated download"),
        (b"<!DOCTYPE html><html>", "HTML page"),
        (b"tjgg" + bytes(64), "pre-GGUF ggml"),
    ],
)
def test_not_gguf(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match=message):
        inspect_gguf(path)


def test_prefix_of_magic_is_truncation(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GG")
    with pytest.raises(GGUFError, match="header truncated at byte 2"):
        inspect_gguf(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot read: No such file"):
        inspect_gguf(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError, match="not a regular file"):
        inspect_gguf(tmp_path)


def header(version: int = 3, tensors: int = 0, kvs: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, kvs)


def gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def kv(key: bytes, vtype: int, payload: bytes) -> bytes:
    return gguf_string(key) + struct.pack("<I", vtype) + payload


ARRAY, STRING, UINT32 = (
    gguf.GGUFValueType.ARRAY,
    gguf.GGUFValueType.STRING,
    gguf.GGUFValueType.UINT32,
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (header(version=1), "GGUF version 1 is obsolete"),
        (header(version=4), "unsupported GGUF version 4"),
        (header(version=0), "unsupported GGUF version 0"),
        (b"GGUF" + struct.pack(">I", 3) + bytes(16), r"big-endian GGUF \(version 3\)"),
        (header(tensors=1 << 40), "declares 1099511627776 tensors"),
        (header(kvs=1 << 40), "declares 1099511627776 metadata keys"),
        (
            header(kvs=1) + struct.pack("<Q", 1 << 62),
            "metadata key #0 is 4611686018427387904 bytes",
        ),
        (
            header(kvs=1) + kv(b"k", STRING, struct.pack("<Q", 1 << 40)),
            "the value of 'k' is 1099511627776 bytes long",
        ),
        (header(kvs=1) + kv(b"k", 99, b""), "'k' has unknown value type 99"),
        (
            header(kvs=1) + kv(b"k", ARRAY, struct.pack("<IQ", ARRAY, 1)),
            "'k' is an array of unsupported type 9",
        ),
        (
            header(kvs=1) + kv(b"k", ARRAY, struct.pack("<IQ", UINT32, 1 << 40)),
            "'k' has 1099511627776 items",
        ),
        (
            header(kvs=1) + kv(b"k", ARRAY, struct.pack("<IQ", UINT32, 1 << 20)),
            r"header truncated at byte \d+ \(reading the value of 'k'\)",
        ),
        (
            header(kvs=1) + kv(b"k", ARRAY, struct.pack("<IQQ", STRING, 2, 1 << 40)),
            "array item at byte 49 in the value of 'k' is 1099511627776 bytes long",
        ),
        (
            header(kvs=2) + kv(b"k", UINT32, b"\0" * 4) + kv(b"k", UINT32, b"\0" * 4),
            "duplicate metadata key 'k'",
        ),
        (
            header(kvs=1) + kv(b"general.alignment", UINT32, struct.pack("<I", 48)),
            "general.alignment is 48, not a power of two",
        ),
        (header(tensors=1) + gguf_string(b"t" * 64), "tensor name #0 is 64 bytes long"),
        (header(tensors=1) + gguf_string(b"t") + struct.pack("<I", 5), "5 dimensions"),
        (
            header(tensors=1) + gguf_string(b"t") + struct.pack("<IQ", 1, 1 << 63),
            "impossible shape",
        ),
        (
            header(tensors=1)
            + gguf_string(b"t")
            + struct.pack("<IQIQ", 1, 100, gguf.GGMLQuantizationType.Q4_K, 0),
            r"tensor #0 \(Q4_K\) has rows of 100 elements, not a multiple of its block size 256",
        ),
        (
            header(tensors=2) + (gguf_string(b"t") + struct.pack("<IQIQ", 1, 8, 0, 0)) * 2,
            "duplicate tensor name 't'",
        ),
    ],
)
def test_malformed_headers(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(content + bytes(64))
    with pytest.raises(GGUFError, match=message):
        inspect_gguf(path)


def test_unknown_tensor_type_gives_a_minimum_size(tmp_path: Path) -> None:
    tensor = gguf_string(b"t") + struct.pack("<IQIQ", 1, 8, 250, 64)
    path = tmp_path / "x.gguf"
    path.write_bytes(header(version=2, tensors=1) + tensor)
    info = inspect_gguf(path)
    assert info.version == 2
    assert info.unknown_tensor_types == (250,)
    assert info.expected_size == 64 + 64  # data offset + the tensor's start
    assert not info.complete


def test_header_larger_than_the_cap(tiny: Path, read_spy: ReadSpy) -> None:
    with pytest.raises(GGUFError, match="more than this reader accepts"):
        inspect_gguf(tiny, max_header_bytes=4096)
    assert read_spy.bytes_read <= 4096


# ---------------------------------------------------------------- hostile input, fuzzed

FUZZ_CAP = 16 * 1024


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def inspect_bytes_within_cap(directory: Path, content: bytes) -> None:
    """Inspect ``content``: only GGUFError may come out, and no more than the cap is read."""
    path = directory / "fuzz.gguf"
    path.write_bytes(content)
    spy = ReadSpy()
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(ggufinfo, "open", spy, raising=False)
        try:
            info = inspect_gguf(path, max_header_bytes=FUZZ_CAP)
        except GGUFError as exc:
            assert exc.path == path and str(exc)
        else:
            assert isinstance(info, GGUFInfo)
            assert info.header_bytes_read == spy.bytes_read
    assert spy.bytes_read <= FUZZ_CAP


fuzz_settings = settings(max_examples=300, deadline=None)


@fuzz_settings
@given(content=st.binary(max_size=2 * FUZZ_CAP))
def test_random_bytes(fuzz_dir: Path, content: bytes) -> None:
    inspect_bytes_within_cap(fuzz_dir, content)


@fuzz_settings
@given(
    version=st.sampled_from([2, 3]),
    tensors=st.integers(0, 4) | st.integers(0, 2**64 - 1),
    kvs=st.integers(0, 4) | st.integers(0, 2**64 - 1),
    tail=st.binary(max_size=2 * FUZZ_CAP),
)
def test_random_bytes_after_a_valid_start(
    fuzz_dir: Path, version: int, tensors: int, kvs: int, tail: bytes
) -> None:
    inspect_bytes_within_cap(fuzz_dir, header(version, tensors, kvs) + tail)


@fuzz_settings
@given(data=st.data())
def test_mutated_real_header(fuzz_dir: Path, tiny: Path, data: st.DataObject) -> None:
    original = bytearray(tiny.read_bytes()[: inspect_gguf(tiny).data_offset + 64])
    for _ in range(data.draw(st.integers(1, 8))):
        original[data.draw(st.integers(0, len(original) - 1))] = data.draw(st.integers(0, 255))
    inspect_bytes_within_cap(fuzz_dir, bytes(original))


# ---------------------------------------------------------------- huge files


def test_ten_gib_sparse_file_reads_only_kilobytes(tiny: Path, tmp_path: Path) -> None:
    path = tmp_path / "big.gguf"
    shutil.copyfile(tiny, path)
    os.truncate(path, 10 * GiB)
    info = inspect_gguf(path)
    assert info.actual_size == 10 * GiB
    assert info.complete
    assert info.header_bytes_read < 1 << 20
    assert info.eos_token == "</s>"


# ---------------------------------------------------------------- shards


def test_shard_paths(tmp_path: Path) -> None:
    assert shard_paths(tmp_path / "m-00002-of-00003.gguf") == [
        tmp_path / "m-00001-of-00003.gguf",
        tmp_path / "m-00002-of-00003.gguf",
        tmp_path / "m-00003-of-00003.gguf",
    ]
    assert shard_paths(tmp_path / "a-b-00001-of-00001.gguf") == [
        tmp_path / "a-b-00001-of-00001.gguf"
    ]
    for single in ("m.gguf", "m-00004-of-00003.gguf", "m-00000-of-00003.gguf", "m-1-of-2.gguf"):
        assert shard_paths(tmp_path / single) == [tmp_path / single]


@pytest.fixture
def two_shards(tmp_path: Path) -> list[Path]:
    files = write_model(tmp_path / "m.gguf", split_max_tensors=2)
    assert [f.name for f in files] == ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]
    return files


def test_split_model_complete(two_shards: list[Path]) -> None:
    first, second = two_shards
    model = inspect_model(second)
    assert model.complete, model
    assert model.path == second
    assert model.metadata.path == first
    assert [s.path for s in model.shards] == two_shards
    assert model.metadata.split == (1, 2) and model.shards[1].split == (2, 2)
    assert model.metadata.split_tensor_count == 4
    assert model.metadata.eos_token == "<|im_end|>"
    assert model.shards[1].architecture is None  # gguf-py puts the metadata in shard 1 only
    for shard in model.shards:
        assert (shard.data_offset, shard.expected_size) == oracle_expected_size(shard.path)


def test_split_model_missing_shard(two_shards: list[Path]) -> None:
    two_shards[1].unlink()
    model = inspect_model(two_shards[0])
    assert not model.complete
    assert model.missing == (two_shards[1],)
    assert [s.path for s in model.shards] == [two_shards[0]]


def test_split_model_incomplete_and_unreadable_shards(two_shards: list[Path]) -> None:
    first, second = two_shards
    os.truncate(second, second.stat().st_size - 100)
    model = inspect_model(first)
    assert model.incomplete == (second,) and not model.complete and not model.problems
    os.truncate(second, 20)
    model = inspect_model(first)
    assert model.incomplete == () and not model.complete
    assert len(model.problems) == 1 and "header truncated at byte 20" in model.problems[0]


def test_split_model_first_shard_missing(two_shards: list[Path]) -> None:
    two_shards[0].unlink()
    with pytest.raises(GGUFError, match="first shard is missing") as caught:
        inspect_model(two_shards[1])
    assert caught.value.path == two_shards[0]


def test_split_model_renamed_shards(two_shards: list[Path], tmp_path: Path) -> None:
    first, second = two_shards
    renamed = first.rename(tmp_path / "m.gguf")
    model = inspect_model(renamed)
    assert not model.complete
    assert "name lacks the -00001-of-0000N.gguf suffix" in model.problems[0]

    swapped = tmp_path / "s-00001-of-00002.gguf"
    shutil.copyfile(second, swapped)
    shutil.copyfile(renamed, tmp_path / "s-00002-of-00002.gguf")
    model = inspect_model(swapped)
    assert any("metadata says shard 2 of 2, the file name says 1 of 2" in p for p in model.problems)


def test_split_tensor_count_mismatch(tmp_path: Path) -> None:
    first, _ = write_model(tmp_path / "m.gguf", split_max_tensors=2)
    data = bytearray(first.read_bytes())
    key = gguf_string(gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT.encode())
    at = data.index(key) + len(key) + 4
    data[at : at + 4] = struct.pack("<i", 5)
    first.write_bytes(bytes(data))
    model = inspect_model(first)
    assert model.problems == (f"{first}: split.tensors.count is 5 but the shards hold 4",)


def test_single_file_model(tiny: Path) -> None:
    model = inspect_model(tiny)
    assert model.complete
    assert model.shards == (model.metadata,)
    assert model.metadata == inspect_gguf(tiny)
