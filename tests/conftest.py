"""Session fixtures for the integration bench: private dockerd, llama-server build and image,
tiny GGUF models. Each starts real things once per session and cleans up after itself."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import testbed
from testbed import Dockerd

from supervisor.tinygguf import write_tiny_llama

TINY_MODELS = {"tiny-a": 1, "tiny-b": 2}  # model id -> weights seed


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs root, dockerd and the llama-server test bench"
    )


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """A private dockerd (own socket, data and exec roots); yields ``.host`` and ``.client()``."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the bench starts its own dockerd")
    missing = [tool for tool in ("dockerd", "docker") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install docker.io)")
    daemon = Dockerd.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def llama_server_dir() -> Path:
    """Directory of the cached llama-server build (binary, its .so files, build-info.json)."""
    return testbed.llama_server_dir()


@pytest.fixture(scope="session")
def llama_image(dockerd: Dockerd, llama_server_dir: Path) -> str:
    """Tag of the minimal llama-server image, imported into the private dockerd."""
    return testbed.build_image(llama_server_dir, dockerd.host)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding tiny-a.gguf and tiny-b.gguf: distinct random-weight llama models."""
    models = tmp_path_factory.mktemp("models")
    for name, seed in TINY_MODELS.items():
        write_tiny_llama(models / f"{name}.gguf", seed=seed, name=name)
    return models
