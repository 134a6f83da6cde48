"""config.yaml parsing, checking and its revision."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from supervisor.modelconfig import (
    ConfigRejected,
    ModelFile,
    Problem,
    Severity,
    TemplateSection,
    fingerprint_file,
    is_temporary_name,
    load_model_set,
    resolve_model_path,
)
from supervisor.tinygguf import write_tiny_llama

CONFIG = """\
- name: tiny-a
  backend: llama-cpp
  context_size: 2048
  parameters:
    model: tiny-a.gguf
    temperature: 0.2
  template:
    chat: "{{.Input}}"
  custom_key: kept
- name: tiny-b
  parameters:
    model: sub/tiny-b.gguf
"""

# Same models: comments, blank lines, flow style, quoting and key order changed.
CONFIG_REFORMATTED = """\
# models for the office box


- parameters: {temperature: 0.2, model: "tiny-a.gguf"}   # the small one
  custom_key: "kept"
  template: {chat: "{{.Input}}"}
  context_size: 2048
  name: tiny-a
  backend: llama-cpp

-   name: "tiny-b"
    parameters:
        model: sub/tiny-b.gguf
"""


@pytest.fixture
def models(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    (d / "sub").mkdir(parents=True)
    write_tiny_llama(d / "tiny-a.gguf", seed=1, name="tiny-a")
    write_tiny_llama(d / "sub" / "tiny-b.gguf", seed=2, name="tiny-b")
    return d


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def rejected(config: Path, models: Path, text: str | None = None) -> list[Problem]:
    if text is not None:
        config.write_text(text)
    with pytest.raises(ConfigRejected) as info:
        load_model_set(config, models)
    assert str(info.value) == "; ".join(str(p) for p in info.value.problems)
    return info.value.problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


# ---- valid configs ------------------------------------------------------------------------


def test_valid_config_gives_a_model_set(config: Path, models: Path) -> None:
    ms = load_model_set(config, models)
    assert ms.source == config
    assert ms.names == ("tiny-a", "tiny-b")
    a, b = ms.entries
    assert a.backend == "llama-cpp"
    assert a.context_size == 2048
    assert a.parameters.model == "tiny-a.gguf"
    assert a.parameters.temperature == 0.2
    assert a.template == TemplateSection(chat="{{.Input}}")
    assert a.extra_keys == {"custom_key"}
    assert a.model_dump()["custom_key"] == "kept"  # unknown keys survive for LocalAI
    assert b.parameters.model == "sub/tiny-b.gguf"
    assert [(f.name, f.relpath, f.size) for f in ms.files] == [
        ("tiny-a", "tiny-a.gguf", (models / "tiny-a.gguf").stat().st_size),
        ("tiny-b", "sub/tiny-b.gguf", (models / "sub" / "tiny-b.gguf").stat().st_size)]
    assert all(isinstance(f, ModelFile) and len(f.fingerprint) == 16 for f in ms.files)
    assert len(ms.revision) == 12
    int(ms.revision, 16)


def test_entry_without_a_model_file_is_valid(config: Path, models: Path) -> None:
    config.write_text("- name: remote\n  backend: openai-proxy\n")
    ms = load_model_set(config, models)
    assert ms.names == ("remote",)
    assert ms.files == ()


def test_revision_ignores_comments_whitespace_and_key_order(config: Path, models: Path) -> None:
    before = load_model_set(config, models).revision
    config.write_text(CONFIG_REFORMATTED)
    assert load_model_set(config, models).revision == before


def test_revision_ignores_touch(config: Path, models: Path) -> None:
    before = load_model_set(config, models).revision
    for path in (config, models / "tiny-a.gguf", models / "sub" / "tiny-b.gguf"):
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns + 5 * 10**9, st.st_mtime_ns + 5 * 10**9))
    assert load_model_set(config, models).revision == before


def test_revision_changes_when_a_model_file_content_changes(tmp_path: Path, config: Path,
                                                            models: Path) -> None:
    before = load_model_set(config, models).revision
    target = models / "tiny-a.gguf"
    other = write_tiny_llama(tmp_path / "other.gguf", seed=99, name="tiny-a")
    assert other.stat().st_size == target.stat().st_size
    with target.open("r+b") as fh:  # in place: same inode, same size, new weights
        fh.write(other.read_bytes())
    assert load_model_set(config, models).revision != before


def test_revision_changes_when_a_model_file_is_replaced(config: Path, models: Path) -> None:
    before = load_model_set(config, models).revision
    target = models / "tiny-a.gguf"
    shutil.copyfile(target, models / "copy")
    (models / "copy").replace(target)  # same bytes, new file: treated as re-copied
    assert load_model_set(config, models).revision != before


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("context_size: 2048", "context_size: 4096"),
        ("custom_key: kept", "custom_key: changed"),
        ("temperature: 0.2", "temperature: 0.3"),
        ("- name: tiny-b", "- name: tiny-c"),
    ],
)
def test_revision_changes_with_any_value(config: Path, models: Path, old: str, new: str) -> None:
    before = load_model_set(config, models).revision
    config.write_text(CONFIG.replace(old, new))
    assert load_model_set(config, models).revision != before


def test_revision_does_not_depend_on_the_models_dir_path(tmp_path: Path, config: Path,
                                                        models: Path) -> None:
    before = load_model_set(config, models).revision
    moved = models.rename(tmp_path / "moved")  # same files (inodes), another path
    assert load_model_set(config, moved).revision == before


# ---- fingerprints and paths -----------------------------------------------------------------


def test_fingerprint_reads_only_the_ends_of_a_big_file(tmp_path: Path) -> None:
    path = tmp_path / "big.gguf"
    size = 512 * 1024
    path.write_bytes(bytes(size))
    size0, fp0 = fingerprint_file(path)
    assert size0 == size
    with path.open("r+b") as fh:  # in place: same inode, same size
        fh.seek(size // 2)
        fh.write(b"x")
    assert fingerprint_file(path)[1] == fp0
    with path.open("r+b") as fh:
        fh.seek(size - 1)
        fh.write(b"y")
    assert fingerprint_file(path)[1] != fp0


@pytest.mark.parametrize(
    ("rel", "ok"),
    [
        ("a.gguf", True),
        ("sub/dir/a.gguf", True),
        ("./a.gguf", True),
        ("../a.gguf", False),
        ("sub/../../a.gguf", False),
        ("sub/../a.gguf", False),  # any '..' is refused, even one that stays inside
        ("/etc/passwd", False),
    ],
)
def test_resolve_model_path(tmp_path: Path, rel: str, ok: bool) -> None:
    resolved = resolve_model_path(tmp_path, rel)
    if ok:
        assert resolved is not None
        assert resolved.resolve().is_relative_to(tmp_path.resolve())
    else:
        assert resolved is None


# ---- rejected configs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("- name: a\n\tcontext_size: 1\n", 2, 1, "cannot start any token"),
        ("- name: a\n  parameters: {model: x\n", 3, 1, "expected ',' or '}'"),
        ("- name: a\n  context_size: 1\n - name: b\n", 3, 2, "invalid YAML"),
        ("- name: a\n---\n- name: b\n", 2, 1, "another document"),
    ],
)
def test_invalid_yaml_reports_line_and_column(config: Path, models: Path, text: str,
                                              line: int, column: int, fragment: str) -> None:
    p = only(rejected(config, models, text))
    assert p.message.startswith("invalid YAML")
    assert fragment in p.message
    assert (p.line, p.column) == (line, column)
    assert str(p).startswith(f"{config}:{line}:{column}: invalid YAML")


@pytest.mark.parametrize("text", ["just a string\n", "42\n", "3.5\n", "true\n"])
def test_neither_a_list_nor_a_mapping(config: Path, models: Path, text: str) -> None:
    p = only(rejected(config, models, text))
    assert p.message == "expected a list of models (- name: …) or one model mapping"
    assert p.line == 1


def test_a_single_mapping_is_one_model(config: Path, models: Path) -> None:
    # LocalAI's --config-file accepts one model as well as a list of them.
    config.write_text("name: a\nbackend: x\n")
    ms = load_model_set(config, models)
    assert ms.names == ("a",)
    assert ms.entries[0].backend == "x"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no models: the file is empty"),
        ("# nothing yet\n\n", "no models: the file is empty"),
        ("[]\n", "no models: the list is empty"),
    ],
)
def test_empty_configs_are_rejected(config: Path, models: Path, text: str, message: str) -> None:
    assert only(rejected(config, models, text)).message == message


def test_missing_config_file(tmp_path: Path, models: Path) -> None:
    p = only(rejected(tmp_path / "nope.yaml", models))
    assert p.message == "file not found"
    assert p.file == tmp_path / "nope.yaml"


def test_entry_that_is_not_a_mapping(config: Path, models: Path) -> None:
    text = "- name: a\n  parameters:\n    model: tiny-a.gguf\n- just-a-name\n"
    p = only(rejected(config, models, text))
    assert p.message == "model entry must be a mapping (name: …)"
    assert p.field == "[1]"
    assert p.line == 4


@pytest.mark.parametrize(
    ("text", "field", "line", "fragment"),
    [
        ("- name: a\n  context_size: big\n", "a.context_size", 2, "valid integer"),
        ("- name: a\n  context_size: 0\n", "a.context_size", 2, "greater than or equal to 1"),
        ("- name: a\n  mmap: sometimes\n", "a.mmap", 2, "valid boolean"),
        ("- name: a\n  backend: x\n  parameters:\n    temperature: hot\n",
         "a.parameters.temperature", 4, "valid number"),
        ("- name: a\n  stopwords: stop\n", "a.stopwords", 2, "valid list"),
        ("- backend: llama-cpp\n", "[0].name", 1, "Field required"),
        ("- name: ok\n- name: b\n  threads: -1\n", "b.threads", 3, "greater than or equal to 1"),
    ],
)
def test_wrong_types_report_field_path_and_line(config: Path, models: Path, text: str,
                                                field: str, line: int, fragment: str) -> None:
    p = only(rejected(config, models, text))
    assert p.field == field
    assert p.line == line
    assert fragment in p.message
    assert str(p) == f"{config}:{line}: {field}: {p.message}"


def test_empty_name_is_reported_by_position(config: Path, models: Path) -> None:
    p = only(rejected(config, models, "- name: ''\n"))
    assert "at least 1 character" in p.message
    assert p.line == 1
    assert p.field == "[0].name"


def test_duplicate_names(config: Path, models: Path) -> None:
    text = "- name: a\n  backend: x\n- name: b\n- name: a\n"
    p = only(rejected(config, models, text))
    assert p.message == "duplicate model name 'a' (first defined in config.yaml:1)"
    assert p.field == "a.name"
    assert p.line == 4


def test_missing_model_file(config: Path, models: Path) -> None:
    text = "- name: a\n  parameters:\n    model: missing.gguf\n"
    p = only(rejected(config, models, text))
    assert p.message == f"'missing.gguf' does not exist in {models}"
    assert p.field == "a.parameters.model"
    assert p.line == 3


def test_a_directory_is_not_a_model_file(config: Path, models: Path) -> None:
    p = only(rejected(config, models, "- name: a\n  parameters:\n    model: sub\n"))
    assert "is not a regular file" in p.message and p.code == "not-a-file"


def test_a_symlink_loop_says_so(config: Path, models: Path) -> None:
    (models / "loop.gguf").symlink_to("loop2.gguf")
    (models / "loop2.gguf").symlink_to("loop.gguf")
    p = only(rejected(config, models, "- name: a\n  parameters:\n    model: loop.gguf\n"))
    assert p.message == "'loop.gguf' is a symlink loop" and p.code == "symlink-loop"
    assert p.hint


def test_a_dangling_symlink_says_so(config: Path, models: Path) -> None:
    (models / "gone.gguf").symlink_to("/nonexistent/model.gguf")
    p = only(rejected(config, models, "- name: a\n  parameters:\n    model: gone.gguf\n"))
    assert "symlink to something that does not exist" in p.message


def test_an_unreadable_model_file_says_so(config: Path, models: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path).endswith(
        "tiny-a.gguf") else real(path, mode))
    p = only(rejected(config, models, "- name: a\n  parameters:\n    model: tiny-a.gguf\n"))
    assert "is not readable by the supervisor" in p.message and p.code == "unreadable"


@pytest.mark.parametrize("rel", ["../outside.gguf", "sub/../../outside.gguf", "ABS"])
def test_model_path_escaping_the_models_dir(tmp_path: Path, config: Path, models: Path,
                                            rel: str) -> None:
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(b"GGUF")  # exists: only the escape is wrong
    rel = str(outside) if rel == "ABS" else rel
    p = only(rejected(config, models, f"- name: a\n  parameters:\n    model: {rel}\n"))
    assert p.message == f"{rel!r} escapes the models dir {models}"
    assert p.field == "a.parameters.model"
    assert p.line == 3


def test_a_model_path_with_a_nul_byte_is_a_problem_not_a_crash(config: Path,
                                                               models: Path) -> None:
    p = only(rejected(config, models, '- name: a\n  parameters:\n    model: "a\\0.gguf"\n'))
    assert p.message == "'a\\x00.gguf' contains a NUL byte: no file can have that name"
    assert (p.code, p.field, p.line) == ("bad-path", "a.parameters.model", 3)


def test_all_problems_are_reported_at_once(config: Path, models: Path) -> None:
    text = (
        "- name: a\n"
        "  context_size: big\n"
        "- name: b\n"
        "  parameters:\n"
        "    model: ../x.gguf\n"
        "- name: c\n"
        "  parameters:\n"
        "    model: missing.gguf\n"
        "- name: b\n"
    )
    problems = rejected(config, models, text)
    assert [p.field for p in problems] == [
        "a.context_size", "b.name", "b.parameters.model", "c.parameters.model"]


def test_file_problem_line_after_an_invalid_entry(config: Path, models: Path) -> None:
    text = (
        "- name: a\n"
        "  context_size: big\n"
        "- name: b\n"
        "  parameters:\n"
        "    model: missing.gguf\n"
    )
    problems = rejected(config, models, text)
    missing = next(p for p in problems if p.field == "b.parameters.model")
    assert missing.line == 5


# ---- Problem formatting ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (Problem(Path("/c.yaml"), "bad"), "/c.yaml: bad"),
        (Problem(Path("/c.yaml"), "bad", line=3), "/c.yaml:3: bad"),
        (Problem(Path("/c.yaml"), "bad", line=3, column=7), "/c.yaml:3:7: bad"),
        (Problem(Path("/c.yaml"), "bad", line=3, field="a.b"), "/c.yaml:3: a.b: bad"),
        (Problem(Path("/c.yaml"), "bad", column=7), "/c.yaml: bad"),
        (Problem(Path("/c.yaml"), "bad", line=2, field="a.b", hint="do x"),
         "/c.yaml:2: a.b: bad (fix: do x)"),
        (Problem(Path("/c.yaml"), "odd", severity=Severity.WARNING), "/c.yaml: odd"),
    ],
)
def test_problem_str(problem: Problem, text: str) -> None:
    assert str(problem) == text


def test_problem_is_the_findings_problem_with_its_defaults() -> None:
    from supervisor import findings

    assert Problem is findings.Problem
    p = Problem(Path("/c.yaml"), "bad")
    assert (p.severity, p.code, p.model, p.hint) == (Severity.ERROR, "invalid", None, None)
    assert Problem(Path("/c.yaml"), "bad", line=3, column=1, field="a.name",
                   severity=Severity.WARNING, code="unknown-key", model="a",
                   hint="h").as_dict() == {
        "severity": "warning", "code": "unknown-key", "file": "/c.yaml", "line": 3,
        "column": 1, "model": "a", "field": "a.name", "message": "bad", "hint": "h"}


# ---- temporary names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "temporary"),
    [
        ("model.gguf", False),
        ("/var/lib/localai/model/model.gguf", False),
        ("config.yaml", False),
        ("/tmp.d/model.gguf", False),  # only the file name counts
        ("model.partial", False),
        ("model.gguf.part", True),
        ("/models/model.gguf.part", True),
        ("model.gguf.tmp", True),
        ("model.gguf.crdownload", True),
        ("model.gguf.download", True),
        ("config.yaml~", True),
        (".config.yaml.swp", True),
        ("config.yaml.swx", True),
        ("#config.yaml#", True),
        (".hidden", True),
        ("/etc/localai/.config.yaml.tmp123", True),
        ("/models/.cache", True),
    ],
)
def test_is_temporary_name(name: str, temporary: bool) -> None:
    assert is_temporary_name(name) is temporary


def test_revision_changes_when_a_tmpl_file_a_model_uses_changes(tmp_path: Path) -> None:
    """LocalAI caches `.tmpl` files for the life of the process: an edit must restart it."""
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_llama(models / "tiny-a.gguf", seed=1, name="tiny-a")
    (models / "chat-tpl.tmpl").write_text("[INST] {{.Input}} [/INST]")
    (models / "unused.tmpl").write_text("{{.Input}}")
    config = tmp_path / "config.yaml"
    config.write_text("- name: tiny-a\n  context_size: 1024\n  parameters:\n"
                      "    model: tiny-a.gguf\n  template:\n    chat: chat-tpl\n")
    before = load_model_set(config, models).revision
    (models / "unused.tmpl").write_text("{{.Input}}\n")  # no model uses it
    assert load_model_set(config, models).revision == before
    (models / "chat-tpl.tmpl").write_text("<s>[INST] {{.Input}} [/INST]")
    assert load_model_set(config, models).revision != before


# ---- chat-message-input: an error, at the template's line ---------------------------------

CHAT_MESSAGE_FIX = ("use {{.Content}} for the message's text (.Input is template.chat's: every "
                    "message, already joined)")


@pytest.mark.parametrize(
    ("template", "line"),
    [
        ('    chat_message: "{{.RoleName}}: {{.Input}}"\n', 4),
        ("    chat_message: |\n      <|im_start|>{{.RoleName}}\n      {{.Input}}<|im_end|>\n",
         6),
        ("    chat_message: |-\n      {{ if .Content }}{{ $.Input }}{{ end }}\n", 5),
        ("    chat_message: >\n      {{.Input}}\n", 5),
    ],
    ids=["inline", "block-third-line", "dollar-root", "folded"],
)
def test_chat_message_using_input_is_an_error_at_its_line(config: Path, models: Path,
                                                          template: str, line: int) -> None:
    text = ("- name: a\n  parameters: {model: tiny-a.gguf}\n  template:\n" + template)
    p = only(rejected(config, models, text))
    assert (p.file, p.line, p.field, p.code, p.model) == (
        config, line, "a.template.chat_message", "chat-message-input", "a")
    assert p.severity is Severity.ERROR
    assert p.message == (
        "template.chat_message uses .Input, which the per-message data does not have (it has "
        ".Content, .RoleName, .Role, .SystemPrompt, ...): every LocalAI version fails to render "
        "it for each message and falls back to plain role-prefixed text, so the model never "
        "sees its chat format")
    assert p.hint == CHAT_MESSAGE_FIX


def test_chat_message_using_input_in_a_tmpl_file_names_the_file_and_line(
        config: Path, models: Path) -> None:
    (models / "msg.tmpl").write_text("<|im_start|>{{.RoleName}}\n{{.Input}}<|im_end|>\n")
    text = "- name: a\n  parameters: {model: tiny-a.gguf}\n  template:\n    chat_message: msg\n"
    p = only(rejected(config, models, text))
    assert (p.file, p.line, p.field, p.code) == (
        models / "msg.tmpl", 2, "a.template.chat_message", "chat-message-input")
    assert p.message.startswith("template.chat_message uses .Input (the template named at "
                                "config.yaml:4), which the per-message data does not have")
    assert str(p).startswith(f"{models / 'msg.tmpl'}:2: a.template.chat_message: ")
    (models / "msg.tmpl").write_text("<|im_start|>{{.RoleName}}\n{{.Content}}<|im_end|>\n")
    assert load_model_set(config, models).names == ("a",)


@pytest.mark.parametrize(
    "chat_message",
    [
        '"{{.RoleName}}: {{.Content}}"',
        '"{{/* not .Input */}}{{.Content}}"',
        '"{{.Content}} .Input is outside any action"',
        '"{{.InputTokens}}{{.Content}}"',
    ],
)
def test_chat_message_without_input_is_no_error(config: Path, models: Path,
                                                chat_message: str) -> None:
    text = ("- name: a\n  parameters: {model: tiny-a.gguf}\n  template:\n"
            f"    chat_message: {chat_message}\n")
    config.write_text(text)
    assert load_model_set(config, models).names == ("a",)


def test_input_is_fine_in_the_chat_template(config: Path, models: Path) -> None:
    # template.chat is rendered once with .Input (the joined messages): no error there.
    text = "- name: a\n  parameters: {model: tiny-a.gguf}\n  template:\n    chat: '{{.Input}}'\n"
    config.write_text(text)
    assert load_model_set(config, models).names == ("a",)
