"""Which file events may trigger a re-check: ``watch.ConfigFilter``."""

from __future__ import annotations

from pathlib import Path

import pytest
from watchfiles import Change

from supervisor.watch import ConfigFilter


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "etc" / "localai" / "config.yaml", tmp_path / "models"


@pytest.mark.parametrize("change", list(Change))
def test_the_config_file_is_accepted(dirs: tuple[Path, Path], change: Change) -> None:
    config, models = dirs
    assert ConfigFilter(config, models)(change, str(config))


@pytest.mark.parametrize(
    "name",
    ["other.yaml", "config.yaml.bak", "config.yml", "README", "sub/config.yaml"],
)
def test_other_files_in_the_config_dir_are_rejected(dirs: tuple[Path, Path], name: str) -> None:
    config, models = dirs
    assert not ConfigFilter(config, models)(Change.modified, str(config.parent / name))


@pytest.mark.parametrize("rel", ["a.gguf", "sub/dir/b.gguf", "mmproj-f16.gguf", "tokenizer.json"])
def test_files_under_the_models_dir_are_accepted(dirs: tuple[Path, Path], rel: str) -> None:
    config, models = dirs
    f = ConfigFilter(config, models)
    assert f(Change.added, str(models / rel))
    assert f(Change.deleted, str(models / rel))


def test_the_models_dir_itself_is_accepted(dirs: tuple[Path, Path]) -> None:
    config, models = dirs
    assert ConfigFilter(config, models)(Change.deleted, str(models))


@pytest.mark.parametrize(
    "name",
    ["a.gguf.part", "a.gguf.tmp", "a.gguf.crdownload", "a.gguf.download", ".a.gguf",
     "a.gguf~", ".hidden", "#a#"],
)
def test_temporary_names_are_rejected(dirs: tuple[Path, Path], name: str) -> None:
    config, models = dirs
    f = ConfigFilter(config, models)
    assert not f(Change.added, str(models / name))
    assert not f(Change.added, str(models / "sub" / name))


@pytest.mark.parametrize(
    "name", [".config.yaml.swp", "config.yaml~", ".config.yaml.tmp", "#config.yaml#"])
def test_editor_temp_files_next_to_the_config_are_rejected(dirs: tuple[Path, Path],
                                                           name: str) -> None:
    config, models = dirs
    assert not ConfigFilter(config, models)(Change.added, str(config.parent / name))


def test_paths_elsewhere_are_rejected(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    config, models = dirs
    f = ConfigFilter(config, models)
    assert not f(Change.added, str(tmp_path / "models-old" / "a.gguf"))  # same prefix
    assert not f(Change.added, str(tmp_path / "a.gguf"))
    assert not f(Change.added, str(tmp_path / "config.yaml"))


def test_relative_settings_match_absolute_event_paths(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    f = ConfigFilter(Path("etc/config.yaml"), Path("models"))
    assert f(Change.modified, str(tmp_path / "etc" / "config.yaml"))
    assert f(Change.added, str(tmp_path / "models" / "a.gguf"))
    assert not f(Change.added, str(tmp_path / "etc" / "other.yaml"))


def test_config_inside_the_models_dir(tmp_path: Path) -> None:
    f = ConfigFilter(tmp_path / "config.yaml", tmp_path)
    assert f(Change.modified, str(tmp_path / "config.yaml"))
    assert f(Change.added, str(tmp_path / "a.gguf"))
    assert not f(Change.added, str(tmp_path / "a.gguf.part"))
