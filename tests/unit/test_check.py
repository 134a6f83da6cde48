"""``supervisorctl check`` output: the summary line says what it knows, never "?"."""

from __future__ import annotations

from pathlib import Path

from daemonkit import make_settings

from supervisor.check import CheckResult, render
from supervisor.lint import context_for
from supervisor.modelconfig import validate


def checked(tmp_path: Path, text: str | None = None) -> CheckResult:
    settings = make_settings(tmp_path)
    if text is not None:
        settings.server.model_config_file.write_text(text)
    srv = settings.server
    return CheckResult(None, srv.model_config_file, srv.models_dir, None,
                       validate(srv.model_config_file, srv.models_dir, context_for(settings)))


def test_a_valid_config_counts_its_models(tmp_path: Path) -> None:
    last = render(checked(tmp_path), strict=False, as_json=False).splitlines()[-1]
    assert last.endswith("1 model(s), 0 error(s), 0 warning(s), 0 pending: ok")


def test_an_invalid_config_says_what_failed_without_a_model_count(tmp_path: Path) -> None:
    last = render(checked(tmp_path, "- name: [\n"), strict=False, as_json=False).splitlines()[-1]
    assert "?" not in last and "model(s)" not in last
    assert last.endswith("1 error(s), 0 warning(s), 0 pending: FAILED: the supervisor would "
                         "not apply this")
