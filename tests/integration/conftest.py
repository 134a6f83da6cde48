"""Fixtures for the supervisor's integration tests (the bench fixtures are in ../conftest.py)."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from supervised import Supervised
from testbed import Dockerd

_names = itertools.count()


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


