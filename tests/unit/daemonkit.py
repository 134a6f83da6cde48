"""A daemon on fakes: a runtime, a prober and a clock the test controls (no Docker, no HTTP).

The runtime and prober are fakes because these tests are about the loop's own decisions and
ordering; the real runtimes and engines are exercised by tests/integration.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.daemon import Daemon, SignalReceived
from supervisor.engines import Activity, Call
from supervisor.health import ModelsSeen
from supervisor.notify import Notifier
from supervisor.policy import ProbeResult, State
from supervisor.runtime import (
    Instance,
    InstanceExited,
    InstancePaused,
    LaunchError,
    RuntimeConnection,
    RuntimeEvent,
)
from supervisor.settings import (
    Engine,
    GatewaySection,
    HealthSection,
    RestartSection,
    RuntimeKind,
    ServerSection,
    Settings,
    SupervisorSection,
    WatchSection,
)
from supervisor.spec import ServerSpec
from supervisor.tinygguf import write_tiny_llama
from supervisor.versions import VersionSource
from supervisor.vocab import LoadState, ProbeKind


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def _send(self, text: str) -> None:
        self.sent.append(text)


@dataclass
class FakeRuntime:
    """Tracks which instances are alive; launches can be made slow or to fail."""

    name: str = "fake"
    live: set[str] = field(default_factory=set)
    current: str | None = None
    launched: list[str] = field(default_factory=list)
    specs: list[ServerSpec] = field(default_factory=list)
    terminated: list[tuple[str | None, float]] = field(default_factory=list)
    # Set: the next launch waits for it (a slow container create).
    gate: asyncio.Event | None = None
    fail_next: str | None = None
    adoptable: Instance | None = None
    # The next launched instance dies before launch() returns (a crash at start).
    die_at_start: bool = False
    launched_over_live: int = 0
    # A launch is waiting for ``gate``.
    gated: bool = False
    # The container engine does not answer: launches fail without reaching it.
    engine_down: bool = False
    # Set: reading a dead instance's log waits for it (a slow log read).
    log_gate: asyncio.Event | None = None
    log_reads: list[str | None] = field(default_factory=list)
    # Fake time of each terminate, when a clock is given.
    clock: FakeClock | None = None
    terminated_at: list[float] = field(default_factory=list)
    paused: set[str] = field(default_factory=set)
    # Set: unpausing fails with this message (the container is frozen for good).
    unpause_fails: str | None = None
    _emit: Callable[[RuntimeEvent], None] | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def open(self, emit: Callable[[RuntimeEvent], None]) -> None:
        self._emit = emit

    async def find(self, spec_digest: str) -> Instance | None:
        inst = self.adoptable
        if inst is not None:
            self.live.add(inst.token)
            self.current = inst.token
        return inst

    async def launch(self, spec: ServerSpec) -> Instance:
        gate = self.gate
        if gate is not None:
            self.gate = None
            self.gated = True
            await gate.wait()
            self.gated = False
        if self.engine_down:
            raise LaunchError("docker engine: connection refused", engine_down=True)
        if self.fail_next is not None:
            reason, self.fail_next = self.fail_next, None
            raise LaunchError(reason, permanent="not found" in reason)
        if self.live:
            self.launched_over_live += 1
        self.specs.append(spec)
        token = f"t{next(self._ids)}"
        self.live.add(token)
        self.current = token
        self.launched.append(token)
        if self.die_at_start:
            self.die_at_start = False
            self.crash(1)
        return Instance(token=token, ident=token, spec_digest=spec.digest(), started_at=1.0,
                        pid=100)

    async def terminate(self, timeout: float) -> None:
        self.terminated.append((self.current, timeout))
        if self.clock is not None:
            self.terminated_at.append(self.clock.now)
        if self.current is not None:
            self.live.discard(self.current)
            self.paused.discard(self.current)
            self.current = None

    def crash(self, code: int = 137) -> str:
        """The current instance dies on its own (SIGKILL of its host pid)."""
        token = self.current
        assert token is not None and self._emit is not None
        self.live.discard(token)
        self.current = None
        self._emit(InstanceExited(token, code, detail="killed by SIGKILL"))
        return token

    async def detach(self) -> None:
        self.current = None

    async def exit_details(self, exited: InstanceExited) -> InstanceExited:
        return exited

    async def logs(self, lines: int, exited: InstanceExited | None = None) -> list[str]:
        self.log_reads.append(exited.token if exited else None)
        if self.log_gate is not None:
            await self.log_gate.wait()
        return ["llama_model_load: error loading model"] if lines else []

    def engine(self, up: bool, *, stopped_it: bool = False) -> None:
        """The container engine goes away or comes back (and, with ``stopped_it``, its
        going away killed the instance, which the runtime finds when it reconnects)."""
        assert self._emit is not None
        self.engine_down = not up
        if up and stopped_it and self.current is not None:
            token, self.current = self.current, None
            self.live.discard(token)
            self._emit(InstanceExited(token, 143, detail="seen after reconnect", outage=True))
        self._emit(RuntimeConnection(up, "test"))

    def pause(self) -> None:
        assert self._emit is not None and self.current is not None
        self.paused.add(self.current)
        self._emit(InstancePaused(self.current))

    async def unpause(self) -> None:
        if self.unpause_fails is not None:
            raise RuntimeError(self.unpause_fails)
        self.paused.discard(self.current or "")

    async def close(self) -> None:
        pass


@dataclass
class FakeProber:
    alive: bool = True
    # When set, a liveness probe of a dead server costs this much fake time (its timeout).
    clock: FakeClock | None = None
    hang_cost: float = 0.0
    in_flight: int | None = 0
    listed: tuple[str, ...] | None = None
    calls: list[Call] = field(default_factory=list)
    # Answer to model probes.
    model_status: int = 200
    # Like llama-server's router with --models-max 1: a request loads its model (unless
    # ?autoload=false), evicting the other; every load is counted as a swap.
    router: bool = False
    resident: list[str] = field(default_factory=list)
    swaps: list[str] = field(default_factory=list)
    # Model probes get no answer in time; the decode counter moves this much per reading.
    probes_time_out: bool = False
    progress_per_read: float = 0.0
    work: float = 0.0
    api_key: str | None = None
    # Fixed answers by path (e.g. "/version").
    answers: dict[str, tuple[int, str]] = field(default_factory=dict)

    async def liveness(self, instance: str) -> ProbeResult:
        if not self.alive and self.clock is not None:
            self.clock.now += self.hang_cost
        return ProbeResult(instance, ProbeKind.LIVENESS, self.alive,
                           "" if self.alive else "GET /health: no answer")

    async def readiness(self, instance: str, expected: tuple[str, ...]
                        ) -> tuple[ProbeResult, ModelsSeen]:
        names = self.listed if self.listed is not None else expected
        states = {n: LoadState.LOADED if n in self.resident else LoadState.UNLOADED
                  for n in names}
        seen = ModelsSeen(dict(states), states)
        missing = [m for m in expected if m not in names]
        return ProbeResult(instance, ProbeKind.READINESS, not missing,
                           f"not listed: {missing}" if missing else "listed"), seen

    async def call(self, call: Call, timeout: float) -> tuple[int, str]:
        self.calls.append(call)
        if call.path in self.answers:
            return self.answers[call.path]
        if self.probes_time_out and call.path.startswith("/v1/chat/completions"):
            return 0, f"no answer within {timeout:g}s"
        model = (call.body or {}).get("model")
        if self.router and isinstance(model, str) and model not in self.resident:
            if "autoload=false" in call.path:
                return 400, '{"error": {"message": "model is not loaded"}}'
            self.resident = [model]
            self.swaps.append(model)
        return self.model_status, "{}"

    async def loaded(self) -> dict[str, LoadState] | None:
        return {n: LoadState.LOADED for n in self.resident}

    def set_api_key(self, key: str | None) -> None:
        self.api_key = key

    async def activity(self, loaded: list[str], timeout: float | None = None) -> Activity:
        self.work += self.progress_per_read
        return Activity(self.work, self.in_flight)

    async def close(self) -> None:
        pass


CONFIG = """\
- name: tiny-a
  context_size: 1024
  parameters:
    model: tiny-a.gguf
    max_tokens: 16
"""


def make_settings(base: Path, gateway: bool = False, **health: object) -> Settings:
    models = base / "models"
    models.mkdir(parents=True, exist_ok=True)
    if not (models / "tiny-a.gguf").exists():
        write_tiny_llama(models / "tiny-a.gguf", seed=1, name="tiny-a")
    config = base / "config.yaml"
    if not config.exists():
        config.write_text(CONFIG)
    return Settings(
        supervisor=SupervisorSection(state_dir=base / "state", control_socket=base / "c.sock",
                                     status_api=""),
        server=ServerSection(engine=Engine.LLAMA_SERVER, runtime=RuntimeKind.PROCESS,
                             model_config_file=config, models_dir=models, startup_timeout=60,
                             stop_timeout=5),
        health=HealthSection(**{"interval": 5.0, "model_probes": False, "drain_timeout": 30.0,
                                **health}),  # type: ignore[arg-type]
        restart=RestartSection(backoff_initial=1.0, jitter=0.0),
        watch=WatchSection(enabled=False, settle_seconds=0),
        gateway=GatewaySection(enabled=gateway),
    )


class Harness:
    """The daemon under test, its fakes, and ways to drive its loop one message at a time."""

    def __init__(self, base: Path, settings: Settings | None = None,
                 settings_file: Path | None = None,
                 program_version: tuple[str, VersionSource] | None = None) -> None:
        self.clock = FakeClock()
        self.runtime = FakeRuntime()
        self.prober = FakeProber()
        self.notifier = RecordingNotifier()
        self.settings = settings or make_settings(base)
        self.daemon = Daemon(self.settings, settings_file=settings_file, runtime=self.runtime,
                             prober=self.prober, notifier=self.notifier, clock=self.clock,
                             wall=lambda: 5000.0, rand=lambda: 0.5, drain_poll=0.005,
                             versioner=lambda _: program_version)
        handle = self.daemon.handle

        def handle_and_check(message: object) -> None:
            handle(message)
            # Between two messages the owners agree: news reaches them in the same turn.
            m = self.daemon.server.machine
            serving = (m.instance, m.state in (State.RUNNING, State.UNHEALTHY))
            assert self.daemon.models.serving == serving, (message, m.state)

        self.daemon.handle = handle_and_check  # type: ignore[method-assign]

    @property
    def state(self) -> str:
        return self.daemon.status().state.value

    async def start(self) -> int | None:
        return await self.daemon.start()

    async def until(self, cond: Callable[[], bool], what: str, wait: float = 5.0) -> None:
        """Handle messages until ``cond`` holds; fail if none comes for ``wait`` seconds."""
        while not cond():
            if not await self.daemon.process(wait) and not cond():
                raise AssertionError(f"no message for {wait}s while waiting for {what}; "
                                     f"state {self.state}")

    async def settle(self, limit: float = 5.0) -> None:
        """Handle messages until none is queued and the effect worker is idle, or waits for
        something only the test can give (a gated launch, a drain of busy requests)."""
        worker = self.daemon._effects
        deadline = asyncio.get_running_loop().time() + limit
        quiet = 0
        while quiet < 30:
            if self.daemon.queued:
                await self.daemon.process(0)
                quiet = 0
            elif worker.performing is not None and not self.runtime.gated \
                    and not worker.draining:
                # In a worker thread (writing rendered files): wait for it, not a count.
                assert asyncio.get_running_loop().time() < deadline, worker.performing
                await asyncio.sleep(0.001)
                quiet = 0
            else:
                await asyncio.sleep(0)
                quiet += 1

    async def tick(self, seconds: float = 0.0) -> None:
        """Let fake time pass, then the loop's housekeeping runs as it would on a timeout."""
        self.clock.now += seconds
        self.daemon.housekeeping()
        await self.settle()

    async def running(self) -> None:
        await self.until(lambda: self.state == "RUNNING", "RUNNING")

    def signal(self, sig: signal.Signals) -> None:
        self.daemon.post(SignalReceived(sig))

    async def close(self) -> None:
        await self.daemon.close()
