"""Unit tests: pure logic only (no Docker, no network, no subprocesses, no sleeps)."""

from __future__ import annotations

import os

import pytest

from supervisor.settings import ENV_PREFIX


@pytest.fixture(autouse=True)
def _clean_supervisor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read ``LOCALAI_SUPERVISOR_*``; a developer's shell must not leak into tests."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
