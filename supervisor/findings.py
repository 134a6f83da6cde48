"""What validation and lint report: a located error or warning with a one-line fix hint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """An error (blocks applying the config) or a warning, located in a file."""

    file: Path
    message: str
    line: int | None = None
    column: int | None = None
    field: str | None = None
    severity: Severity = Severity.ERROR
    code: str = "invalid"
    model: str | None = None
    hint: str | None = None
    # The fix as YAML to paste (lint warnings that have one).
    snippet: str | None = dataclasses.field(default=None, compare=False)
    # What it rests on besides the located field (GGUF keys, settings).
    evidence: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    def __str__(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        prefix = f"{self.field}: " if self.field else ""
        hint = f" (fix: {self.hint})" if self.hint else ""
        return f"{where}: {prefix}{self.message}{hint}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity.value, "code": self.code, "file": str(self.file),
            "line": self.line, "column": self.column, "model": self.model,
            "field": self.field, "message": self.message, "hint": self.hint,
        }
