"""The daemon's loop on a fake runtime, a fake prober and a fake clock: boot, adopt, reload,
rejected reload, stop, stop during a launch, crash during a drain, forced shutdown, and random
interleavings of all of these. No sleeps: every step waits for the event it needs."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import jsonschema
import pytest
from daemonkit import CONFIG, Harness, make_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from supervisor.effects import FORCED_STOP_SECONDS
from supervisor.engines.base import Call
from supervisor.policy import Restart, Start, State, Stop
from supervisor.runtime import Instance
from supervisor.status import OPENAPI_FILE, CommandResult, ReloadResult, render_openapi
from supervisor.tinygguf import write_tiny_llama
from supervisor.vocab import RestartReason


@pytest.fixture
async def h(tmp_path: Path):
    harness = Harness(tmp_path)
    yield harness
    await harness.close()


async def reload(h: Harness) -> ReloadResult:
    from supervisor.daemon import ReloadRequest

    reply: asyncio.Future[ReloadResult] = asyncio.get_running_loop().create_future()
    h.daemon.post(ReloadRequest(reply))
    await h.until(reply.done, "reload answer")
    return reply.result()


async def restart(h: Harness, model: str | None = None, force: bool = False) -> CommandResult:
    from supervisor.daemon import RestartRequest

    reply: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
    h.daemon.post(RestartRequest(reply, model=model, force=force))
    await h.until(reply.done, "restart answer")
    return reply.result()


def edit_config(h: Harness, text: str) -> None:
    h.settings.server.model_config_file.write_text(text)


# ---- boot --------------------------------------------------------------------------------


async def test_boot_launches_and_serves(h: Harness) -> None:
    assert await h.start() is None
    await h.running()
    st = h.daemon.status()
    assert h.runtime.launched == ["t1"]
    assert st.instance is not None and st.instance.id == "t1"
    assert st.restarts == 0 and st.restarts_by_reason == {}
    assert st.config.revision is not None
    assert [m.name for m in st.models] == ["tiny-a"] and st.models[0].listed
    assert any(m.startswith("STATUS=RUNNING, revision") for m in h.notifier.sent)


async def test_boot_adopts_an_instance_already_running_the_spec(h: Harness) -> None:
    h.runtime.adoptable = Instance("adopted", "c0ffee", "spec", started_at=4000.0, pid=7)
    await h.start()
    await h.running()
    st = h.daemon.status()
    assert h.runtime.launched == []
    assert st.instance is not None and st.instance.id == "c0ffee"
    # Uptime counts from the instance's own start, not from the supervisor's.
    assert st.uptime_seconds == 1000.0
    assert [e.event for e in st.recent_events] == ["config.applied", "server.adopted",
                                                   "server.ready"]


async def test_invalid_config_at_boot_exits_2_and_launches_nothing(h: Harness) -> None:
    edit_config(h, "- name: tiny-a\n  context_size: huge\n")
    assert await h.start() == 2
    assert h.runtime.launched == []
    assert h.daemon.status().config.rejected is not None


# ---- reload ------------------------------------------------------------------------------


async def test_reload_of_a_changed_config_restarts_onto_it(h: Harness) -> None:
    await h.start()
    await h.running()
    edit_config(h, CONFIG.replace("max_tokens: 16", "max_tokens: 32"))
    result = await reload(h)
    assert result.applied and result.restarting
    await h.until(lambda: h.runtime.launched == ["t1", "t2"] and h.state == "RUNNING",
                  "restart onto the new revision")
    st = h.daemon.status()
    assert st.config.revision == result.revision
    assert st.restarts_by_reason == {RestartReason.CONFIG_CHANGE: 1}
    assert h.runtime.terminated[0][0] == "t1" and h.runtime.live == {"t2"}


async def test_reload_of_an_unchanged_config_restarts_nothing(h: Harness) -> None:
    await h.start()
    await h.running()
    edit_config(h, "# a comment\n" + CONFIG)
    result = await reload(h)
    assert result.applied and not result.restarting
    await h.settle()
    assert h.runtime.launched == ["t1"]


async def test_rejected_reload_keeps_the_running_server(h: Harness) -> None:
    await h.start()
    await h.running()
    revision = h.daemon.status().config.revision
    edit_config(h, "- name: tiny-a\n  parameters: [oops\n")
    result = await reload(h)
    assert not result.applied and result.errors and "invalid YAML" in result.errors[0]
    await h.settle()
    st = h.daemon.status()
    assert st.state is State.RUNNING and h.runtime.launched == ["t1"]
    assert st.config.revision == revision and st.config.rejected is not None
    assert "config change rejected" in h.daemon.status_line()


async def test_reloads_asked_while_a_check_runs_share_the_next_check(h: Harness) -> None:
    from supervisor.daemon import ReloadRequest

    await h.start()
    await h.running()
    checks = h.daemon.status().config.checks
    loop = asyncio.get_running_loop()
    replies: list[asyncio.Future[ReloadResult]] = [loop.create_future() for _ in range(3)]
    for reply in replies:
        h.daemon.post(ReloadRequest(reply))
    await h.until(lambda: all(r.done() for r in replies), "three reload answers")
    assert all(r.result().applied for r in replies)
    # The first starts a check; the two asked while it ran share the one after it.
    assert h.daemon.status().config.checks - checks == 2


# ---- stop --------------------------------------------------------------------------------


async def test_sigterm_stops_the_server_and_exits_0(h: Harness) -> None:
    await h.start()
    await h.running()
    h.signal(signal.SIGTERM)
    await h.until(lambda: h.daemon.exit_code is not None, "exit")
    assert h.daemon.exit_code == 0
    assert h.runtime.live == set()
    assert h.state == "STOPPED"


async def test_stop_during_a_slow_launch_stops_the_launched_instance(h: Harness) -> None:
    gate = asyncio.Event()
    h.runtime.gate = gate
    await h.start()
    await h.until(lambda: h.state == "STARTING", "STARTING")
    await h.settle()
    h.signal(signal.SIGTERM)
    await h.settle()
    assert h.daemon.exit_code is None  # the launch is still in flight: nothing to stop yet
    h.prober.in_flight = 1  # hold the stop in its drain, to look at the machine meanwhile
    gate.set()
    await h.until(lambda: h.runtime.live == {"t1"}, "the launch")
    await h.settle()
    st = h.daemon.status()
    assert st.state is State.STOPPING and st.instance is not None and st.instance.id == "t1"
    h.prober.in_flight = 0
    await h.until(lambda: h.daemon.exit_code is not None, "exit")
    assert h.daemon.exit_code == 0
    assert h.runtime.launched == ["t1"]
    assert h.runtime.terminated[0][0] == "t1"
    assert h.runtime.live == set()
    assert h.state == "STOPPED"


async def test_config_change_during_a_slow_launch_restarts_after_it(h: Harness) -> None:
    gate = asyncio.Event()
    h.runtime.gate = gate
    await h.start()
    await h.until(lambda: h.state == "STARTING", "STARTING")
    edit_config(h, CONFIG.replace("max_tokens: 16", "max_tokens: 32"))
    await reload(h)
    gate.set()
    await h.until(lambda: len(h.runtime.launched) == 2 and h.state == "RUNNING", "RUNNING")
    assert h.runtime.live == {"t2"} and h.runtime.launched_over_live == 0


async def test_crash_during_a_drain_ends_the_drain_and_restarts(h: Harness) -> None:
    h.prober.in_flight = 2
    await h.start()
    await h.running()
    assert (await restart(h)).ok
    await h.settle()
    assert h.state == "STOPPING" and h.runtime.terminated == []  # draining: 2 in flight
    h.runtime.crash()
    await h.until(lambda: h.runtime.launched == ["t1", "t2"], "relaunch")
    h.prober.in_flight = 0
    await h.running()
    st = h.daemon.status()
    assert st.drain.drains == 1 and st.drain.cut_off_requests == 2
    assert st.restarts_by_reason == {RestartReason.OPERATOR: 1}
    assert h.runtime.live == {"t2"}


async def test_second_sigterm_forces_a_fast_exit(h: Harness) -> None:
    h.prober.in_flight = 1  # a request that never finishes
    await h.start()
    await h.running()
    h.signal(signal.SIGTERM)
    await h.settle()
    assert h.state == "STOPPING" and h.daemon.exit_code is None
    h.signal(signal.SIGINT)
    await h.until(lambda: h.daemon.exit_code is not None, "exit")
    assert h.daemon.exit_code == 0
    assert h.runtime.terminated == [("t1", FORCED_STOP_SECONDS)]
    assert h.runtime.live == set()


async def test_shutdown_past_its_deadline_is_forced(h: Harness) -> None:
    h.prober.in_flight = 1
    await h.start()
    await h.running()
    h.signal(signal.SIGTERM)
    await h.settle()
    s = h.settings
    await h.tick(s.health.drain_timeout + s.server.stop_timeout + 5.1)
    await h.until(lambda: h.daemon.exit_code is not None, "exit")
    assert h.runtime.terminated == [("t1", FORCED_STOP_SECONDS)]


async def test_on_stop_leave_exits_without_touching_the_server(tmp_path: Path) -> None:
    from supervisor.settings import OnStop

    settings = make_settings(tmp_path)
    settings = settings.model_copy(update={"supervisor": settings.supervisor.model_copy(
        update={"on_stop": OnStop.LEAVE})})
    h = Harness(tmp_path, settings)
    await h.start()
    await h.running()
    h.signal(signal.SIGTERM)
    await h.until(lambda: h.daemon.exit_code is not None, "exit")
    assert h.runtime.terminated == [] and h.runtime.live == {"t1"}
    await h.close()


# ---- failures ----------------------------------------------------------------------------


async def test_a_crash_is_relaunched_at_once_and_diagnosed_alongside(h: Harness) -> None:
    await h.start()
    await h.running()
    h.runtime.log_gate = gate = asyncio.Event()  # the log read is slow: it must not delay
    h.runtime.crash()
    await h.until(lambda: h.runtime.launched == ["t1", "t2"], "the relaunch")
    assert h.daemon.status().last_failure is None  # not diagnosed yet, relaunched already
    assert h.runtime.log_reads == ["t1"]  # the dead instance's log, not the new one's
    gate.set()
    await h.running()
    await h.until(lambda: h.daemon.status().last_failure is not None, "the diagnosis")
    st = h.daemon.status()
    assert st.last_failure is not None and st.last_failure.cause.value == "model-load-failed"
    assert st.restarts == 1 and st.restarts_by_reason == {RestartReason.CRASH: 1}
    assert st.uptime_seconds is not None


async def test_instance_dying_before_its_launch_reports_back_is_still_a_crash(h: Harness
                                                                             ) -> None:
    h.runtime.die_at_start = True
    await h.start()
    await h.until(lambda: h.runtime.launched == ["t1", "t2"], "the relaunch")
    await h.running()
    assert h.runtime.live == {"t2"}
    assert h.daemon.status().restarts_by_reason == {RestartReason.CRASH: 1}


async def test_launch_failure_is_retried(h: Harness) -> None:
    h.runtime.fail_next = "port 40080 already in use"
    await h.start()
    await h.running()
    st = h.daemon.status()
    assert st.restarts == 0 and st.restarts_by_reason == {}  # the first start, retried


async def test_a_missing_image_gives_up_at_once(h: Harness) -> None:
    h.runtime.fail_next = "image 'localai' not found"
    await h.start()
    await h.until(lambda: h.state == "FATAL", "FATAL")
    assert "retrying cannot help" in h.daemon.status_line() or h.daemon.status().reason
    assert h.runtime.launched == []


async def test_hung_server_is_killed_fast_and_counted_as_a_hang(h: Harness) -> None:
    await h.start()
    await h.running()
    h.prober.alive = False
    for _ in range(h.settings.health.failure_threshold):
        await h.tick(h.settings.health.interval)
    # Killed at once (HUNG_STOP_SECONDS), not after stop_timeout, and relaunched at once.
    await h.until(lambda: h.runtime.terminated == [("t1", 0.0)], "the kill")
    await h.until(lambda: h.runtime.launched == ["t1", "t2"], "the relaunch")
    h.prober.alive = True
    await h.tick(1.0)
    await h.running()
    assert h.daemon.status().restarts_by_reason == {RestartReason.HANG: 1}


async def test_a_hang_is_detected_within_10s_with_the_default_probe_settings(tmp_path: Path
                                                                               ) -> None:
    from supervisor.settings import HealthSection

    defaults = HealthSection()
    h = Harness(tmp_path, make_settings(tmp_path, interval=defaults.interval,
                                        timeout=defaults.timeout,
                                        failure_threshold=defaults.failure_threshold))
    h.prober.clock, h.prober.hang_cost = h.clock, defaults.timeout
    h.runtime.clock = h.clock
    await h.start()
    await h.running()
    await h.tick(0.0)  # a probe cycle just succeeded: the worst moment for a hang to start
    hung_at = h.clock.now
    h.prober.alive = False
    while not h.runtime.terminated:
        await h.tick(0.05)
        assert h.clock.now - hung_at < 30, "never detected"
    detected = h.runtime.terminated_at[0] - hung_at
    print(f"hang detected and killed after {detected:.2f}s")
    assert detected <= 10.0
    await h.close()


async def test_a_paused_container_is_unpaused_at_once_not_replaced(h: Harness) -> None:
    await h.start()
    await h.running()
    h.runtime.pause()
    await h.until(lambda: not h.runtime.paused, "the unpause")
    await h.tick(h.settings.health.interval)
    assert h.runtime.launched == ["t1"] and h.runtime.terminated == []
    st = h.daemon.status()
    assert st.state == "RUNNING" and st.restarts == 0 and st.recent_failures == 0
    assert any(e.event == "container.unpaused" for e in st.recent_events)


async def test_a_container_that_cannot_be_unpaused_is_killed_and_relaunched(h: Harness) -> None:
    await h.start()
    await h.running()
    h.runtime.unpause_fails = "container gone"
    h.runtime.pause()
    await h.until(lambda: h.runtime.launched == ["t1", "t2"], "the relaunch")
    await h.running()
    assert h.runtime.terminated == [("t1", 0.0)]
    assert h.daemon.status().restarts_by_reason == {RestartReason.HANG: 1}


async def test_engine_outage_waits_then_relaunches_without_counting(h: Harness) -> None:
    await h.start()
    await h.running()
    h.runtime.engine(up=False)
    await h.settle()
    h.runtime.crash()  # the engine's shutdown kills it; the die event still came through
    await h.until(lambda: h.state == "WAITING", "WAITING")
    for _ in range(30):  # a long outage: nothing happens, nothing is counted
        await h.tick(10.0)
    st = h.daemon.status()
    assert st.state.value == "WAITING" and st.consecutive_failures == 1
    assert not st.runtime_connected
    h.runtime.engine(up=True)
    await h.until(lambda: h.runtime.launched == ["t1", "t2"], "the relaunch")
    await h.running()
    assert h.daemon.status().runtime_connected


async def test_engine_restart_found_on_reconnect_is_not_a_failure(h: Harness) -> None:
    await h.start()
    await h.running()
    h.runtime.engine(up=False)
    await h.settle()
    h.runtime.engine(up=True, stopped_it=True)
    await h.until(lambda: h.runtime.launched == ["t1", "t2"], "the relaunch")
    await h.running()
    st = h.daemon.status()
    assert st.consecutive_failures == 0 and st.recent_failures == 0
    assert st.restarts_by_reason == {RestartReason.ENGINE_OUTAGE: 1}


async def test_boot_with_the_engine_down_waits_and_starts_when_it_is_back(h: Harness
                                                                          ) -> None:
    h.runtime.engine_down = True
    await h.start()
    await h.until(lambda: h.state == "WAITING", "WAITING")
    h.runtime.engine(up=False)
    await h.settle()
    await h.tick(60.0)
    assert h.state == "WAITING" and h.runtime.launched == []
    h.runtime.engine(up=True)
    await h.running()
    assert h.daemon.status().restarts == 0  # the first start, late: not a restart


async def test_a_server_that_served_is_never_given_up_on(h: Harness) -> None:
    await h.start()
    await h.running()
    for k in range(12):
        h.runtime.crash()
        while len(h.runtime.launched) < k + 2:  # the backoff grows, up to backoff_max
            await h.tick(5.0)
        await h.running()
    st = h.daemon.status()
    assert st.state.value == "RUNNING" and st.restarts == 12
    assert st.crash_looping and st.recent_failures >= 3


# ---- busy is not hung ------------------------------------------------------------------------


async def test_a_model_probe_that_times_out_while_the_model_progresses_is_busy(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, model_probes=True, model_interval=1.0,
                             model_failure_threshold=1)
    h = Harness(tmp_path, settings)
    h.prober.router, h.prober.resident = True, ["tiny-a"]
    await h.start()
    await h.running()
    await h.tick(1.0)
    assert h.daemon.status().models[0].health.value == "healthy"
    h.prober.probes_time_out, h.prober.progress_per_read = True, 1.0  # a long prompt
    for _ in range(10):
        await h.tick(1.0)
    await h.settle()
    st = h.daemon.status()
    assert st.model_restarts == 0 and st.restarts == 0
    assert st.models[0].health.value == "healthy"
    probes = [c for c in h.prober.calls if c.path.startswith("/v1/chat/completions")]
    assert len(probes) >= 5  # it kept being probed, and each time it was busy
    await h.close()


# ---- probes that never churn ---------------------------------------------------------------

TWO_MODELS = CONFIG + CONFIG.replace("tiny-a", "tiny-b")


async def two_models_on_a_router(tmp_path: Path) -> Harness:
    """Running, tiny-a and tiny-b behind a one-model router; model probes every 2 s, idle
    after 5 s."""
    settings = make_settings(tmp_path, model_probes=True, model_interval=2.0, idle_seconds=5.0)
    write_tiny_llama(settings.server.models_dir / "tiny-b.gguf", seed=2, name="tiny-b")
    settings.server.model_config_file.write_text(TWO_MODELS)
    h = Harness(tmp_path, settings)
    h.prober.router = True
    await h.start()
    await h.running()
    return h


async def test_an_hour_of_idleness_causes_no_probe_swaps(tmp_path: Path) -> None:
    h = await two_models_on_a_router(tmp_path)
    swaps_at = []
    for _minute in range(60):
        for _step in range(12):
            await h.tick(5.0)
        swaps_at.append(len(h.prober.swaps))
    # Each model's ability to load is tested once (tiny-a, then tiny-b, which evicts tiny-a,
    # which is then restored); after that, an hour of probing swaps nothing in.
    assert h.prober.swaps == ["tiny-a", "tiny-b", "tiny-a"], h.prober.swaps
    assert swaps_at[-1] == swaps_at[2], swaps_at
    assert h.prober.resident == ["tiny-a"]
    probes = [c for c in h.prober.calls if c.path.startswith("/v1/chat/completions")]
    assert len(probes) > 500  # the loaded model kept being probed, every 2 s
    await h.close()


async def test_a_changed_model_file_is_load_tested_again(tmp_path: Path) -> None:
    h = await two_models_on_a_router(tmp_path)
    for _ in range(24):
        await h.tick(5.0)
    assert h.prober.swaps == ["tiny-a", "tiny-b", "tiny-a"]
    # tiny-b's file is replaced: a new revision of that model, and only that one.
    write_tiny_llama(h.settings.server.models_dir / "tiny-b.gguf", seed=3, name="tiny-b")
    await reload(h)
    await h.until(lambda: len(h.runtime.launched) == 2, "the restart onto the new file")
    await h.running()
    h.prober.resident = ["tiny-a"]
    for _ in range(24):
        await h.tick(5.0)
    assert h.prober.swaps[3:] == ["tiny-b", "tiny-a"], h.prober.swaps
    await h.close()


async def test_no_probe_while_a_load_test_swaps_models(tmp_path: Path) -> None:
    """While the restore after tiny-b's load test swaps tiny-a back in (evicting tiny-b, whose
    requests a real router then answers 500 "proxy error"), no model is probed: before,
    tiny-b was probed then, counted failing for a swap the supervisor itself made."""
    h = await two_models_on_a_router(tmp_path)
    release = asyncio.Event()
    during: list[str] = []
    call = h.prober.call

    async def slow_restore(c: Call, timeout: float) -> tuple[int, str]:
        model = (c.body or {}).get("model")
        if model == "tiny-a" and h.prober.resident == ["tiny-b"] and not release.is_set():
            h.prober.resident = []  # tiny-b's child is being stopped
            await release.wait()
        elif not release.is_set() and h.prober.resident == [] and h.prober.swaps[-1:] == [
                "tiny-b"]:
            during.append(str(model))
            return 500, "proxy error: Could not establish connection"
        return await call(c, timeout)

    h.prober.call = slow_restore  # type: ignore[method-assign]
    for _ in range(8):
        await h.tick(5.0)
        if h.prober.swaps == ["tiny-a", "tiny-b"] and h.prober.resident == []:
            break
    assert h.prober.swaps == ["tiny-a", "tiny-b"] and h.prober.resident == [], h.prober.swaps
    for _ in range(6):  # probes would be due every 2 s
        await h.tick(2.5)
    assert during == []
    release.set()
    for _ in range(4):
        await h.tick(5.0)
    assert h.prober.swaps == ["tiny-a", "tiny-b", "tiny-a"]
    st = h.daemon.status()
    assert {m.name: m.health.value for m in st.models} == {"tiny-a": "healthy",
                                                            "tiny-b": "healthy"}
    await h.close()


# ---- the typed status --------------------------------------------------------------------


def test_openapi_document_is_generated_from_the_models() -> None:
    assert OPENAPI_FILE.read_text() == render_openapi(), (
        "supervisor/openapi.json is stale: run `python -m supervisor.status`")


async def test_status_answers_validate_against_the_openapi_document(h: Harness) -> None:
    doc = json.loads(OPENAPI_FILE.read_text())
    schema = {"$ref": "#/components/schemas/Status", "components": doc["components"]}
    await h.start()
    await h.running()
    h.runtime.crash()
    await h.until(lambda: h.daemon.status().last_failure is not None, "a diagnosed crash")
    jsonschema.validate(h.daemon.status().model_dump(mode="json"), schema)


# ---- random interleavings ----------------------------------------------------------------

OPS = st.lists(st.sampled_from([
    "start", "stop", "restart", "restart-force", "crash", "launch-fails", "launch-slow",
    "release", "tick", "hang", "recover", "busy", "idle", "pause", "engine-down",
    "engine-up", "engine-restarted",
]), min_size=1, max_size=25)


async def _interleave(base: Path, ops: list[str]) -> None:
    h = Harness(base)
    gate: asyncio.Event | None = None
    operator_stopped = False
    await h.start()
    await h.settle()
    for op in ops:
        if op == "start":
            h.daemon.post(Start("operator"))
            operator_stopped = False
        elif op == "stop":
            h.daemon.post(Stop("operator"))
            operator_stopped = True
        elif op in ("restart", "restart-force"):
            h.daemon.post(Restart("operator", force=op == "restart-force"))
            operator_stopped = False
        elif op == "crash" and h.runtime.current is not None:
            h.runtime.crash()
        elif op == "launch-fails":
            h.runtime.fail_next = "boom"
        elif op == "launch-slow" and gate is None:
            gate = h.runtime.gate = asyncio.Event()
        elif op == "release" and gate is not None:
            gate.set()
            gate = None
        elif op == "tick":
            await h.tick(2.0)
        elif op == "hang":
            h.prober.alive = False
        elif op == "recover":
            h.prober.alive = True
        elif op in ("busy", "idle"):
            h.prober.in_flight = 1 if op == "busy" else 0  # busy: stops wait in their drain
        elif op == "pause" and h.runtime.current is not None:
            h.runtime.pause()
        elif op == "engine-down" and not h.runtime.engine_down:
            h.runtime.engine(up=False)
        elif op in ("engine-up", "engine-restarted") and h.runtime.engine_down:
            h.runtime.engine(up=True, stopped_it=op == "engine-restarted")
        await h.settle()
        m = h.daemon.server.machine
        assert h.runtime.launched_over_live == 0, "launched while another instance was alive"
        assert len(h.runtime.live) <= 1
        launch_pending = gate is not None and h.runtime.gate is None
        if m.state in (State.STOPPED, State.BACKOFF, State.WAITING, State.FATAL) \
                and not launch_pending:
            assert h.runtime.live == set(), f"{m.state} with a live instance"
        if not launch_pending:
            assert h.runtime.live <= {m.instance}, "a live instance the machine does not track"
    if gate is not None:
        gate.set()
    h.prober.in_flight = 0
    if h.runtime.engine_down:
        h.runtime.engine(up=True)
    await h.settle()
    for _ in range(10):  # backoffs end and launches succeed: with the engine up, it runs
        await h.tick(120.0)
        if h.daemon.server.machine.state not in (State.BACKOFF, State.WAITING):
            break
    # Unless an operator stopped it (or it never became ready), it is on its way back.
    state = h.daemon.server.machine.state
    assert state in (State.STARTING, State.RUNNING, State.UNHEALTHY, State.STOPPING) or (
        state is State.FATAL and h.daemon.server.machine.unready > 0) or (
        state is State.STOPPED and operator_stopped), state
    h.signal(signal.SIGTERM)
    await h.until(lambda: h.daemon.exit_code is not None, "exit", wait=2.0)
    assert h.runtime.live == set() and h.daemon.server.machine.state is State.STOPPED
    await h.close()


@hsettings(max_examples=150, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_interleavings_never_leave_an_untracked_instance(tmp_path: Path,
                                                                ops: list[str]) -> None:
    asyncio.run(_interleave(tmp_path, ops))


async def test_a_given_up_server_shows_no_model_as_listed_or_loaded(h: Harness) -> None:
    h.prober.router, h.prober.resident = True, ["tiny-a"]
    await h.start()
    await h.running()
    await h.tick(h.settings.health.interval)  # a probe cycle: tiny-a listed and loaded
    (model,) = h.daemon.status().models
    assert model.listed and model.loaded
    h.runtime.fail_next = "image 'localai' not found"  # the relaunch cannot happen
    h.runtime.crash()
    await h.until(lambda: h.state == "FATAL", "FATAL")
    (model,) = h.daemon.status().models
    assert not model.listed and not model.loaded and model.state is None
