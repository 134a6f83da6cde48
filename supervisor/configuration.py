"""The configuration owner: which model config is applied, rejected or waiting for files.

Validation reads YAML, GGUF headers and file fingerprints (tens of ms for a big header), so it
runs in a worker thread (``check``) and comes back as a ``Validated`` event; the owner then
decides, on the loop, whether the result is applied, rejected or pending. Requests that
arrive while a check runs are coalesced into one more check that starts after it, so a
``reload`` always sees the files as they were when it was asked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from .doctor import symptom_of
from .engines import EngineAdapter, EngineLaunch
from .findings import Problem
from .ggufinfo import GGUFInfo
from .lint import context_for
from .modelconfig import ModelSet, Pending, Validation, validate
from .runtime import program_for
from .settings import Settings
from .spec import ServerSpec, build_spec
from .status import (
    CheckOutcome,
    ConfigStatus,
    Finding,
    Journal,
    PendingFile,
    RejectionStatus,
    ReloadResult,
)
from .versions import Version
from .watch import Observation, unsettled

log = structlog.get_logger("supervisor.config")

RECHECK_SECONDS = 1.0
# A file still incomplete and unchanged in size this long: say that the copy seems stopped.
STALLED_SECONDS = 120.0


@dataclass(frozen=True)
class Checked:
    """What one validation run found; computed off the loop by ``check``."""

    validation: Validation
    # Referenced model file -> (size, mtime_ns) as seen right after validating, and its model.
    stats: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    models_of: Mapping[str, str] = field(default_factory=dict)
    spec: ServerSpec | None = None
    dropped: tuple[tuple[str, tuple[str, ...]], ...] = ()
    env_notes: tuple[tuple[str, str], ...] = ()
    # Read from localai.api_key_file: the probes send it.
    api_key: str | None = field(default=None, repr=False)
    spec_error: str | None = None
    # Size of each pending (incomplete) file, to tell a copy in progress from a stopped one.
    pending_sizes: Mapping[str, int] = field(default_factory=dict)


def check(settings: Settings, engine: EngineAdapter,
          engine_version: Version | None = None) -> Checked:
    """Blocking: validate config + models dir, stat the model files, render the spec. The
    engine version (when the running server told it) selects the lint rules only: the spec
    follows the settings, so learning a version never restarts anything."""
    srv = settings.server
    try:
        result = validate(srv.model_config_file, srv.models_dir,
                          context_for(settings, engine_version))
    except Exception as exc:  # validate never raises for bad input; this is a bug of ours
        log.exception("config.check_failed", action="treated as a rejected configuration")
        return Checked(Validation(None, (Problem(
            srv.model_config_file, f"validation failed: {type(exc).__name__}: {exc}",
            code="internal"),), ()))
    if result.models is None:
        sizes = {}
        for p in result.pending:
            try:
                sizes[str(p.path)] = p.path.stat().st_size
            except OSError:
                continue
        return Checked(result, pending_sizes=sizes)
    stats: dict[str, tuple[int, int]] = {}
    models_of: dict[str, str] = {}
    for f in result.models.files:
        path = srv.models_dir / f.relpath
        try:
            st = path.stat()
        except OSError:
            continue
        stats[str(path)] = (st.st_size, st.st_mtime_ns)
        models_of[str(path)] = f.name
    try:
        spec, launch, api_key = render_spec(settings, result.models, engine)
    except ValueError as exc:
        return Checked(result, stats, models_of, spec_error=str(exc))
    return Checked(result, stats, models_of, spec, tuple(launch.dropped),
                   env_notes=launch.env_notes, api_key=api_key)


def render_spec(settings: Settings, models: ModelSet, engine: EngineAdapter
                ) -> tuple[ServerSpec, EngineLaunch, str | None]:
    """Blocking (reads the API key file): the spec to run, the engine's render and the key.
    ValueError for what cannot run."""
    api_key = read_api_key(settings.localai.api_key_file)
    spec, launch = build_spec(settings, models, engine, program_for(settings, engine), api_key)
    return spec, launch, api_key


def read_api_key(path: Path | None) -> str | None:
    """The key in ``localai.api_key_file`` (surrounding whitespace dropped). Blocking. The
    messages never show the key."""
    if path is None:
        return None
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"localai.api_key_file {path}: cannot read it "
                         f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from exc
    if not key or any(c.isspace() for c in key):
        raise ValueError(f"localai.api_key_file {path}: must hold one key, without spaces")
    return key


@dataclass(frozen=True)
class Validated:
    """A check finished (the event the worker thread's result becomes)."""

    job: int
    reason: str
    checked: Checked


@dataclass(frozen=True)
class ConfigApplied:
    """A new valid, complete, settled configuration: the server and models owners act on it."""

    models: ModelSet
    spec: ServerSpec
    ggufs: Mapping[str, GGUFInfo]
    # No configuration was applied before: the server has not been started yet.
    first: bool
    reason: str
    api_key: str | None = field(default=None, repr=False)


@dataclass
class _Rejection:
    at: float
    problems: list[Problem]


class ConfigOwner:
    def __init__(self, settings: Settings, engine: EngineAdapter,
                 post: Callable[[Validated], None], notify: Callable[[ConfigApplied], None],
                 journal: Journal,
                 clock: Callable[[], float], wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._engine = engine
        self._post = post
        self._notify = notify
        self._journal = journal
        self._clock = clock
        self._wall = wall
        self.models: ModelSet | None = None
        self.spec: ServerSpec | None = None
        self._rejection: _Rejection | None = None
        self._pending: list[Pending] = []
        self._warnings: list[Problem] = []
        self._last_warnings: tuple[str, ...] = ()
        self._last_dropped: tuple[tuple[str, tuple[str, ...]], ...] = ()
        self._last_env_notes: tuple[tuple[str, str], ...] = ()
        self._seen_files: dict[str, Observation] = {}
        self._recheck_at: float | None = None
        self._jobs = 0
        self._running: int | None = None
        self._waiters: list[asyncio.Future[ReloadResult]] = []
        # A request that arrived while a check ran: its reason and who waits for it.
        self._again: str | None = None
        self._next_waiters: list[asyncio.Future[ReloadResult]] = []
        self._task: asyncio.Task[None] | None = None
        self._checks = 0
        self._last: tuple[CheckOutcome, float] | None = None
        # Pending file -> (size, when first seen at that size), and which were said stalled.
        self._sizes: dict[str, tuple[int, float]] = {}
        self._stalled: set[str] = set()
        self._engine_version: Version | None = None

    # -- requests ------------------------------------------------------------------------

    def set_engine_version(self, version: Version | None) -> None:
        """The server told its version: the lint rules follow it from the next check on."""
        if version != self._engine_version:
            self._engine_version = version
            self.request(f"engine version {version} learnt (lint rules follow it)")

    def request(self, reason: str, reply: asyncio.Future[ReloadResult] | None = None) -> None:
        """Check the files again; ``reply`` gets the outcome of a check started after now."""
        if self._running is not None:
            self._again = self._again or reason
            if reply is not None:
                self._next_waiters.append(reply)
            return
        self._start(reason, [reply] if reply is not None else [])

    def _start(self, reason: str, waiters: list[asyncio.Future[ReloadResult]]) -> None:
        self._jobs += 1
        job = self._running = self._jobs
        self._waiters = waiters
        self._recheck_at = None
        settings = self.settings
        version = self._engine_version

        async def run() -> None:
            checked = await asyncio.to_thread(check, settings, self._engine, version)
            self._post(Validated(job, reason, checked))

        self._task = asyncio.ensure_future(run())

    @property
    def checking(self) -> bool:
        """A check of the files is running (its outcome is still to come)."""
        return self._running is not None

    def recheck_due(self, now: float) -> bool:
        return self._recheck_at is not None and now >= self._recheck_at and self._running is None

    def next_deadline(self) -> float | None:
        return self._recheck_at

    def set_settings(self, settings: Settings) -> None:
        self.settings = settings

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for fut in (*self._waiters, *self._next_waiters):
            if not fut.done():
                fut.cancel()

    # -- results -------------------------------------------------------------------------

    def on_validated(self, msg: Validated) -> tuple[CheckOutcome, ReloadResult]:
        """Decide what a finished check means; tell its waiters; start a coalesced one."""
        outcome, result = self._decide(msg.checked, msg.reason)
        self._checks += 1
        self._last = (outcome, self._wall())
        if msg.job == self._running:
            self._running = None
            for fut in self._waiters:
                if not fut.done():
                    fut.set_result(result)
            self._waiters = []
            if self._again is not None:
                reason, waiters = self._again, self._next_waiters
                self._again, self._next_waiters = None, []
                self._start(reason, waiters)
        return outcome, result

    def _decide(self, checked: Checked, reason: str) -> tuple[CheckOutcome, ReloadResult]:
        v = checked.validation
        self._report_warnings(v)
        keeping = (f"kept revision {self.models.revision} running" if self.models
                   else "server not started")
        errors = list(v.errors)
        if checked.spec_error is not None:
            errors.append(Problem(self.settings.server.model_config_file, checked.spec_error))
        if errors:
            self._reject(errors, keeping)
            return CheckOutcome.REJECTED, ReloadResult(applied=False, restarting=False,
                                                  errors=[str(p) for p in errors])
        pending = list(v.pending)
        if v.models is not None:
            changing, self._seen_files = unsettled(
                dict(checked.stats), self._seen_files, now=self._clock(),
                wall_now=self._wall(), quiet=self.settings.watch.settle_seconds)
            pending += [Pending(checked.models_of.get(p, "?"), Path(p),
                                f"modified within the last "
                                f"{self.settings.watch.settle_seconds:g}s (still being written?)")
                        for p in changing]
        if pending or v.models is None or checked.spec is None:
            pending = self._note_stalls(pending, checked.pending_sizes)
            self._wait_for(pending, keeping)
            return CheckOutcome.PENDING, ReloadResult(
                applied=False, restarting=False,
                pending=[f"{p.model}: {p.path}: {p.reason}" for p in pending])
        self._report_dropped(checked.dropped)
        self._report_env(checked.env_notes)
        models, spec = v.models, checked.spec
        self._rejection = None
        self._pending = []
        if self.spec is not None and spec.digest() == self.spec.digest():
            log.debug("config.unchanged", revision=models.revision, reason=reason)
            self.models = models
            return CheckOutcome.UNCHANGED, ReloadResult(applied=True, restarting=False,
                                                   revision=models.revision)
        old = self.models.revision if self.models else None
        self.models, self.spec = models, spec
        log.info("config.applied", revision=models.revision, previous=old, reason=reason,
                 models=list(models.names))
        self._journal.note("config.applied", f"revision {old} -> {models.revision} ({reason})")
        self._notify(ConfigApplied(models, spec, dict(v.ggufs), old is None,
                                 f"config changed ({reason}): revision {old} -> "
                                 f"{models.revision}" if old else f"config ready ({reason})",
                                 checked.api_key))
        return CheckOutcome.APPLIED, ReloadResult(applied=True, restarting=True,
                                             revision=models.revision)

    def _note_stalls(self, pending: list[Pending], sizes: Mapping[str, int]) -> list[Pending]:
        """A pending file whose size stays the same for minutes: the copy may have died."""
        now = self._clock()
        self._sizes = {path: (size, self._sizes[path][1] if self._sizes.get(path, (-1,))[0]
                              == size else now) for path, size in sizes.items()}
        out = []
        for p in pending:
            seen = self._sizes.get(str(p.path))
            still = now - seen[1] if seen is not None else 0.0
            if still >= STALLED_SECONDS:
                p = Pending(p.model, p.path, f"{p.reason}; its size has not changed for "
                            f"{still / 60:.0f} min: the copy seems to have stopped (the file "
                            "is used as soon as it is complete)")
                if str(p.path) not in self._stalled:
                    self._stalled.add(str(p.path))
                    log.warning("config.pending_stalled", model=p.model, file=str(p.path),
                                size=seen[0] if seen else None, seconds=round(still),
                                action="still waiting for it; nothing restarted")
            out.append(p)
        self._stalled &= {str(p.path) for p in pending}
        return out

    def _report_warnings(self, result: Validation) -> None:
        """Log lint warnings once per distinct set, not on every re-check."""
        warnings = tuple(str(w) for w in result.warnings)
        if warnings == self._last_warnings:
            return
        self._last_warnings = warnings
        self._warnings = list(result.warnings)
        for w in result.warnings:
            log.warning("config.warning", code=w.code, file=str(w.file), line=w.line,
                        model=w.model, field=w.field, warning=w.message, hint=w.hint,
                        action="applied anyway (a warning, not an error)")

    def _report_dropped(self, dropped: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
        if dropped == self._last_dropped:
            return
        self._last_dropped = dropped
        for name, fields in dropped:
            log.warning("engine.fields_dropped", model=name, fields=list(fields),
                        engine=str(self._engine.kind),
                        action="not passed to llama-server (it uses the GGUF's own chat "
                        "template and stop tokens)")

    def _report_env(self, notes: tuple[tuple[str, str], ...]) -> None:
        if notes == self._last_env_notes:
            return
        self._last_env_notes = notes
        for name, why in notes:
            log.info("engine.environment", variable=name, note=why,
                     engine=str(self._engine.kind))

    def _reject(self, problems: list[Problem], keeping: str) -> None:
        errors = [str(p) for p in problems]
        same = self._rejection is not None and [
            str(p) for p in self._rejection.problems] == errors
        self._pending = []
        if same:
            return  # the same files checked again (a touch, a re-check): nothing new to say
        self._rejection = _Rejection(self._wall(), problems)
        first = problems[0]
        # One event per rejected change: the first error's place as fields, all of them listed.
        log.error("config.rejected", file=str(first.file), line=first.line,
                  column=first.column, field=first.field, error=first.message,
                  hint=first.hint, errors=errors, action=keeping)
        self._journal.note("config.rejected", "; ".join(errors))

    def _wait_for(self, pending: list[Pending], keeping: str) -> None:
        """Files still being copied: apply nothing yet, look again in a second."""
        if [str(p.path) for p in pending] != [str(p.path) for p in self._pending]:
            for p in pending:
                log.info("config.pending", model=p.model, file=str(p.path), reason=p.reason,
                         action=f"{keeping}; re-checking every {RECHECK_SECONDS:g}s")
        self._pending = pending
        self._rejection = None
        self._recheck_at = self._clock() + RECHECK_SECONDS

    # -- views ---------------------------------------------------------------------------

    @property
    def rejected(self) -> bool:
        return self._rejection is not None

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def describe(self) -> str:
        """The configuration's part of the systemd STATUS= line."""
        line = ""
        if self.models is not None:
            line += f", revision {self.models.revision}, {len(self.models.entries)} model(s)"
        if self._rejection is not None:
            line += "; config change rejected"
        if self._pending:
            line += f"; waiting for {len(self._pending)} model file(s) being written"
        return line

    def snapshot(self) -> ConfigStatus:
        srv = self.settings.server
        rejection = None
        if self._rejection is not None:
            rejection = RejectionStatus(at=self._rejection.at,
                                        errors=[str(p) for p in self._rejection.problems])
        return ConfigStatus(
            file=str(srv.model_config_file), models_dir=str(srv.models_dir),
            revision=self.models.revision if self.models else None,
            spec=self.spec.digest() if self.spec else None, rejected=rejection,
            pending=[PendingFile(model=p.model, file=str(p.path), reason=p.reason)
                     for p in self._pending],
            warnings=[Finding(**w.as_dict(), symptom=symptom_of(w.code))
                      for w in self._warnings],
            checks=self._checks, last_check=self._last[0] if self._last else None,
            last_check_at=self._last[1] if self._last else None,
        )
