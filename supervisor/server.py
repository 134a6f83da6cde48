"""The server owner: the policy's machine, the live instance, and what is done to the runtime.

Only this owner changes the machine (``policy.step``). Its actions become effects performed in
order by one ``EffectWorker``; probes run as tasks that report results. Both come back as
events, and only here, on the loop, are they turned into state.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .classify import Cause, Diagnosis, diagnose
from .effects import (
    EffectWorker,
    Find,
    FindDone,
    Launch,
    LaunchDone,
    Terminate,
    TerminateDone,
    Unpause,
    UnpauseDone,
)
from .engines.base import EngineAdapter
from .health import ModelsSeen, Probing, ask_version, loaded_names
from .policy import (
    LIVE_STATES,
    Action,
    Adopted,
    Announce,
    EngineDown,
    EngineUp,
    Escalate,
    Event,
    Exited,
    Intent,
    Launched,
    LaunchFailed,
    Machine,
    Paused,
    ProbeResult,
    Restart,
    Rules,
    Start,
    State,
    Stop,
    Stopped,
    Tick,
    Unpaused,
    step,
)
from .policy import Launch as LaunchAction
from .policy import Terminate as TerminateAction
from .policy import Unpause as UnpauseAction
from .runtime import Instance, InstanceExited, InstanceHealth, InstancePaused, RuntimeConnection
from .settings import Settings
from .spec import ServerSpec, rendered_dir
from .status import (
    DrainStatus,
    EngineVersionStatus,
    FailureStatus,
    InstanceStatus,
    Journal,
    ServerSnapshot,
)
from .tasks import TaskSet
from .versions import KnownVersion, Version, VersionSource
from .vocab import Level, LoadState, ProbeKind, RestartReason

log = structlog.get_logger("supervisor")

STARTING_PROBE_SECONDS = 0.5
# A failing server is re-asked this often: a hung server is an outage while we wait.
FAILING_PROBE_SECONDS = 0.5
LOG_LINES_FOR_DIAGNOSIS = 80


def rules_from(settings: Settings) -> Rules:
    return Rules(
        restart=settings.restart,
        failure_threshold=settings.health.failure_threshold,
        startup_timeout=settings.server.startup_timeout,
        unhealthy_grace=settings.health.unhealthy_grace,
    )


# ---- events this owner produces or consumes -------------------------------------------------


@dataclass(frozen=True)
class Probed:
    """One liveness or readiness answer (readiness also says which models are listed)."""

    result: ProbeResult
    seen: ModelsSeen | None = None
    # How long the probe took (for /metrics).
    seconds: float | None = None


@dataclass(frozen=True)
class Observed:
    """Which models are loaded and how busy the server is, as one probe cycle saw it."""

    token: str
    at: float
    loaded: dict[str, LoadState] | None
    work: float | None
    in_flight: int | None


@dataclass(frozen=True)
class ProbeCycleDone:
    token: str
    alive: bool


@dataclass(frozen=True)
class Diagnosed:
    exited: InstanceExited
    diagnosis: Diagnosis
    # The state the exit led to, for the log line.
    then: State


@dataclass(frozen=True)
class VersionReported:
    """What a newly serving instance said its version is (raw text; None: no answer)."""

    token: str
    raw: str | None


@dataclass(frozen=True)
class EngineVersionKnown:
    """For the other owners: the engine version behaviour should follow from now on."""

    version: Version | None


@dataclass(frozen=True)
class ServingChanged:
    """For the models owner and the gateway: which instance is live now, whether it serves
    requests, and whether it is down for good (FATAL, or stopped with no start to come)."""

    token: str | None
    serving: bool
    down: bool = False


def _setting_version(settings: Settings) -> KnownVersion | None:
    raw = settings.localai.version
    version = Version.parse(raw)
    if raw is None or version is None:
        return None
    return KnownVersion(version, VersionSource.SETTING, raw)


def maintenance_file(settings: Settings) -> Path:
    return settings.supervisor.state_dir / "maintenance"


def _keep_maintenance(settings: Settings, on: bool) -> None:
    """Blocking: record (or clear) `supervisorctl stop` in the state dir."""
    path = maintenance_file(settings)
    try:
        if on:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("stopped by supervisorctl stop; supervisorctl start undoes it\n")
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.error("server.maintenance_not_kept", file=str(path), error=str(exc),
                  action="in effect until the supervisor restarts, then forgotten")


class ServerOwner:
    def __init__(self, settings: Settings, effects: EffectWorker, prober: Probing,
                 logs: Callable[[int, InstanceExited | None], Awaitable[list[str]]],
                 exit_details: Callable[[InstanceExited], Awaitable[InstanceExited]],
                 post: Callable[[Any], None], notify: Callable[[Any], None], journal: Journal,
                 clock: Callable[[], float], *, engine: EngineAdapter,
                 wall: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random) -> None:
        self._settings = settings
        self._engine = engine
        # From the setting until a serving instance says otherwise (GET /version).
        self._version = _setting_version(settings)
        self._rules = rules_from(settings)
        self._effects = effects
        self._prober = prober
        self._read_logs = logs
        self._exit_details = exit_details
        # post: outcomes of this owner's tasks (queued for the loop); notify: news for the
        # other owners, delivered in this same turn before the loop's housekeeping.
        self._post = post
        self._notify = notify
        self._journal = journal
        self._clock = clock
        self._wall = wall
        self._rand = rand
        self.machine = Machine(since=clock())
        self._spec: ServerSpec | None = None
        self._instance: Instance | None = None
        # Effects submitted and not yet reported back (each reports exactly once).
        self._effects_pending = 0
        self._booting = False
        # Exits the runtime reported before the launch that made the instance reported back.
        self._early_exits: dict[str, InstanceExited] = {}
        self._restarts_by_reason: Counter[RestartReason] = Counter()
        self._failures_by_cause: Counter[Cause] = Counter()
        self._drain = DrainStatus()
        self._last_failure: Diagnosis | None = None
        self._runtime_connected = True
        self._shutting_down = False
        self._serving: tuple[str | None, bool, bool] = (None, False, False)
        self._next_probe: float = 0.0
        self._probing: str | None = None
        self._probe_again = False
        self._tasks = TaskSet()
        # `supervisorctl stop`: the operator wants the server down until `start`; no config
        # change, reload or escalation starts it (kept in state_dir across supervisor restarts).
        self.maintenance = False

    # -- configuration -------------------------------------------------------------------

    def set_settings(self, settings: Settings) -> None:
        self._settings = settings
        if self._version is None or self._version.source is VersionSource.SETTING:
            self._version = _setting_version(settings)
        self._rules = rules_from(settings)

    def set_program_version(self, known: KnownVersion) -> None:
        """Read from the image or binary before the first start (no setting names one)."""
        if self._version is None:
            self._version = known

    def configure(self, spec: ServerSpec, *, first: bool, reason: str) -> None:
        """A new applied spec: boot onto it (adopt or start), or restart onto it."""
        self._spec = spec
        if self._shutting_down:
            return
        if first:
            self._booting = True
            self._submit(Find(spec.digest()))
        else:
            self.feed(Restart(reason, cause=RestartReason.CONFIG_CHANGE))

    # -- the policy ----------------------------------------------------------------------

    def set_maintenance(self, on: bool) -> None:
        """At boot: the flag as the state dir kept it."""
        self.maintenance = on

    def operator_stop(self) -> None:
        self.maintenance = True
        log.info("server.maintenance", on=True, action="stopping the server until "
                 "`supervisorctl start`")
        self._tasks.spawn(asyncio.to_thread(_keep_maintenance, self._settings, True))
        self.feed(Stop("operator: supervisorctl stop"))

    def operator_start(self) -> None:
        self.maintenance = False
        log.info("server.maintenance", on=False, action="starting the server")
        self._tasks.spawn(asyncio.to_thread(_keep_maintenance, self._settings, False))
        self.feed(Start("operator: supervisorctl start"))

    def feed(self, event: Event) -> None:
        if isinstance(event, Start | Restart | Escalate) and self.maintenance:
            return  # stopped by the operator: only `supervisorctl start` starts it
        if isinstance(event, Start | Restart) and (
                self._shutting_down or self._spec is None or self._booting):
            # Nothing to start onto, or the boot (adopt or start) already decides it.
            return
        before = self.machine
        decision = step(before, event, self._clock(), self._rules)
        self.machine = decision.machine
        if decision.ignored:
            return
        m = self.machine
        if m.restarts > before.restarts and before.launching is not None:
            self._restarts_by_reason[before.launching] += 1
        if before.state is not m.state:
            log.info("server.state", old=before.state.value, new=m.state.value,
                     trigger=type(event).__name__, reason=m.last_reason)
        if m.instance is None:
            self._instance = None
        for action in decision.actions:
            self._perform(action)
        if before.state is not m.state or before.instance != m.instance:
            self._probe_soon()
        serving = (m.instance, m.state in (State.RUNNING, State.UNHEALTHY),
                   m.state in (State.FATAL, State.STOPPED))
        if serving != self._serving:
            if serving[1] and serving[0] is not None and not (
                    self._serving[1] and self._serving[0] == serving[0]):
                self._tasks.spawn(self._ask_version(serving[0]))  # a newly serving instance
            self._serving = serving
            self._notify(ServingChanged(*serving))

    # -- engine version ------------------------------------------------------------------

    @property
    def engine_version(self) -> Version | None:
        return self._version.version if self._version is not None else None

    async def _ask_version(self, token: str) -> None:
        self._post(VersionReported(token, await ask_version(self._prober, self._engine)))

    def on_version(self, msg: VersionReported) -> None:
        if msg.token != self.machine.instance or msg.raw is None:
            return
        seen = Version.parse(msg.raw)
        if seen is None:
            log.info("engine.version", reported=msg.raw[:100], version=None,
                     action="not a release version: rules keep what they assumed")
            return
        before = self._version
        if before is not None and before.source is VersionSource.SETTING \
                and before.version != seen:
            log.warning("engine.version_mismatch", setting=str(before.version),
                        reported=msg.raw[:100],
                        action="following the version the server reports; fix "
                               "localai.version")
        self._version = KnownVersion(seen, VersionSource.SERVER, msg.raw[:100])
        if before is None or before.version != seen:
            log.info("engine.version", version=str(seen), reported=msg.raw[:100],
                     source=VersionSource.SERVER.value)
            self._notify(EngineVersionKnown(seen))

    def _perform(self, action: Action) -> None:
        if isinstance(action, LaunchAction):
            assert self._spec is not None
            self._submit(Launch(self._spec, rendered_dir(self._settings), action.reason))
        elif isinstance(action, TerminateAction):
            drain = self._settings.health.drain_timeout if action.drain else 0.0
            self._submit(Terminate(action.reason, drain, self._settings.server.stop_timeout,
                                   hung=action.hung))
        elif isinstance(action, UnpauseAction):
            self._submit(Unpause(action.instance))
        else:
            self._announce(action)

    def _announce(self, action: Announce) -> None:
        logger = {Level.INFO: log.info, Level.WARNING: log.warning,
                  Level.ERROR: log.error}[action.level]
        logger(action.event, reason=action.reason, state=self.machine.state.value,
               restarts=self.machine.restarts)
        self._journal.note(action.event, action.reason)

    def _submit(self, effect: Find | Launch | Terminate | Unpause) -> None:
        self._effects_pending += 1
        self._effects.submit(effect)

    def tick(self) -> None:
        self.feed(Tick(self._rand()))

    # -- effect outcomes -----------------------------------------------------------------

    def on_found(self, msg: FindDone) -> None:
        self._effects_pending -= 1
        self._booting = False
        if msg.error is not None:
            log.warning("runtime.find_failed", error=msg.error, action="starting a new instance")
        if msg.instance is not None:
            self.feed(Adopted(msg.instance.token, msg.instance.ident[:12]))
            self._track(msg.instance)
            if self.maintenance:  # still stopped by the operator: take it down again
                self.feed(Stop("operator: supervisorctl stop (kept across a restart)"))
        else:
            self.feed(Start("supervisor start"))

    def on_launched(self, msg: LaunchDone) -> None:
        self._effects_pending -= 1
        if msg.instance is None:
            action = ("waiting for the container engine" if msg.engine_down else
                      "giving up: retrying cannot help (FATAL)" if msg.permanent else
                      "retrying")
            log.error("server.launch_failed", error=msg.error, action=action)
            self.feed(LaunchFailed(msg.error or "unknown", self._rand(),
                                   permanent=msg.permanent, engine_down=msg.engine_down))
            return
        inst = msg.instance
        spec = self._spec
        log.info("server.launched", instance=inst.ident[:12], pid=inst.pid,
                 spec=inst.spec_digest, revision=spec.revision if spec else None,
                 reason=self.machine.last_reason)
        self._journal.note("server.launched", self.machine.last_reason or "launched")
        self.feed(Launched(inst.token))
        self._track(inst)
        early = self._early_exits.pop(inst.token, None)
        if early is not None:
            self.on_exited(early)

    def _track(self, inst: Instance) -> None:
        """Keep the runtime's view of the instance the machine now tracks (and only that)."""
        if self.machine.instance == inst.token:
            self._instance = inst

    def on_terminated(self, msg: TerminateDone) -> None:
        self._effects_pending -= 1
        d = msg.drain
        if d is not None and d.in_flight is None:
            log.warning("drain.unknown", reason=msg.reason, cause="the engine does not report "
                        "requests in flight", action="stopped without waiting")
        elif d is not None and d.in_flight:
            self._drain = DrainStatus(
                drains=self._drain.drains + 1,
                drained_requests=self._drain.drained_requests + d.drained,
                cut_off_requests=self._drain.cut_off_requests + d.cut_off)
            if d.cut_off:
                log.warning("drain.timeout", in_flight=d.cut_off, reason=msg.reason,
                            seconds=round(d.seconds, 3),
                            action="stopped anyway: these requests are cut off")
            else:
                log.info("drain.done", requests=d.drained, seconds=round(d.seconds, 3),
                         action="stopped after the last request finished")
        log.info("server.terminated", reason=msg.reason)
        self.feed(Stopped(self.machine.instance))

    # -- runtime events ------------------------------------------------------------------

    def on_exited(self, msg: InstanceExited) -> None:
        """The runtime saw an instance die: decide (relaunch) at once, and read its log to
        name the cause alongside, off the critical path."""
        m = self.machine
        if msg.token != m.instance:
            if m.state is State.STARTING and m.instance is None:
                # Its launch has not reported back yet: decide once it has.
                self._early_exits[msg.token] = msg
            return
        if m.state is State.STOPPING:
            self._effects.abort_drain()  # nothing left to drain: it is gone
            return
        self.feed(Exited(msg.token, msg.reason, self._rand(), outage=msg.outage))
        self._tasks.spawn(self._diagnose(msg, self.machine.state))

    async def _diagnose(self, exited: InstanceExited, then: State) -> None:
        try:
            exited = await asyncio.wait_for(self._exit_details(exited), 5)
            lines = await asyncio.wait_for(self._read_logs(LOG_LINES_FOR_DIAGNOSIS, exited), 5)
        except (TimeoutError, OSError):
            lines = []
        self._post(Diagnosed(exited, diagnose(exited.exit_code, exited.oom_killed, lines,
                                              outage=exited.outage), then))

    def on_diagnosed(self, msg: Diagnosed) -> None:
        d = msg.diagnosis
        self._last_failure = d
        self._failures_by_cause[d.cause] += 1
        what = {State.STARTING: "relaunched at once", State.BACKOFF: "relaunching after a "
                "backoff", State.WAITING: "relaunching once the container engine is back",
                State.FATAL: "gave up (FATAL)"}.get(msg.then, f"now {msg.then.value}")
        log.warning("server.exited", reason=msg.exited.reason, cause=d.cause.value,
                    hint=d.hint, evidence=d.evidence, action=what)
        self._journal.note("server.exited", f"{msg.exited.reason}: {d.cause.value}")

    def on_paused(self, msg: InstancePaused) -> None:
        m = self.machine
        if msg.token != m.instance:
            return
        log.warning("container.paused", state=m.state.value,
                    action="unpausing it now (`supervisorctl stop` stops the server)"
                    if m.state in LIVE_STATES else "left to the stop under way")
        self.feed(Paused(msg.token, self._rand()))

    def on_unpaused(self, msg: UnpauseDone) -> None:
        self._effects_pending -= 1
        if msg.error is None:
            log.info("container.unpaused", action="serving on, models still loaded")
            self._journal.note("container.unpaused", "paused by the container engine; "
                               "unpaused at once")
        else:
            log.error("container.unpause_failed", error=msg.error,
                      action="treated as hung: killed and relaunched")
        self.feed(Unpaused(msg.token, msg.error, self._rand()))

    def on_health(self, msg: InstanceHealth) -> None:
        if not msg.healthy:
            log.warning("probe.failed", probe=ProbeKind.DOCKER_HEALTHCHECK.value,
                        error=msg.detail, state=self.machine.state.value)
            self.feed(ProbeResult(msg.token, ProbeKind.LIVENESS, False, msg.detail,
                                  self._rand()))

    def on_connection(self, msg: RuntimeConnection) -> None:
        self._runtime_connected = msg.connected
        if msg.connected:
            log.info("runtime.reconnected", detail=msg.detail,
                     action="re-checked the container; starting it if it is not running")
            self.feed(EngineUp(msg.detail))
        else:
            log.error("runtime.disconnected", error=msg.detail,
                      action="nothing launched and nothing counted as a failure until it is "
                      "back; reconnecting every second at most")
            self.feed(EngineDown(msg.detail))
        self._journal.note("runtime.reconnected" if msg.connected else "runtime.disconnected",
                           msg.detail)

    # -- probes --------------------------------------------------------------------------

    def _probe_soon(self) -> None:
        if self._probing is not None:
            self._probe_again = True
        self._next_probe = self._clock()

    def schedule_probes(self, now: float) -> None:
        m = self.machine
        if (self._probing is not None or now < self._next_probe or m.instance is None
                or m.state not in LIVE_STATES or self._spec is None):
            return
        self._probing = m.instance
        self._probe_again = False
        self._tasks.spawn(self._probe_cycle(m.instance, self._spec.models,
                                            starting=m.state is State.STARTING))

    async def _probe_cycle(self, token: str, expected: tuple[str, ...], *, starting: bool
                           ) -> None:
        """Liveness, then readiness, then (serving) what is loaded and how busy it is."""
        alive = False
        try:
            started = self._clock()
            live = await self._prober.liveness(token)
            alive = live.ok
            self._post(Probed(live, seconds=self._clock() - started))
            if live.ok:
                started = self._clock()
                ready, seen = await self._prober.readiness(token, expected)
                self._post(Probed(ready, seen, seconds=self._clock() - started))
                if ready.ok and not starting:
                    # llama-server's readiness answer already says what is loaded.
                    loaded = seen.loaded if seen.loaded is not None else await self._prober.loaded()
                    activity = await self._prober.activity(loaded_names(loaded))
                    self._post(Observed(token, self._clock(), loaded, activity.work,
                                        activity.in_flight))
        finally:
            self._post(ProbeCycleDone(token, alive))

    def on_probed(self, msg: Probed) -> None:
        r = msg.result
        if not r.ok and self.machine.state is not State.STARTING:
            log.warning("probe.failed", probe=r.probe.value, error=r.detail,
                        state=self.machine.state.value)
        self.feed(r)

    def on_cycle_done(self, msg: ProbeCycleDone) -> None:
        self._probing = None
        interval = self._settings.health.interval
        if self.machine.state is State.STARTING:
            interval = min(interval, STARTING_PROBE_SECONDS)
        elif not msg.alive:
            interval = min(interval, FAILING_PROBE_SECONDS)
        self._next_probe = self._clock() if self._probe_again else self._clock() + interval

    # -- shutdown ------------------------------------------------------------------------

    def shut_down(self, reason: str) -> None:
        """From now on: no starts; stop whatever runs (called again until quiescent)."""
        self._shutting_down = True
        m = self.machine
        if m.state is State.STOPPED or (m.state is State.STOPPING and m.intent is Intent.STOP):
            return
        if self._booting:
            return  # the boot's outcome decides what there is to stop
        self.feed(Stop(reason))

    def force(self) -> None:
        self._effects.force()

    @property
    def quiescent(self) -> bool:
        """Nothing runs and nothing is on its way: safe to exit."""
        return (self._effects_pending == 0 and not self._booting
                and self.machine.state is State.STOPPED)

    def next_deadline(self) -> float | None:
        """The next time this owner has something to do without a message."""
        m = self.machine
        times = [t for t in (m.retry_at,) if t is not None]
        if m.state in LIVE_STATES and m.instance is not None and self._probing is None:
            times.append(self._next_probe)
        return min(times) if times else None

    # -- tasks ---------------------------------------------------------------------------

    async def close(self) -> None:
        await self._tasks.close()

    # -- views ---------------------------------------------------------------------------

    def describe(self) -> str:
        """The server's part of the systemd STATUS= line."""
        m = self.machine
        line = m.state.value
        if m.crash_looping and m.state is not State.FATAL:
            line += f" (crash-looping: {len(m.failures)} failures)"
        if m.state in (State.BACKOFF, State.WAITING, State.FATAL) and m.last_reason:
            line += f": {m.last_reason}"
        if m.state is State.FATAL:
            line += "; run `supervisorctl restart` after fixing the cause"
        return line

    def snapshot(self, now: float) -> ServerSnapshot:
        m = self.machine
        inst = self._instance
        serving = m.state in (State.RUNNING, State.UNHEALTHY) and inst is not None
        fail = self._last_failure
        return ServerSnapshot(
            state=m.state, since_seconds=round(now - m.since, 3), reason=m.last_reason,
            runtime_connected=self._runtime_connected,
            instance=None if inst is None else InstanceStatus(
                id=inst.ident, pid=inst.pid, image=inst.image, spec=inst.spec_digest,
                started_at=inst.started_at),
            uptime_seconds=round(max(0.0, self._wall() - inst.started_at), 3)
            if serving and inst is not None else None,
            restarts=m.restarts, restarts_by_reason=dict(self._restarts_by_reason),
            consecutive_failures=m.attempt,
            recent_failures=sum(now - t < self._rules.restart.failure_window
                                for t in m.failures),
            crash_looping=m.crash_looping,
            last_failure=None if fail is None else FailureStatus(
                cause=fail.cause, hint=fail.hint, evidence=fail.evidence),
            drain=self._drain,
            retry_in_seconds=round(m.retry_at - now, 3) if m.retry_at is not None else None,
            maintenance=self.maintenance,
            failures_by_cause=dict(self._failures_by_cause),
            engine_version=None if self._version is None else EngineVersionStatus(
                version=str(self._version.version), source=self._version.source,
                reported=self._version.raw),
        )
