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


# ---- watch_dirs: what is watched, each directory on its own -----------------------------


def test_watch_dirs_lists_the_config_dir_and_the_models_tree(tmp_path: Path) -> None:
    from supervisor.watch import watch_dirs

    config = tmp_path / "etc" / "config.yaml"
    config.parent.mkdir()
    (tmp_path / "etc" / "unrelated").mkdir()  # the config dir is not watched recursively
    models = tmp_path / "models"
    (models / "a" / "b").mkdir(parents=True)
    (models / "link").symlink_to(models / "a")  # reached twice: watched once
    (models / "a" / "loop").symlink_to(models)  # a loop: not followed forever
    dirs, unreadable = watch_dirs(config, models)
    assert dirs[:2] == [config.parent, models]
    # Each directory once, by whichever path the walk met it first.
    assert sorted(d.resolve() for d in dirs[2:]) == [models / "a", models / "a" / "b"]
    assert unreadable == []


def test_watch_dirs_skips_and_reports_what_cannot_be_read(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import os

    from supervisor.watch import watch_dirs

    models = tmp_path / "models"
    (models / "secret" / "inner").mkdir(parents=True)
    (models / "open").mkdir()
    real = os.scandir

    def scandir(path: str) -> object:  # as an unprivileged user would see it (tests run as root)
        if str(path).endswith("secret"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    dirs, unreadable = watch_dirs(tmp_path / "config.yaml", models)
    assert models / "open" in dirs and models / "secret" not in dirs
    assert unreadable == [models / "secret"]
