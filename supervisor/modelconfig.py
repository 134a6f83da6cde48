"""LocalAI's model config, parsed, checked and linted: what the server may be restarted onto.

Sources are read the way LocalAI reads them (core/config/model_config_loader.go): the config
file (``--config-file``: a list of entries, or one mapping) and every ``*.yaml``/``*.yml``
in the models dir that is not a dotfile (one entry or a list each). Only the fields the
supervisor decides on are typed; every other key is kept verbatim for LocalAI. A result
with errors is never applied; one whose model files are still being copied is *pending*.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .findings import Problem, Severity
from .ggufinfo import GGUFError, GGUFInfo, ModelFileInfo, inspect_model
from .lint import Lint, LintContext, ModelFacts, chat_message_input_line, closest, lint
from .localai_schema import LEGACY_KEYS, MODEL_KEYS, known_keys

__all__ = [
    "ConfigRejected", "ModelEntry", "ModelFile", "ModelSet", "Pending", "Problem", "Severity",
    "Validation", "fingerprint_file", "is_temporary_name", "load_model_set",
    "resolve_model_path", "validate",
]

# Read this much of each end of a model file for its fingerprint: catches a re-copied file
# without reading 40 GB.
_FINGERPRINT_BYTES = 64 * 1024
_MAX_YAML_BYTES = 4 * 1024 * 1024
_LLAMA_BACKENDS = {None, "", "llama-cpp", "llama", "llama.cpp", "llama-cpp-fallback"}


class Parameters(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    model: str | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    batch: int | None = None


class TemplateSection(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    chat: str | None = None
    chat_message: str | None = None
    completion: str | None = None
    edit: str | None = None
    function: str | None = None
    use_tokenizer_template: bool | None = None


class ModelEntry(BaseModel):
    """One model; unknown keys are preserved for LocalAI (and warned about by the schema)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    backend: str | None = None
    parameters: Parameters = Field(default_factory=Parameters)
    context_size: int | None = Field(None, ge=1)
    gpu_layers: int | None = None
    threads: int | None = Field(None, ge=1)
    mmap: bool | None = None
    mmlock: bool | None = None
    f16: bool | None = None
    embeddings: bool | None = None
    template: TemplateSection | None = None
    stopwords: list[str] | None = None
    options: list[str] | None = None

    @property
    def extra_keys(self) -> set[str]:
        """Top-level keys that are not typed here (carried to LocalAI as they are)."""
        return set(self.model_extra or {})


@dataclass(frozen=True)
class ModelFile:
    """A model file the config refers to, identified without reading it whole."""

    name: str
    relpath: str
    size: int
    fingerprint: str


@dataclass(frozen=True)
class Pending:
    """A model file that is not ready yet (still being copied): the config waits for it."""

    model: str
    path: Path
    reason: str


@dataclass(frozen=True)
class ModelSet:
    """A valid, complete model configuration: what a server may be (re)started onto."""

    source: Path
    entries: tuple[ModelEntry, ...]
    files: tuple[ModelFile, ...]
    revision: str = field(default="")
    sources: tuple[Path, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)


@dataclass(frozen=True)
class Validation:
    """Everything a check found; ``models`` is set only when there are no errors or pendings."""

    models: ModelSet | None
    problems: tuple[Problem, ...]
    pending: tuple[Pending, ...]
    ggufs: Mapping[str, GGUFInfo] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.WARNING]


class ConfigRejected(Exception):
    """The configuration has errors; ``problems`` says where."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


@dataclass
class _Source:
    """One entry as read: where it came from and its YAML node (for line numbers)."""

    file: Path
    raw: Any
    node: yaml.Node | None
    label: str


def _line_of(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def parse_yaml(path: Path, text: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML, keeping the node tree so later errors can name a line."""
    try:
        # One parse: compose the node tree (for line numbers), then build the data from it.
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = ", ".join(x for x in (exc.context, exc.problem) if x) or "invalid YAML"
        raise ConfigRejected([Problem(
            path, f"invalid YAML: {reason}", line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None, code="yaml-syntax",
        )]) from exc
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        raise ConfigRejected([Problem(path, f"invalid YAML: {exc}", code="yaml-syntax")]) from exc
    return data, node


def _field_line(entry_node: yaml.Node | None, loc: Iterable[int | str]) -> int | None:
    """Follow a field path through the YAML node tree to its line (the nearest known one)."""
    node = entry_node
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
            if nxt is None:
                key_node = next((k for k, _ in node.value if getattr(k, "value", None) == key),
                                None)
                return _line_of(key_node) if key_node is not None else _line_of(node)
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                break
            node = node.value[key]
        else:
            break
    return _line_of(node)


def _field_node(entry_node: yaml.Node | None, loc: tuple[str, ...]) -> yaml.Node | None:
    """The value node at a mapping path, or None when it is not there."""
    node = entry_node
    for key in loc:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
    return node


def _key_line(entry_node: yaml.Node | None, loc: tuple[str, ...]) -> int | None:
    """Line of the key itself (for unknown keys, whose value may span lines)."""
    parent = entry_node
    for key in loc[:-1]:
        if not isinstance(parent, yaml.MappingNode):
            return _line_of(entry_node)
        parent = next((v for k, v in parent.value if getattr(k, "value", None) == key), None)
    if isinstance(parent, yaml.MappingNode):
        for k, _ in parent.value:
            if getattr(k, "value", None) == loc[-1]:
                return _line_of(k)
    return _line_of(parent)


def resolve_model_path(models_dir: Path, relpath: str) -> Path | None:
    """The model file inside ``models_dir``, or None when the path escapes it."""
    pure = PurePosixPath(relpath)
    if pure.is_absolute() or ".." in pure.parts:
        return None
    return models_dir / pure


def fingerprint_file(path: Path) -> tuple[int, str]:
    """Size plus a hash of identity and both ends: changes when a file is replaced or re-copied.

    mtime is left out on purpose: a ``touch`` must not reload a 40 GB model.
    """
    st = path.stat()
    digest = hashlib.sha256(f"{st.st_dev}:{st.st_ino}:{st.st_size}".encode())
    with path.open("rb") as fh:
        digest.update(fh.read(_FINGERPRINT_BYTES))
        if st.st_size > 2 * _FINGERPRINT_BYTES:
            fh.seek(st.st_size - _FINGERPRINT_BYTES)
            digest.update(fh.read(_FINGERPRINT_BYTES))
    return st.st_size, digest.hexdigest()[:16]


def is_temporary_name(name: str) -> bool:
    """Names of files still being written (downloads, editor swap files, dotfiles)."""
    base = os.path.basename(name.rstrip("/"))
    return (
        base.startswith((".", "#"))
        or base.endswith(("~", ".part", ".tmp", ".download", ".crdownload", ".swp", ".swx"))
    )


def _read_sources(path: Path, *, required: bool) -> tuple[list[_Source], list[Problem]]:
    try:
        if path.stat().st_size > _MAX_YAML_BYTES:
            return [], [Problem(path, f"larger than {_MAX_YAML_BYTES // 1024 // 1024} MiB: "
                                "not a model config", code="too-large")]
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], ([Problem(path, "file not found", code="missing")] if required else [])
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return [], [Problem(path, f"cannot read: {reason}", code="unreadable")]
    try:
        data, root = parse_yaml(path, text)
    except ConfigRejected as exc:
        return [], exc.problems
    if data is None:
        return [], ([Problem(path, "no models: the file is empty", code="empty")]
                    if required else [])
    if isinstance(data, dict):
        name = data.get("name")
        return [_Source(path, data, root, name if isinstance(name, str) and name else
                        path.name)], []
    if not isinstance(data, list):
        return [], [Problem(path, "expected a list of models (- name: …) or one model mapping",
                            line=1, code="not-a-model")]
    nodes = list(root.value) if isinstance(root, yaml.SequenceNode) else []
    out = []
    for index, raw in enumerate(data):
        node = nodes[index] if index < len(nodes) else None
        label = raw.get("name") if isinstance(raw, dict) else None
        out.append(_Source(path, raw, node, label if isinstance(label, str) and label else
                           f"[{index}]"))
    return out, []


def _not_a_model_file(path: Path, models_dir: Path, rel: str) -> tuple[str, str, str | None] | None:
    """Why ``path`` cannot be a model file, as (message, code, hint); None when it can be
    read. Each way of being unusable says so: a loop is not a missing file."""
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return (f"{rel!r} is a symlink loop", "symlink-loop",
                    "point the link at the model file itself")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return (f"{rel!r} cannot be reached: permission denied on a directory on its way",
                    "unreadable", "let the supervisor's user (and the server's) traverse it")
        if exc.errno == errno.ENOENT and path.is_symlink():
            return (f"{rel!r} is a symlink to something that does not exist", "dangling-link",
                    None)
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
            return f"{rel!r} does not exist in {models_dir}", "missing-file", None
        return f"{rel!r} cannot be read: {exc.strerror}", "unreadable", None
    if not stat.S_ISREG(st.st_mode):
        return f"{rel!r} is not a regular file", "not-a-file", None
    if not os.access(path, os.R_OK):
        return (f"{rel!r} is not readable by the supervisor (mode "
                f"{stat.S_IMODE(st.st_mode):o}, owner uid {st.st_uid})", "unreadable",
                "make it readable by the supervisor's user and the server's")
    return None


def _models_dir_yamls(models_dir: Path, config_file: Path) -> list[Path]:
    """``*.yaml``/``*.yml`` in the models dir, not recursive, no dotfiles (as LocalAI)."""
    try:
        names = sorted(os.listdir(models_dir))
    except OSError:
        return []
    out = []
    for name in names:
        p = models_dir / name
        if name.startswith(".") or Path(name).suffix.lower() not in (".yaml", ".yml"):
            continue
        if p.absolute() == config_file.absolute() or not p.is_file():
            continue
        out.append(p)
    return out


def _unknown_keys(src: _Source, model: str) -> list[Problem]:
    out: list[Problem] = []

    def walk(value: Mapping[Any, Any], path: tuple[str, ...]) -> None:
        known = known_keys(path)
        if known is None:
            return
        for key, sub in value.items():
            key_s = str(key)
            here = (*path, key_s)
            spec = known.get(key_s)
            if spec is None:
                out.append(_unknown(src, model, here, list(known)))
                continue
            if spec.children is None:
                continue
            if isinstance(sub, dict):
                walk(sub, here)
            elif isinstance(sub, list):
                for item in sub:
                    if isinstance(item, dict):
                        walk(item, here)

    if isinstance(src.raw, dict):
        walk(src.raw, ())
    return out


def _unknown(src: _Source, model: str, path: tuple[str, ...], known: list[str]) -> Problem:
    key = path[-1]
    dotted = ".".join(path)
    hint = LEGACY_KEYS.get(path)
    if hint is None and (guess := closest(key, known)):
        hint = f"did you mean {'.'.join((*path[:-1], guess))}?"
    if hint is None:
        elsewhere = [p for p in ((), ("parameters",), ("template",)) if p != path[:-1]
                     and key in (known_keys(p) or {})]
        if elsewhere:
            hint = f"it belongs at {'.'.join((*elsewhere[0], key))}"
    return Problem(
        src.file, f"unknown key {dotted!r}: LocalAI ignores it", line=_key_line(src.node, path),
        field=f"{model}.{dotted}", severity=Severity.WARNING, code="unknown-key", model=model,
        hint=hint,
    )


def _type_problems(src: _Source, exc: ValidationError) -> list[Problem]:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = err["msg"]
        hint = None
        if loc[:1] == ("template",) and isinstance(err.get("input"), list):
            hint = (f"a template is text: write `{loc[-1]}: |` and indent the template "
                    "below it, not a `- ` list")
        out.append(Problem(
            src.file, msg, line=_field_line(src.node, loc),
            field=f"{src.label}." + ".".join(str(p) for p in loc), code="wrong-type",
            model=src.label, hint=hint,
        ))
    return out


def _resolve_template(value: str, models_dir: Path) -> tuple[str, Path | None]:
    """LocalAI reads ``<value>.tmpl`` from the models dir if it exists, else the text itself;
    the path is the ``.tmpl`` file read, None for inline text."""
    if "{{" in value:
        return value, None
    candidate = resolve_model_path(models_dir, f"{value}.tmpl")
    try:
        if candidate is not None and candidate.is_file():
            text = candidate.read_text(encoding="utf-8", errors="replace")[:_MAX_YAML_BYTES]
            return text, candidate
    except OSError:
        pass
    return value, None


def _chat_message_input(src: _Source, model: str, text: str,
                        tmpl_file: Path | None) -> Problem | None:
    """An error for a ``template.chat_message`` that uses ``.Input``, located at the line of
    the template that does: in its ``.tmpl`` file, or in the YAML."""
    at = chat_message_input_line(text)
    if at is None:
        return None
    loc = ("template", "chat_message")
    yaml_line = _field_line(src.node, loc)
    file, line, named = src.file, yaml_line, ""
    if tmpl_file is not None:
        file, line = tmpl_file, at
        named = f" (the template named at {src.file.name}:{yaml_line})"
    else:
        node = _field_node(src.node, loc)
        if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
            line = node.start_mark.line + 1 + at  # a block's text starts below its indicator
    return Problem(
        file, f"template.chat_message uses .Input{named}, which the per-message data does not "
        "have (it has .Content, .RoleName, .Role, .SystemPrompt, ...): every LocalAI version "
        "fails to render it for each message and falls back to plain role-prefixed text, so "
        "the model never sees its chat format", line=line,
        field=f"{model}.template.chat_message",
        code="chat-message-input", model=model,
        hint="use {{.Content}} for the message's text (.Input is template.chat's: every "
             "message, already joined)")


def _inspect(entry: ModelEntry, target: Path) -> ModelFileInfo | Pending | Problem | None:
    rel = entry.parameters.model or ""
    named_gguf = rel.lower().endswith(".gguf")
    if not named_gguf and entry.backend not in _LLAMA_BACKENDS:
        return None
    try:
        info = inspect_model(target)
    except GGUFError as exc:
        if not named_gguf:
            return None  # another format (or a name without .gguf): not ours to judge
        if "truncated" in exc.message:
            return Pending(entry.name, target, exc.message)
        return Problem(target, exc.message, code="not-gguf", model=entry.name)
    except OSError as exc:
        return Problem(target, f"cannot read: {exc.strerror}", code="unreadable",
                       model=entry.name)
    if info.missing:
        return Pending(entry.name, target, "missing shard(s): "
                       + ", ".join(p.name for p in info.missing))
    if info.incomplete:
        worst = min(info.shards, key=lambda s: s.actual_size - s.expected_size)
        return Pending(entry.name, target, f"incomplete: {worst.actual_size} of "
                       f"{worst.expected_size} bytes (still being copied?)")
    if info.problems:
        return Problem(target, "; ".join(info.problems), code="bad-shards", model=entry.name)
    return info


def validate(config_file: Path, models_dir: Path, ctx: LintContext | None = None) -> Validation:
    """Read, check and lint config + models dir; never raises for bad input."""
    ctx = ctx or LintContext()
    sources, problems = _read_sources(config_file, required=True)
    extra = _models_dir_yamls(models_dir, config_file)
    for path in extra:
        more, errs = _read_sources(path, required=False)
        sources += more
        problems += errs
    entries: list[tuple[ModelEntry, _Source]] = []
    seen: dict[str, _Source] = {}
    for src in sources:
        if not isinstance(src.raw, dict):
            problems.append(Problem(src.file, "model entry must be a mapping (name: …)",
                                    line=_line_of(src.node), field=src.label, code="not-a-model"))
            continue
        try:
            entry = ModelEntry.model_validate(src.raw)
        except ValidationError as exc:
            problems += _type_problems(src, exc)
            continue
        problems += _unknown_keys(src, entry.name)
        if entry.name in seen:
            first = seen[entry.name]
            problems.append(Problem(
                src.file, f"duplicate model name {entry.name!r} (first defined in "
                f"{first.file.name}:{_line_of(first.node)})", line=_field_line(src.node, ("name",)),
                field=f"{entry.name}.name", code="duplicate-name", model=entry.name))
            continue
        seen[entry.name] = src
        entries.append((entry, src))

    files: list[ModelFile] = []
    pending: list[Pending] = []
    ggufs: dict[str, GGUFInfo] = {}
    facts: list[ModelFacts] = []
    # Each model's templates as LocalAI will read them: a `.tmpl` file's content, which
    # LocalAI caches for the life of the process, so editing one must restart it.
    templates: dict[str, dict[str, str]] = {}
    for entry, src in entries:
        size: int | None = None
        rel = entry.parameters.model
        where = f"{entry.name}.parameters.model"
        line = _field_line(src.node, ("parameters", "model"))
        target = resolve_model_path(models_dir, rel) if rel and "\0" not in rel else None
        if rel and "\0" in rel:
            problems.append(Problem(src.file, f"{rel!r} contains a NUL byte: no file can have "
                                    "that name", line=line, field=where, code="bad-path",
                                    model=entry.name))
        elif rel and target is None:
            problems.append(Problem(src.file, f"{rel!r} escapes the models dir {models_dir}",
                                    line=line, field=where, code="path-escape", model=entry.name))
        elif rel and target is not None:
            if is_temporary_name(rel):
                problems.append(Problem(src.file, f"{rel!r} is a temporary name (a copy in "
                                        "progress?)", line=line, field=where, code="temp-name",
                                        model=entry.name, hint="point at the final file name"))
            elif (bad := _not_a_model_file(target, models_dir, rel)) is not None:
                message, code, hint = bad
                problems.append(Problem(src.file, message, line=line, field=where, code=code,
                                        model=entry.name, hint=hint))
            else:
                result = _inspect(entry, target)
                if isinstance(result, Pending):
                    pending.append(result)
                elif isinstance(result, Problem):
                    problems.append(Problem(src.file, f"{rel!r}: {result.message}", line=line,
                                            field=where, code=result.code, model=entry.name))
                else:
                    if result is not None:
                        ggufs[entry.name] = result.metadata
                    try:
                        size, fp = fingerprint_file(target)
                    except OSError as exc:
                        problems.append(Problem(src.file, f"cannot read {target}: "
                                                f"{exc.strerror}", line=line, field=where,
                                                code="unreadable", model=entry.name))
                    else:
                        files.append(ModelFile(entry.name, rel, size, fp))
        tmpl = entry.template
        resolved = {k: _resolve_template(v, models_dir) for k, v in
                    (tmpl.model_dump(include={"chat", "chat_message", "completion", "edit"})
                     if tmpl else {}).items() if isinstance(v, str)}
        texts = {k: text for k, (text, _) in resolved.items()}
        templates[entry.name] = texts
        if "chat_message" in resolved:
            wrong = _chat_message_input(src, entry.name, *resolved["chat_message"])
            if wrong is not None:
                problems.append(wrong)
        facts.append(ModelFacts(
            name=entry.name, context_size=entry.context_size,
            max_tokens=entry.parameters.max_tokens, gpu_layers=entry.gpu_layers,
            stopwords=tuple(entry.stopwords or ()), templates=texts,
            use_tokenizer_template=bool(tmpl and tmpl.use_tokenizer_template),
            options=tuple(entry.options or ()), file_size=size, gguf=ggufs.get(entry.name),
            f16=bool(entry.f16),
            trimsuffix=tuple(str(t) for t in (entry.model_extra or {}).get("trimsuffix") or ()
                             if isinstance(t, str))))

    by_name = {e.name: s for e, s in entries}
    problems += [_locate(w, by_name, config_file) for w in lint(facts, ctx)]
    if not entries and not any(p.severity is Severity.ERROR for p in problems):
        problems.append(Problem(config_file, "no models: the list is empty", line=1,
                                code="empty"))
    errors = [p for p in problems if p.severity is Severity.ERROR]
    models = None
    if not errors and not pending:
        canonical = json.dumps({
            # Python mode + repr: a !!binary value is bytes, which JSON mode cannot decode.
            "entries": [e.model_dump(exclude_none=True) for e, _ in entries],
            "files": [(f.relpath, f.size, f.fingerprint) for f in files],
            "templates": templates,
        }, sort_keys=True, default=repr)
        models = ModelSet(config_file, tuple(e for e, _ in entries), tuple(files),
                          hashlib.sha256(canonical.encode()).hexdigest()[:12],
                          (config_file, *extra))
    return Validation(models, tuple(problems), tuple(pending), ggufs)


def _locate(w: Lint, by_name: Mapping[str, _Source], config_file: Path) -> Problem:
    src = by_name.get(w.model or "")
    line = _field_line(src.node, w.path) if src is not None else None
    return Problem(
        src.file if src else config_file, w.message, line=line,
        field=".".join((w.model, *w.path)) if w.model else None, severity=Severity.WARNING,
        code=w.code, model=w.model, hint=w.hint, snippet=w.snippet, evidence=w.evidence,
    )


def load_model_set(config_file: Path, models_dir: Path,
                   ctx: LintContext | None = None) -> ModelSet:
    """Validate and return the model set; raise ConfigRejected on errors or pending files."""
    result = validate(config_file, models_dir, ctx)
    if result.models is None:
        blocking = result.errors + [
            Problem(p.path, f"not ready: {p.reason}", code="pending", model=p.model)
            for p in result.pending
        ]
        raise ConfigRejected(blocking)
    return result.models


# The schema's top-level keys are used by the lint of unknown keys; keep the import honest.
assert "name" in MODEL_KEYS
