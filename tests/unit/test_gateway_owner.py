"""The gateway's owner (fake clock, no sockets), request parsing and socket activation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from daemonkit import FakeClock, FakeProber, Harness, make_settings

from supervisor.engines.llamaserver import LlamaServerEngine
from supervisor.gateway import (
    Arrived,
    Finished,
    GatewayOwner,
    Outcome,
    Ticket,
    UnloadDone,
)
from supervisor.modelconfig import load_model_set
from supervisor.proxy import model_of
from supervisor.scheduler import Refusal
from supervisor.sockets import inherited_fd


def owner(tmp_path: Path, prober: FakeProber | None = None, **gateway: Any
          ) -> tuple[GatewayOwner, FakeClock, list[Any]]:
    base = make_settings(tmp_path, gateway=True)
    settings = base.model_copy(update={"gateway": base.gateway.model_copy(update=gateway)})
    posted: list[Any] = []
    clock = FakeClock()
    gw = GatewayOwner(settings, LlamaServerEngine(), prober or FakeProber(), posted.append,
                      clock, gpu_used=lambda: None)
    config = settings.server.model_config_file
    config.write_text("- name: a\n  parameters:\n    model: tiny-a.gguf\n"
                      "- name: b\n  parameters:\n    model: tiny-a.gguf\n")
    gw.configure(load_model_set(config, settings.server.models_dir), {})
    gw.serving_changed("t1", True, False)
    return gw, clock, posted


async def test_the_hold_ends_on_the_housekeeping_tick_after_max_hold(tmp_path: Path) -> None:
    gw, clock, _ = owner(tmp_path, max_hold=3.0)
    loop = asyncio.get_running_loop()
    replies: dict[int, asyncio.Future[Ticket]] = {}

    def arrive(rid: int, model: str) -> None:
        replies[rid] = loop.create_future()
        gw.on_arrived(Arrived(rid, model, clock(), replies[rid]))

    arrive(1, "a")
    arrive(2, "b")
    clock.now += 1
    arrive(3, "a")
    assert replies[3].done()  # within the hold: admitted
    clock.now += 2.5
    gw.tick(clock())  # the daemon's housekeeping at the hold's end
    arrive(4, "a")
    assert not replies[4].done()  # the hold is over: a admits nothing new
    gw.on_finished(Finished(1, Outcome.COMPLETED, 0.01))
    gw.on_finished(Finished(3, Outcome.COMPLETED, 0.01))
    assert gw.sched.unloading == ("a",)
    assert [r for r in range(1, 5) if replies[r].done()] == [1, 3]


async def test_stopping_serves_what_waits_for_the_loaded_model_until_the_loop_ends(
        tmp_path: Path) -> None:
    """After the stop signal a request waiting for a slot of the loaded model still waits for
    it (the drain serves it); when the loop ends before that (on_stop = leave exits at once),
    the daemon seals the gateway and it is refused supervisor-stopping, not left hanging."""
    gw, clock, _ = owner(tmp_path)
    loop = asyncio.get_running_loop()
    replies: dict[int, asyncio.Future[Ticket]] = {rid: loop.create_future() for rid in range(6)}
    for rid in range(5):  # llama-server's automatic 4 slots: the fifth waits
        gw.on_arrived(Arrived(rid, "a", clock(), replies[rid]))
    gw.stopping()
    assert [r for r in range(5) if replies[r].done()] == [0, 1, 2, 3]
    assert all(replies[r].result().refusal is None for r in range(4))
    gw.seal()
    assert replies[4].result().refusal is Refusal.SUPERVISOR_STOPPING
    gw.on_arrived(Arrived(5, "a", clock(), replies[5]))
    assert replies[5].result().refusal is Refusal.SUPERVISOR_STOPPING


def test_the_model_comes_from_json_multipart_or_query_and_only_for_inference() -> None:
    assert model_of("POST", "/v1/chat/completions", {}, "application/json",
                    b'{"model": "a", "messages": []}') == "a"
    assert model_of("POST", "/v1/chat/completions", {}, "", b'{"model": "a"}') == "a"
    form = (b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n\r\n'
            b'RIFF...\r\n--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
            b'whisper\r\n--XyZ--\r\n')
    assert model_of("POST", "/v1/audio/transcriptions", {}, "multipart/form-data; boundary=XyZ",
                    form) == "whisper"
    assert model_of("POST", "/tts", {"model": "voice"}, "text/plain", b"hello") == "voice"
    assert model_of("GET", "/v1/models", {"model": "a"}, "", b"") is None
    assert model_of("POST", "/backend/shutdown", {}, "application/json",
                    b'{"model": "a"}') is None
    assert model_of("POST", "/v1/chat/completions", {}, "application/json", b"{bad") is None


def test_the_inherited_socket_is_the_one_named_gateway_or_the_only_one() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "control:gateway"}
    assert inherited_fd(env, 42) == 4
    assert inherited_fd({"LISTEN_PID": "42", "LISTEN_FDS": "1"}, 42) == 3
    assert inherited_fd(env, 43) is None  # meant for another process
    assert inherited_fd({}, 42) is None
    assert inherited_fd({"LISTEN_PID": "42", "LISTEN_FDS": "2"}, 42) is None


def test_the_memory_budget_is_the_setting_else_what_nvml_says(tmp_path: Path) -> None:
    from supervisor.gateway import rules_from

    base = make_settings(tmp_path, gateway=True)
    assert rules_from(base, None, {}).memory_budget is None
    assert rules_from(base, None, {}, gpu_total=80 << 30).memory_budget == 80 << 30
    pinned = base.model_copy(update={"server": base.server.model_copy(
        update={"gpu_memory_gb": 24.0, "single_active_backend": False})})
    rules = rules_from(pinned, None, {}, gpu_total=80 << 30)
    assert rules.memory_budget == 24 << 30 and rules.max_resident == 4  # llama-server's default


async def test_per_request_messages_run_the_housekeeping_at_most_every_50_ms(
        tmp_path: Path) -> None:
    from supervisor.daemon import HOT_HOUSEKEEPING_SECONDS

    h = Harness(tmp_path, make_settings(tmp_path, gateway=True))
    runs = []
    real = h.daemon.housekeeping

    def counting() -> None:
        runs.append(h.clock.now)
        real()

    h.daemon.housekeeping = counting  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    h.daemon.handle(Arrived(1, "a", h.clock(), loop.create_future()))
    for rid in range(2, 50):  # a burst within 50 ms: no housekeeping after each
        h.daemon.handle(Arrived(rid, "a", h.clock(), loop.create_future()))
    assert len(runs) == 1
    h.clock.now += HOT_HOUSEKEEPING_SECONDS
    h.daemon.handle(Finished(1, Outcome.COMPLETED, 0.01))
    assert len(runs) == 2


async def test_an_unload_waits_until_no_probe_talks_to_the_model(tmp_path: Path) -> None:
    """A probe that reaches a llama-server child being stopped holds its exit for the
    router's stop-timeout (10 s, seen on the bench): the unload waits for the probe."""
    prober = FakeProber()
    gw, clock, posted = owner(tmp_path, prober)
    loop = asyncio.get_running_loop()
    gw.models_busy(frozenset({"a"}))  # the models owner is probing a
    gw.on_arrived(Arrived(1, "a", clock(), loop.create_future()))
    gw.on_arrived(Arrived(2, "b", clock(), loop.create_future()))
    gw.on_finished(Finished(1, Outcome.COMPLETED, 0.01))
    assert gw.sched.unloading == ("a",)
    await asyncio.sleep(0.01)
    assert not [c for c in prober.calls if c.path == "/models/unload"]
    gw.models_busy(frozenset())  # the probe is over
    for _ in range(100):
        if any(isinstance(m, UnloadDone) for m in posted):
            break
        await asyncio.sleep(0.01)
    assert [c.body for c in prober.calls if c.path == "/models/unload"] == [{"model": "a"}]


async def test_with_on_stop_leave_the_daemon_refuses_what_waits_as_it_exits(
        tmp_path: Path) -> None:
    """on_stop = leave: the loop ends at the stop signal (the server keeps running for the
    next daemon); a request still waiting for a slot is answered 503 supervisor-stopping as
    the daemon closes, not left until its connection is dropped."""
    import signal

    from supervisor.settings import OnStop

    base = make_settings(tmp_path, gateway=True)
    settings = base.model_copy(update={"supervisor": base.supervisor.model_copy(
        update={"on_stop": OnStop.LEAVE})})
    h = Harness(tmp_path, settings)
    await h.start()
    await h.running()
    loop = asyncio.get_running_loop()
    replies: dict[int, asyncio.Future[Ticket]] = {rid: loop.create_future() for rid in range(5)}
    for rid in range(5):  # tiny-a has llama-server's automatic 4 slots: the fifth waits
        h.daemon.post(Arrived(rid, "tiny-a", h.clock(), replies[rid]))
    await h.settle()
    assert [r for r in range(5) if replies[r].done()] == [0, 1, 2, 3]
    h.signal(signal.SIGTERM)
    await h.settle()
    await h.tick(0.1)
    assert h.daemon.exit_code == 0 and not replies[4].done()
    await h.close()
    assert replies[4].result().refusal is Refusal.SUPERVISOR_STOPPING
    assert h.runtime.terminated == []  # left running
