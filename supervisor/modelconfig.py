"""LocalAI's model config (``config.yaml``: a list of model entries), parsed and checked.

Only what the supervisor needs to decide and render is typed here; every other key is kept
verbatim so LocalAI still sees it. A config with errors is never applied.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Read this much of each end of a model file for its fingerprint: catches a re-copied file
# without reading 40 GB.
_FINGERPRINT_BYTES = 64 * 1024


class Parameters(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    model: str | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    batch: int | None = None


class ModelEntry(BaseModel):
    """One model of config.yaml; unknown keys are preserved for LocalAI."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    backend: str | None = None
    parameters: Parameters = Field(default_factory=Parameters)
    context_size: int | None = Field(None, ge=1)
    gpu_layers: int | None = None
    threads: int | None = Field(None, ge=1)
    batch: int | None = Field(None, ge=1)
    mmap: bool | None = None
    mmlock: bool | None = None
    f16: bool | None = None
    embeddings: bool | None = None
    template: dict[str, Any] | None = None
    stopwords: list[str] | None = None

    @property
    def extra_keys(self) -> set[str]:
        """Top-level keys that are not typed here (carried to LocalAI as they are)."""
        return set(self.model_extra or {})


@dataclass(frozen=True)
class Problem:
    """An error or warning located in a file."""

    file: Path
    message: str
    line: int | None = None
    column: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        prefix = f"{self.field}: " if self.field else ""
        return f"{where}: {prefix}{self.message}"


@dataclass(frozen=True)
class ModelFile:
    """A model file the config refers to, identified without reading it whole."""

    name: str
    relpath: str
    size: int
    fingerprint: str


@dataclass(frozen=True)
class ModelSet:
    """A valid, complete model configuration: what a server may be (re)started onto."""

    source: Path
    entries: tuple[ModelEntry, ...]
    files: tuple[ModelFile, ...]
    revision: str = field(default="")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)


class ConfigRejected(Exception):
    """The configuration has errors; ``problems`` says where."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def _line_of(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def parse_yaml(path: Path, text: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML, keeping the node tree so later errors can name a line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = exc.problem or exc.context or "invalid YAML"
        raise ConfigRejected(
            [
                Problem(
                    path,
                    f"invalid YAML: {reason}",
                    line=mark.line + 1 if mark else None,
                    column=mark.column + 1 if mark else None,
                )
            ]
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigRejected([Problem(path, f"invalid YAML: {exc}")]) from exc
    return data, node


def _entry_nodes(root: yaml.Node | None) -> list[yaml.Node | None]:
    if isinstance(root, yaml.SequenceNode):
        return list(root.value)
    return []


def _field_line(entry_node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Follow a pydantic error location through the YAML node tree to its line."""
    node = entry_node
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == key), None)
            if nxt is None:
                break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                break
            node = node.value[key]
        else:
            break
    return _line_of(node)


def resolve_model_path(models_dir: Path, relpath: str) -> Path | None:
    """The model file inside ``models_dir``, or None when the path escapes it."""
    pure = PurePosixPath(relpath)
    if pure.is_absolute() or ".." in pure.parts:
        return None
    return models_dir / pure


def fingerprint_file(path: Path) -> tuple[int, str]:
    """Size plus a hash of inode and both ends: changes when a file is replaced or re-copied.

    mtime is left out on purpose: ``touch`` must not restart the server.
    """
    st = path.stat()
    digest = hashlib.sha256(f"{st.st_dev}:{st.st_ino}:{st.st_size}".encode())
    with path.open("rb") as fh:
        digest.update(fh.read(_FINGERPRINT_BYTES))
        if st.st_size > 2 * _FINGERPRINT_BYTES:
            fh.seek(st.st_size - _FINGERPRINT_BYTES)
            digest.update(fh.read(_FINGERPRINT_BYTES))
    return st.st_size, digest.hexdigest()[:16]


def load_model_set(config_file: Path, models_dir: Path) -> ModelSet:
    """Read and check config.yaml and the files it names; raise ConfigRejected on errors."""
    try:
        text = config_file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigRejected([Problem(config_file, "file not found")]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigRejected([Problem(config_file, f"cannot read: {exc}")]) from exc
    data, root = parse_yaml(config_file, text)
    if data is None:
        raise ConfigRejected([Problem(config_file, "no models: the file is empty")])
    if not isinstance(data, list):
        raise ConfigRejected(
            [Problem(config_file, "expected a YAML list of models (- name: …)", line=1)]
        )
    problems: list[Problem] = []
    entries: list[ModelEntry] = []
    nodes = _entry_nodes(root)
    seen: dict[str, int | None] = {}
    for index, raw in enumerate(data):
        node = nodes[index] if index < len(nodes) else None
        if not isinstance(raw, dict):
            problems.append(Problem(config_file, "model entry must be a mapping",
                                    line=_line_of(node), field=f"[{index}]"))
            continue
        try:
            entry = ModelEntry.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(err["loc"])
                label = raw.get("name") if isinstance(raw.get("name"), str) else f"[{index}]"
                problems.append(Problem(
                    config_file, err["msg"], line=_field_line(node, loc),
                    field=f"{label}." + ".".join(str(p) for p in loc),
                ))
            continue
        if entry.name in seen:
            problems.append(Problem(
                config_file, f"duplicate model name (first defined on line {seen[entry.name]})",
                line=_line_of(node), field=f"{entry.name}.name",
            ))
        seen.setdefault(entry.name, _line_of(node))
        entries.append(entry)

    files: list[ModelFile] = []
    for index, entry in enumerate(entries):
        node = nodes[index] if index < len(nodes) else None
        rel = entry.parameters.model
        if rel is None:
            continue
        line = _field_line(node, ("parameters", "model"))
        where = f"{entry.name}.parameters.model"
        target = resolve_model_path(models_dir, rel)
        if target is None:
            problems.append(Problem(config_file, f"{rel!r} escapes the models dir {models_dir}",
                                    line=line, field=where))
            continue
        if not target.is_file():
            problems.append(Problem(config_file, f"{rel!r} does not exist in {models_dir}",
                                    line=line, field=where))
            continue
        try:
            size, fp = fingerprint_file(target)
        except OSError as exc:
            problems.append(Problem(config_file, f"cannot read {target}: {exc.strerror}",
                                    line=line, field=where))
            continue
        files.append(ModelFile(entry.name, rel, size, fp))

    if not entries and not problems:
        problems.append(Problem(config_file, "no models: the list is empty", line=1))
    if problems:
        raise ConfigRejected(problems)
    canonical = json.dumps(
        {
            "entries": [e.model_dump(mode="json", exclude_none=True) for e in entries],
            "files": [(f.relpath, f.size, f.fingerprint) for f in files],
        },
        sort_keys=True,
    )
    revision = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    return ModelSet(config_file, tuple(entries), tuple(files), revision)


def is_temporary_name(name: str) -> bool:
    """Names of files still being written (downloads, editor swap files, dotfiles)."""
    base = os.path.basename(name)
    return (
        base.startswith(".")
        or base.endswith(("~", ".part", ".tmp", ".download", ".crdownload", ".swp", ".swx"))
        or base.startswith("#")
    )
