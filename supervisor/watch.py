"""Watch config.yaml and the models dir; report "something may have changed", debounced.

The watcher only says *that* files changed. Whether that changes the effective spec (and so
needs a restart) is decided by recomputing the spec and comparing digests, so a ``touch``
or an editor's temp file never restarts anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import structlog
from watchfiles import Change, awatch

from .modelconfig import is_temporary_name

log = structlog.get_logger("supervisor.watch")


class ConfigFilter:
    """Keep events for the config file and non-temporary files under the models dir."""

    def __init__(self, config_file: Path, models_dir: Path) -> None:
        self._config_name = config_file.name
        self._config_dir = str(config_file.parent.absolute())
        self._models_dir = str(models_dir.absolute())

    def __call__(self, change: Change, path: str) -> bool:
        if is_temporary_name(path):
            return False
        parent = str(Path(path).parent)
        if parent == self._config_dir and Path(path).name == self._config_name:
            return True
        return path == self._models_dir or path.startswith(self._models_dir + "/")


def watch_dirs(config_file: Path, models_dir: Path) -> tuple[list[Path], list[Path]]:
    """The directories to watch, each on its own: the config file's, and every directory of
    the models tree (through symlinks, once each) that can be read. The second list is the
    ones that cannot: skipped, so one unreadable directory never blinds the rest."""
    dirs: list[Path] = []
    unreadable: list[Path] = []
    config_dir = config_file.parent.absolute()
    if config_dir.is_dir():
        dirs.append(config_dir)
    seen: set[tuple[int, int]] = set()

    def refused(err: OSError) -> None:
        if isinstance(err, PermissionError) and err.filename:
            unreadable.append(Path(err.filename))

    top = models_dir.absolute()
    for current, subdirs, _ in os.walk(top, onerror=refused, followlinks=True):
        ident = _identity(Path(current))
        if ident is None or ident in seen:
            subdirs[:] = []  # a symlink loop, or a directory reached twice
            continue
        seen.add(ident)
        try:
            os.listdir(current)
        except OSError:
            continue
        if Path(current) != config_dir:
            dirs.append(Path(current))
    return dirs, sorted(set(unreadable))


def _touches_a_directory(paths: set[str], watched: set[str]) -> bool:
    """Did a change concern a directory (created, removed, its mode changed)?"""
    return any(p in watched or os.path.isdir(p) for p in paths)


def _identity(path: Path) -> tuple[int, int] | None:
    """Which directory a path names now (through symlinks): (device, inode)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Watcher:
    """Runs until ``stop()``; calls ``on_change(paths)`` once per settled batch."""

    def __init__(self, config_file: Path, models_dir: Path, on_change: Callable[[set[str]], None],
                 *, step_ms: int = 50, debounce_ms: int = 1600) -> None:
        self._config_file = config_file
        self._models_dir = models_dir
        self._on_change = on_change
        self._step = step_ms
        self._debounce = debounce_ms
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def _roots(self) -> list[Path]:
        # The config's directory, not the file: editors replace files by rename.
        roots = {self._config_file.parent.absolute(), self._models_dir.absolute()}
        return sorted(roots)

    async def run(self) -> None:
        watch_filter = ConfigFilter(self._config_file, self._models_dir)
        reported: tuple[str, ...] = ()
        while not self._stop.is_set():
            roots = [r for r in self._roots() if r.is_dir()]
            missing = [r for r in self._roots() if not r.is_dir()]
            identity = {r: _identity(r) for r in roots}
            if missing:
                log.warning("watch.path_missing", paths=[str(m) for m in missing],
                            action="watching the rest; polling every 2s for them")
            if not roots:
                await self._sleep(2.0)
                continue
            dirs, unreadable = await asyncio.to_thread(
                watch_dirs, self._config_file, self._models_dir)
            if tuple(map(str, unreadable)) != reported:
                reported = tuple(map(str, unreadable))
                if unreadable:
                    log.warning("watch.unreadable", paths=list(reported),
                                action="watching everything else; changed permissions are "
                                "noticed and the directory is watched from then on")
            try:
                async for changes in awatch(
                    *dirs, watch_filter=watch_filter, step=self._step,
                    debounce=self._debounce, stop_event=self._stop, recursive=False,
                    rust_timeout=2000, yield_on_timeout=True,
                ):
                    if changes:
                        paths = {p for _, p in changes}
                        self._on_change(paths)
                        # A directory appeared, went, or changed its permissions: watch the
                        # tree as it is now (each directory is watched on its own).
                        watched = set(map(str, dirs))
                        if await asyncio.to_thread(_touches_a_directory, paths, watched):
                            break
                    # A missing root appeared: restart the watch to include it.
                    if missing and any(m.is_dir() for m in missing):
                        self._on_change({str(m) for m in missing})
                        break
                    # A watched root vanished or now is another directory (deleted and
                    # re-created, or replaced by a symlink): the old watch sees nothing more.
                    moved = [r for r in roots if _identity(r) != identity[r]]
                    if moved:
                        log.info("watch.root_replaced", paths=[str(r) for r in moved],
                                 action="re-watching and re-checking the config")
                        self._on_change({str(r) for r in moved})
                        break
            except (OSError, RuntimeError) as exc:
                # A directory went away between the walk and the watch, or similar: the
                # next walk sees the tree as it is.
                log.warning("watch.error", error=str(exc), action="watching again in 1s")
                await self._sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


# (size, mtime_ns) of a file, and the monotonic time it was first seen with that value.
Observation = tuple[tuple[int, int], float]


def unsettled(
    stats: dict[str, tuple[int, int]],
    seen: dict[str, Observation],
    *,
    now: float,
    wall_now: float,
    quiet: float,
) -> tuple[list[str], dict[str, Observation]]:
    """Which files changed within the last ``quiet`` seconds (still being written?).

    Pure: ``stats`` maps path → (size, mtime_ns) as observed now; ``seen`` is the previous
    result. A file counts as settled when its mtime is at least ``quiet`` seconds old, or
    when it looked the same for ``quiet`` seconds of our own observation.
    """
    out: list[str] = []
    new_seen: dict[str, Observation] = {}
    for path, value in stats.items():
        prev = seen.get(path)
        first = prev[1] if prev is not None and prev[0] == value else now
        new_seen[path] = (value, first)
        mtime_age = wall_now - value[1] / 1e9
        if mtime_age < quiet and now - first < quiet:
            out.append(path)
    return out, new_seen
