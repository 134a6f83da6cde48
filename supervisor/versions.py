"""Engine versions: LocalAI's behaviour differs a lot between releases (../shared/LOCALAI-NOTES.md),
so rules and calls are chosen by the version actually run.

A version comes from the setting ``localai.version``, the image's label, or the running
server's ``GET /version``; ``None`` means unknown, and each caller says what it assumes then.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


class VersionSource(StrEnum):
    SETTING = "setting"
    IMAGE_LABEL = "image-label"
    # `local-ai --help` of the binary the process runtime runs.
    PROGRAM = "program"
    SERVER = "server"


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str | None) -> Version | None:
        """``v4.9.0``, ``4.9.0-22-g82c191af``, ``v3.10`` → a version; anything else → None
        (``master``, a commit hash: unknown, not a guess)."""
        match = _VERSION.match(text or "")
        if match is None:
            return None
        major, minor, patch = match.groups()
        return cls(int(major), int(minor), int(patch or 0))

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}"


def at_least(version: Version | None, major: int, minor: int, patch: int = 0, *,
             unknown: bool) -> bool:
    """Whether ``version`` is at least major.minor.patch; ``unknown`` is the answer to assume
    when the version is not known (each caller picks the safe side for its decision)."""
    if version is None:
        return unknown
    return version >= Version(major, minor, patch)


@dataclass(frozen=True)
class KnownVersion:
    """A version and where it was learnt (status shows both)."""

    version: Version
    source: VersionSource
    raw: str
