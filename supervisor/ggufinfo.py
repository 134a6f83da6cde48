"""What a GGUF model file says about itself, read from its header alone.

Only the header, the metadata and the tensor table are read, never the tensor data, so
inspecting a 40 GB model costs kilobytes. ``gguf.GGUFReader`` is not used: it memory-maps the
whole file, builds a numpy view per vocabulary entry and a view over every tensor's data
(which fails on a file still being copied). Layout rules follow ggml's ``gguf.cpp``: v2/v3
only, little-endian, no nested arrays, at most 4 dimensions, rows a whole number of blocks.

Every length and count in the file is checked against a cap before it is acted on, and all
reads go through one counter with a byte budget, so a hostile or damaged file costs at most
``max_header_bytes`` of I/O and raises :class:`GGUFError`, never anything else.
"""

from __future__ import annotations

import importlib.util
import os
import re
import stat
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO


def _gguf_constants() -> Any:
    """The ``gguf`` package's own constants module (value types, quantisation block sizes,
    metadata keys), loaded on its own: it needs only the standard library, while importing
    the package pulls in numpy and its reader (about 18 MB the daemon has no use for)."""
    spec = importlib.util.find_spec("gguf")
    if spec is None or spec.origin is None:
        raise ImportError("the gguf package is not installed")
    path = Path(spec.origin).with_name("constants.py")
    loader = importlib.util.spec_from_file_location("supervisor._gguf_constants", path)
    if loader is None or loader.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


_C = _gguf_constants()
GGML_QUANT_SIZES: dict[Any, tuple[int, int]] = _C.GGML_QUANT_SIZES
GGUF_DEFAULT_ALIGNMENT: int = _C.GGUF_DEFAULT_ALIGNMENT
GGMLQuantizationType: Any = _C.GGMLQuantizationType
GGUFValueType: Any = _C.GGUFValueType
Keys: Any = _C.Keys
LlamaFileType: Any = _C.LlamaFileType

DEFAULT_MAX_HEADER_BYTES = 64 * 1024 * 1024
"""Read budget per file: the largest real headers (256k-token vocabularies with merges) are
around 20 MiB."""

MAX_KEY_BYTES = 64 * 1024
MAX_STRING_BYTES = 16 * 1024 * 1024  # chat templates are tens of KiB; this is far above
MAX_ARRAY_ITEMS = 1 << 24
MAX_KV_COUNT = 1 << 16
MAX_TENSOR_COUNT = 1 << 20

SUPPORTED_VERSIONS = (2, 3)

_MAGIC = b"GGUF"
_GGML_MAX_DIMS = 4
_GGML_MAX_NAME = 64  # ggml refuses tensor names of this many bytes or more
_INT64_MAX = (1 << 63) - 1
_CHUNK = 64 * 1024
_MAX_CHUNK = 4 * 1024 * 1024
# Every this-many vocabulary entries the parser remembers a file offset, so a token's text is
# found later by skipping at most this many entries instead of keeping the whole vocabulary.
_TOKEN_MARK_STRIDE = 512

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SCALARS: dict[int, struct.Struct] = {
    GGUFValueType.UINT8: struct.Struct("<B"),
    GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"),
    GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: _U32,
    GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.FLOAT32: struct.Struct("<f"),
    GGUFValueType.BOOL: struct.Struct("<?"),
    GGUFValueType.UINT64: _U64,
    GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT64: struct.Struct("<d"),
}

# llama.cpp's shard naming (llama_split_path): PREFIX-00001-of-00003.gguf, numbered from 1.
_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")

# Recognisable first bytes of files that commonly sit where a model should be.
_NOT_GGUF_HINTS: tuple[tuple[bytes, str], ...] = (
    (b"version https://git-lfs", "a Git LFS pointer, not the model: fetch it with `git lfs pull`"),
    (b"\x00\x00\x00\x00", "zeros: a preallocated download not written yet, or a damaged file"),
    (b"<!DOCTYPE", "an HTML page: the download fetched an error or login page"),
    (b"<!doctype", "an HTML page: the download fetched an error or login page"),
    (b"<html", "an HTML page: the download fetched an error or login page"),
    (b"tjgg", "a pre-GGUF ggml (GGJT) model: convert it to GGUF"),
    (b"lmgg", "a pre-GGUF ggml model: convert it to GGUF"),
    (b"fmgg", "a pre-GGUF ggml (GGMF) model: convert it to GGUF"),
)

Scalar = int | float | bool | str


class GGUFError(Exception):
    """The file is not a usable GGUF model: the message says why, for an operator to read."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class GGUFInfo:
    """Header facts of one GGUF file. Metadata absent from the file (or of an unexpected
    type) is None; non-first shards of a split model carry almost none."""

    path: Path
    version: int
    architecture: str | None
    name: str | None
    block_count: int | None
    context_length: int | None
    embedding_length: int | None
    file_type: int | None
    file_type_name: str | None  # LlamaFileType name, e.g. "MOSTLY_Q4_K_M"
    quantization: str | None  # ggml type holding the most tensor bytes, e.g. "Q4_K"
    bos_token_id: int | None
    bos_token: str | None
    eos_token_id: int | None
    eos_token: str | None
    eot_token_id: int | None
    eot_token: str | None
    chat_template: str | None
    kv_count: int
    tensor_count: int
    alignment: int
    data_offset: int  # where tensor data starts
    expected_size: int  # bytes the file needs to hold all of its tensors
    unknown_tensor_types: tuple[int, ...]  # ggml types gguf-py doesn't know: size is a minimum
    actual_size: int
    header_bytes_read: int  # bytes actually read from the file
    split: tuple[int, int] | None  # (shard number from 1, shard count)
    split_tensor_count: int | None  # tensors across all shards (split.tensors.count)

    @property
    def complete(self) -> bool:
        """The file is long enough for every tensor it declares."""
        return self.actual_size >= self.expected_size


@dataclass(frozen=True)
class ModelFileInfo:
    """A whole model, one file or all shards of a split one; the first shard has the metadata."""

    path: Path
    metadata: GGUFInfo  # the first shard
    shards: tuple[GGUFInfo, ...]  # every shard that could be read, in order
    missing: tuple[Path, ...]
    incomplete: tuple[Path, ...]  # shorter than their tensor table says
    problems: tuple[str, ...]  # unreadable shards, inconsistent split metadata

    @property
    def complete(self) -> bool:
        """Every shard is there, readable, consistent and long enough."""
        return not (self.missing or self.incomplete or self.problems)


def shard_paths(path: Path) -> list[Path]:
    """All shard paths of the model ``path`` belongs to (existing or not); ``[path]`` if the
    name is not of llama.cpp's ``PREFIX-00001-of-00003.gguf`` form."""
    parsed = _parse_shard_name(path)
    if parsed is None:
        return [path]
    prefix, _, count = parsed
    return [path.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def inspect_gguf(path: Path, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> GGUFInfo:
    """Read ``path``'s header; raise :class:`GGUFError` if it is not a readable GGUF file."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise GGUFError(path, "not a regular file")
        with open(path, "rb", buffering=0) as raw:
            return _Parser(path, raw, os.fstat(raw.fileno()).st_size, max_header_bytes).parse()
    except OSError as exc:
        raise GGUFError(path, f"cannot read: {exc.strerror or exc}") from exc


def inspect_model(path: Path, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> ModelFileInfo:
    """Inspect every shard of the model ``path`` belongs to.

    Raises :class:`GGUFError` only when the first shard (the metadata) can't be read; trouble
    with other shards is reported in the result.
    """
    paths = shard_paths(path)
    first = paths[0]
    if first != path and not first.exists():
        raise GGUFError(first, "first shard is missing; it carries the model's metadata")
    metadata = inspect_gguf(first, max_header_bytes=max_header_bytes)
    shards = [metadata]
    missing: list[Path] = []
    problems: list[str] = []
    for shard in paths[1:]:
        if not shard.exists():
            missing.append(shard)
            continue
        try:
            shards.append(inspect_gguf(shard, max_header_bytes=max_header_bytes))
        except GGUFError as exc:
            problems.append(str(exc))
    problems += _split_problems(
        first, metadata, shards, len(paths), all_read=len(shards) == len(paths)
    )
    return ModelFileInfo(
        path=path,
        metadata=metadata,
        shards=tuple(shards),
        missing=tuple(missing),
        incomplete=tuple(info.path for info in shards if not info.complete),
        problems=tuple(problems),
    )


def _split_problems(
    first: Path, metadata: GGUFInfo, shards: Sequence[GGUFInfo], count: int, *, all_read: bool
) -> list[str]:
    problems: list[str] = []
    if count == 1 and metadata.split is not None and metadata.split[1] > 1:
        problems.append(
            f"{first}: metadata says shard {metadata.split[0]} of {metadata.split[1]}, but the "
            "name lacks the -00001-of-0000N.gguf suffix llama.cpp uses to find the other shards"
        )
        return problems
    for info in shards:
        expected = _shard_position(info.path)
        if info.split is not None and expected is not None and info.split != expected:
            problems.append(
                f"{info.path}: metadata says shard {info.split[0]} of {info.split[1]}, "
                f"the file name says {expected[0]} of {expected[1]}"
            )
    total = metadata.split_tensor_count
    found = sum(info.tensor_count for info in shards)
    if all_read and count > 1 and total is not None and total != found:
        problems.append(f"{first}: split.tensors.count is {total} but the shards hold {found}")
    return problems


def _parse_shard_name(path: Path) -> tuple[str, int, int] | None:
    match = _SHARD_NAME.match(path.name)
    if match is None:
        return None
    index, count = int(match["index"]), int(match["count"])
    if not 1 <= index <= count:
        return None
    return match["prefix"], index, count


def _shard_position(path: Path) -> tuple[int, int] | None:
    parsed = _parse_shard_name(path)
    return None if parsed is None else (parsed[1], parsed[2])


class _Source:
    """Reads from a raw file through its own buffer, counting every byte taken from the disk.

    ``pos`` is the parse position; moving it past the buffer costs nothing until the next
    read. No read ever goes beyond ``max_bytes`` in total or past offset ``max_bytes``.
    """

    def __init__(self, path: Path, raw: BinaryIO, size: int, max_bytes: int) -> None:
        self.path = path
        self.size = size
        self.max_bytes = max_bytes
        self.pos = 0
        self.bytes_read = 0
        self.context = "the header"
        self._raw = raw
        self._raw_pos = 0
        self._buf = b""
        self._buf_at = 0  # file offset of _buf[0]
        self._chunk = _CHUNK

    def error(self, message: str) -> GGUFError:
        return GGUFError(self.path, message)

    def read(self, n: int) -> bytes:
        start = self.pos - self._buf_at
        if start < 0 or start + n > len(self._buf):
            self._fill(n)
            start = 0
        self.pos += n
        return self._buf[start : start + n]

    def skip(self, n: int) -> None:
        self.pos += n
        self._check_within(self.pos)

    def u32(self) -> int:
        value: int = _U32.unpack(self.read(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack(self.read(8))[0]
        return value

    def raw_string(self, max_len: int, what: str) -> bytes:
        length = self.u64()
        if length > max_len:
            raise self.error(f"{what} is {length} bytes long, more than the {max_len} allowed")
        return self.read(length)

    def string(self, max_len: int, what: str) -> str:
        return self.raw_string(max_len, what).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, mark_stride: int = 0) -> list[int]:
        """Skip ``count`` strings; return the offset of every ``mark_stride``-th one."""
        marks: list[int] = []
        next_mark = 0 if mark_stride else -1
        unpack = _U64.unpack_from
        i = 0
        while i < count:
            # Fast path: walk the length prefixes inside the current buffer. An oversized
            # length overshoots the buffer and is caught by the slow path below.
            buf, base = self._buf, self._buf_at
            off, end = self.pos - base, len(buf)
            if off >= 0:
                last = end - 8
                while i < count and off <= last:
                    nxt: int = off + 8 + unpack(buf, off)[0]
                    if nxt > end:
                        break
                    if i == next_mark:
                        marks.append(base + off)
                        next_mark += mark_stride
                    off = nxt
                    i += 1
                self.pos = base + off
            if i < count:  # an item straddles the buffer's end
                if i == next_mark:
                    marks.append(self.pos)
                    next_mark += mark_stride
                length = self.u64()
                if length > MAX_STRING_BYTES:
                    self.pos -= 8
                    raise self._long_item(length)
                self.skip(length)
                i += 1
        return marks

    def _long_item(self, length: int) -> GGUFError:
        return self.error(
            f"array item at byte {self.pos} in {self.context} is {length} bytes long, "
            f"more than the {MAX_STRING_BYTES} allowed"
        )

    def _check_within(self, end: int) -> None:
        if end > self.size:
            where = "(empty file)" if self.size == 0 else f"(reading {self.context})"
            raise self.error(
                f"header truncated at byte {self.size} {where}: "
                "the file is still being copied or is damaged"
            )
        if end > self.max_bytes:
            raise self.error(
                f"header reaches past byte {self.max_bytes} (reading {self.context}), "
                "more than this reader accepts"
            )

    def _fill(self, n: int) -> None:
        """Make the buffer start at ``pos`` and hold at least ``n`` bytes."""
        self._check_within(self.pos + n)
        keep = b""
        start = self.pos - self._buf_at
        if 0 <= start < len(self._buf):
            keep = self._buf[start:]
        at = self.pos + len(keep)
        budget = self.max_bytes - self.bytes_read
        need = n - len(keep)
        if need > budget:
            raise self.error(
                f"reading the header needs more than {self.max_bytes} bytes "
                f"(reading {self.context}), more than this reader accepts"
            )
        if self._raw_pos != at:
            if at < self._raw_pos:
                self._chunk = _CHUNK  # jumping back (to one token): small reads again
            self._raw.seek(at)
        want = min(max(need, self._chunk), self.size - at, self.max_bytes - at, budget)
        self._chunk = min(self._chunk * 2, _MAX_CHUNK)
        parts = [keep]
        got = 0
        while got < want:
            data = self._raw.read(want - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        self._raw_pos = at + got
        self.bytes_read += got
        self._buf = b"".join(parts)
        self._buf_at = self.pos
        if len(self._buf) < n:  # the file shrank while being read
            self.size = at + got
            self._check_within(self.pos + n)


@dataclass(frozen=True)
class _TokenList:
    count: int
    marks: list[int]


class _Parser:
    def __init__(self, path: Path, raw: BinaryIO, size: int, max_bytes: int) -> None:
        self.path = path
        self.src = _Source(path, raw, size, max_bytes)

    def parse(self) -> GGUFInfo:
        src = self.src
        version = self._header()
        tensor_count, kv_count = src.u64(), src.u64()
        if tensor_count > MAX_TENSOR_COUNT:
            raise src.error(f"declares {tensor_count} tensors, more than {MAX_TENSOR_COUNT}")
        if kv_count > MAX_KV_COUNT:
            raise src.error(f"declares {kv_count} metadata keys, more than {MAX_KV_COUNT}")
        meta, tokens = self._metadata(kv_count)
        alignment = _alignment(meta, src)
        sizes, unknown, max_end = self._tensor_infos(tensor_count)
        header_end = src.pos
        data_offset = -(-header_end // alignment) * alignment
        expected = data_offset + max_end if tensor_count else header_end
        bos, eos, eot = (_int(meta, key) for key in _TOKEN_ID_KEYS)
        texts = self._token_texts(tokens, [i for i in (bos, eos, eot) if i is not None])
        arch = _str(meta, Keys.General.ARCHITECTURE)
        file_type = _int(meta, Keys.General.FILE_TYPE)
        return GGUFInfo(
            path=self.path,
            version=version,
            architecture=arch,
            name=_str(meta, Keys.General.NAME),
            block_count=_arch_int(meta, arch, Keys.LLM.BLOCK_COUNT),
            context_length=_arch_int(meta, arch, Keys.LLM.CONTEXT_LENGTH),
            embedding_length=_arch_int(meta, arch, Keys.LLM.EMBEDDING_LENGTH),
            file_type=file_type,
            file_type_name=None if file_type is None else _file_type_name(file_type),
            quantization=sizes.most_common(1)[0][0] if sizes else None,
            bos_token_id=bos,
            bos_token=None if bos is None else texts.get(bos),
            eos_token_id=eos,
            eos_token=None if eos is None else texts.get(eos),
            eot_token_id=eot,
            eot_token=None if eot is None else texts.get(eot),
            chat_template=_str(meta, Keys.Tokenizer.CHAT_TEMPLATE),
            kv_count=kv_count,
            tensor_count=tensor_count,
            alignment=alignment,
            data_offset=data_offset,
            expected_size=expected,
            unknown_tensor_types=tuple(sorted(unknown)),
            actual_size=src.size,
            header_bytes_read=src.bytes_read,
            split=_split(meta, self.path),
            split_tensor_count=_int(meta, Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT),
        )

    def _header(self) -> int:
        src = self.src
        head = src.read(min(src.size, src.max_bytes, 32))
        if head[:4] != _MAGIC:
            if len(head) < 4 and _MAGIC.startswith(head):
                src.pos = 0
                src.read(4)  # raises: truncated
            hint = next((text for prefix, text in _NOT_GGUF_HINTS if head.startswith(prefix)), None)
            message = f"not a GGUF file (starts with {head[:4]!r})"
            raise src.error(f"{message}: {hint}" if hint else message)
        src.pos = 4
        version = src.u32()
        if version & 0xFFFF == 0 and version:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            raise src.error(
                f"big-endian GGUF (version {swapped}) is not supported; use a little-endian file"
            )
        if version == 1:
            raise src.error("GGUF version 1 is obsolete and not supported; re-convert the model")
        if version not in SUPPORTED_VERSIONS:
            raise src.error(f"unsupported GGUF version {version} (supported: 2 and 3)")
        return version

    def _metadata(self, kv_count: int) -> tuple[dict[str, Scalar], _TokenList | None]:
        """Keep scalar and string values; skip arrays, marking the vocabulary's offsets."""
        src = self.src
        meta: dict[str, Scalar] = {}
        seen: set[str] = set()
        tokens: _TokenList | None = None
        for i in range(kv_count):
            src.context = f"metadata key #{i}"
            key = src.string(MAX_KEY_BYTES, f"metadata key #{i}")
            if key in seen:
                raise src.error(f"duplicate metadata key {key!r}")
            seen.add(key)
            src.context = f"the value of {key!r}"
            vtype = src.u32()
            if vtype == GGUFValueType.STRING:
                meta[key] = src.string(MAX_STRING_BYTES, f"the value of {key!r}")
            elif vtype in _SCALARS:
                scalar = _SCALARS[vtype]
                meta[key] = scalar.unpack(src.read(scalar.size))[0]
            elif vtype == GGUFValueType.ARRAY:
                item_type, count = src.u32(), src.u64()
                if count > MAX_ARRAY_ITEMS:
                    raise src.error(f"{key!r} has {count} items, more than {MAX_ARRAY_ITEMS}")
                if item_type == GGUFValueType.STRING:
                    is_vocab = key == Keys.Tokenizer.LIST
                    marks = src.skip_strings(count, _TOKEN_MARK_STRIDE if is_vocab else 0)
                    if is_vocab:
                        tokens = _TokenList(count, marks)
                elif item_type in _SCALARS:
                    src.skip(count * _SCALARS[item_type].size)
                else:
                    raise src.error(f"{key!r} is an array of unsupported type {item_type}")
            else:
                raise src.error(f"{key!r} has unknown value type {vtype}")
        return meta, tokens

    def _tensor_infos(self, tensor_count: int) -> tuple[Counter[str], set[int], int]:
        """Bytes per ggml type name, unknown type ids, and the end of the furthest tensor."""
        src = self.src
        sizes: Counter[str] = Counter()
        unknown: set[int] = set()
        names: set[bytes] = set()
        max_end = 0
        for i in range(tensor_count):
            src.context = f"tensor info #{i}"
            name = src.raw_string(_GGML_MAX_NAME - 1, f"tensor name #{i}")
            if name in names:
                raise src.error(f"duplicate tensor name {name.decode(errors='replace')!r}")
            names.add(name)
            n_dims = src.u32()
            if n_dims > _GGML_MAX_DIMS:
                raise src.error(f"tensor #{i} has {n_dims} dimensions, more than {_GGML_MAX_DIMS}")
            dims = struct.unpack(f"<{n_dims}Q", src.read(8 * n_dims))
            n_elements = 1
            for dim in dims:
                n_elements *= dim
            if any(dim > _INT64_MAX for dim in dims) or n_elements > _INT64_MAX:
                raise src.error(f"tensor #{i} has an impossible shape {list(dims)}")
            raw_type, offset = src.u32(), src.u64()
            nbytes = 0
            qtype = _quant_type(raw_type)
            if qtype is None:
                unknown.add(raw_type)
            else:
                block, type_size = GGML_QUANT_SIZES[qtype]
                if (dims[0] if dims else 1) % block:
                    raise src.error(
                        f"tensor #{i} ({qtype.name}) has rows of {dims[0] if dims else 1} "
                        f"elements, not a multiple of its block size {block}"
                    )
                nbytes = n_elements // block * type_size
                sizes[qtype.name] += nbytes
            max_end = max(max_end, offset + nbytes)
        return sizes, unknown, max_end

    def _token_texts(self, tokens: _TokenList | None, ids: list[int]) -> dict[int, str]:
        """The vocabulary entries ``ids``, found by skipping from the nearest mark."""
        src = self.src
        texts: dict[int, str] = {}
        if tokens is None:
            return texts
        src.context = f"{Keys.Tokenizer.LIST!r}"
        for token_id in sorted(set(ids)):
            if 0 <= token_id < tokens.count:
                src.pos = tokens.marks[token_id // _TOKEN_MARK_STRIDE]
                src.skip_strings(token_id % _TOKEN_MARK_STRIDE)
                texts[token_id] = src.string(MAX_STRING_BYTES, f"token {token_id}")
        return texts


_TOKEN_ID_KEYS = (Keys.Tokenizer.BOS_ID, Keys.Tokenizer.EOS_ID, Keys.Tokenizer.EOT_ID)


def _alignment(meta: dict[str, Scalar], src: _Source) -> int:
    value = meta.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value & (value - 1):
        raise src.error(f"general.alignment is {value!r}, not a power of two")
    return value


def _quant_type(raw: int) -> Any:
    try:
        qtype = GGMLQuantizationType(raw)
    except ValueError:
        return None
    return qtype if qtype in GGML_QUANT_SIZES else None


def _file_type_name(value: int) -> str:
    try:
        return str(LlamaFileType(value).name)
    except ValueError:
        return f"UNKNOWN_{value}"


def _int(meta: dict[str, Scalar], key: str) -> int | None:
    value = meta.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(meta: dict[str, Scalar], key: str) -> str | None:
    value = meta.get(key)
    return value if isinstance(value, str) else None


def _arch_int(meta: dict[str, Scalar], arch: str | None, key_template: str) -> int | None:
    return None if arch is None else _int(meta, key_template.format(arch=arch))


def _split(meta: dict[str, Scalar], path: Path) -> tuple[int, int] | None:
    """(number from 1, count) from split.no/split.count, else from the file name."""
    index, count = _int(meta, Keys.Split.LLM_KV_SPLIT_NO), _int(meta, Keys.Split.LLM_KV_SPLIT_COUNT)
    if index is not None and count is not None and 0 <= index < count:
        return index + 1, count
    return _shard_position(path)
