"""``supervisorctl check``: validate settings, model config and models dir, like ``nginx -t``.

Runs without a daemon: it is the same validation the daemon applies before any restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .findings import Problem
from .lint import context_for
from .modelconfig import Validation, validate
from .settings import Settings, SettingsError, load_settings

EXIT_OK, EXIT_WARNINGS, EXIT_ERRORS = 0, 1, 2


@dataclass(frozen=True)
class CheckResult:
    settings_file: Path | None
    config: Path
    models_dir: Path
    settings_error: str | None
    validation: Validation | None

    def exit_code(self, strict: bool) -> int:
        v = self.validation
        if self.settings_error or v is None or v.errors or v.pending:
            return EXIT_ERRORS
        return EXIT_WARNINGS if strict and v.warnings else EXIT_OK

    def as_dict(self, strict: bool) -> dict[str, Any]:
        v = self.validation
        return {
            "ok": self.exit_code(strict) == EXIT_OK,
            "exit_code": self.exit_code(strict),
            "settings_file": str(self.settings_file) if self.settings_file else None,
            "settings_error": self.settings_error,
            "config": str(self.config),
            "models_dir": str(self.models_dir),
            "revision": v.models.revision if v and v.models else None,
            "models": list(v.models.names) if v and v.models else [],
            "errors": [p.as_dict() for p in v.errors] if v else [],
            "warnings": [p.as_dict() for p in v.warnings] if v else [],
            "pending": [{"model": p.model, "file": str(p.path), "reason": p.reason}
                        for p in v.pending] if v else [],
        }


def run_check(settings_file: Path | None, required: bool, config: Path | None,
              models_dir: Path | None) -> CheckResult:
    settings_error = None
    try:
        settings = load_settings(settings_file, required=required)
    except SettingsError as exc:
        settings_error = str(exc)
        settings = Settings()
    cfg = config or settings.server.model_config_file
    mdir = models_dir or settings.server.models_dir
    used = settings_file if settings_file is not None and settings_file.exists() else None
    return CheckResult(used, cfg, mdir, settings_error, validate(cfg, mdir,
                                                                 context_for(settings)))


def _line(p: Problem) -> str:
    where = p.file.name + (f":{p.line}" if p.line else "")
    field = f" {p.field.split('.', 1)[1]}" if p.field and "." in p.field else ""
    hint = f"\n      fix: {p.hint}" if p.hint else ""
    return f"  {p.severity.value:<7} {where}{field}: {p.message}{hint}"


def render(result: CheckResult, strict: bool, as_json: bool) -> str:
    if as_json:
        return json.dumps(result.as_dict(strict), indent=2)
    lines: list[str] = []
    if result.settings_error:
        lines.append(f"settings: error: {result.settings_error}")
    v = result.validation
    assert v is not None
    groups: dict[str, list[str]] = {}
    for p in (*v.errors, *v.warnings):
        groups.setdefault(p.model or "(config)", []).append(_line(p))
    for pend in v.pending:
        groups.setdefault(pend.model, []).append(
            f"  pending {pend.path.name}: {pend.reason}")
    for model in sorted(groups, key=lambda m: (m != "(config)", m)):
        lines.append(model)
        lines.extend(groups[model])
    code = result.exit_code(strict)
    verdict = {EXIT_OK: "ok", EXIT_WARNINGS: "warnings (--strict)",
               EXIT_ERRORS: "FAILED: the supervisor would not apply this"}[code]
    models = f"{len(v.models.names)} model(s), " if v.models else ""
    lines.append(f"{result.config}: {models}{len(v.errors)} error(s), "
                 f"{len(v.warnings)} warning(s), {len(v.pending)} pending: {verdict}")
    return "\n".join(lines)
