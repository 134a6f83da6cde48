"""Fixtures for the supervisor's integration tests (the bench fixtures are in ../conftest.py)."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from supervised import Supervised
from testbed import REPO, Dockerd

_names = itertools.count()


@pytest.fixture
def fake_localai(tmp_path: Path) -> Path:
    """The FAKE LocalAI (tests/fakes/local-ai), run by this interpreter (it needs PyYAML,
    which the venv has)."""
    src = (REPO / "tests" / "fakes" / "local-ai").read_text()
    exe = tmp_path / "bin" / "local-ai"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\n" + src.split("\n", 1)[1])
    exe.chmod(0o755)
    return exe


@pytest.fixture
def make_supervised(
    dockerd: Dockerd, llama_image: str, tiny_models: Path, tmp_path: Path
) -> Iterator[Callable[..., Supervised]]:
    made: list[tuple[Supervised, str]] = []

    def make(models: dict[str, str] | None = None, **sections: dict[str, Any]) -> Supervised:
        name = f"lsv-test-{os.getpid()}-{next(_names)}"
        docker_section = {"host": dockerd.host, "image": llama_image, "container_name": name,
                          "gpus": "none", **sections.pop("docker", {})}
        sup = Supervised.create(
            tmp_path / name, tiny_models, models or {"tiny-a": "tiny-a.gguf"},
            server={"runtime": "docker", "listen_port": 8080, **sections.pop("server", {})},
            docker=docker_section, **sections,
        )
        made.append((sup, name))
        return sup

    yield make
    for sup, name in made:
        sup.close()
        with contextlib.suppress(docker.errors.NotFound):
            dockerd.client().containers.get(name).remove(force=True)




@pytest.fixture
def make_process_supervised(
    llama_server_dir: Path, tiny_models: Path, tmp_path: Path
) -> Iterator[Callable[..., Supervised]]:
    """Supervisors of the process runtime (llama-server as a child; no container engine)."""
    made: list[Supervised] = []

    def make(models: dict[str, str], *, models_dir: Path | None = None,
             **sections: dict[str, Any]) -> Supervised:
        sup = Supervised.create(
            tmp_path / f"proc{len(made)}", models_dir or tiny_models, models,
            server={"runtime": "process", **sections.pop("server", {})},
            process={"binary": str(llama_server_dir / "llama-server")}, **sections,
        )
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.close()
