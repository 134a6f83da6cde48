"""Crash and hang recovery: the supervisor against Docker's own restart machinery.

Everything runs in one go against a private dockerd and the llama-server test image
(scripts/build_image.py), on two tiny generated models. Contenders:

- supervisor: the real ``localai-supervisor`` (tests/supervised.py) with the default health and
  restart settings, rendering the llama-server preset itself;
- Docker: a plain ``docker run`` of the same image with the very same arguments and mounts (a
  clone of the supervisor's container), with ``--restart=on-failure``, and for hangs a
  ``HEALTHCHECK`` at Docker's defaults plus an autoheal-style poller.

Measured: SIGKILL of the server's host PID → a chat completion answers again (consecutive
crashes, and crashes 12 s apart so both back-offs reset); SIGSTOP of the host PID → detected
and serving again; ``docker pause`` → serving again; the Docker engine stopped for 20 s →
serving again after it is back (Docker: ``--restart=unless-stopped``); the supervisor's
reaction time to the engine's ``die`` event; its idle memory; model swaps its probes cause
while the server is idle; requests per second of a steady load with and without the
supervisor. Needs root and docker.io.

Usage: .venv/bin/python bench/recovery.py [--reps N] [--skip-hang] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import testbed  # noqa: E402
from supervised import Supervised  # noqa: E402
from testbed import Dockerd, chat, free_port, http_json  # noqa: E402

from supervisor.settings import HealthSection, RestartSection, ServerSection  # noqa: E402
from supervisor.tinygguf import write_tiny_llama  # noqa: E402

MODELS = {"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"}
MODEL = "tiny-a"
POLL = 0.05  # seconds between "serving again?" attempts
# The supervisor's defaults, read from its settings model (Supervised.create sets faster test
# values, so the bench writes the real defaults back).
_H, _R, _S = HealthSection(), RestartSection(), ServerSection()
DEFAULT_HEALTH = {"interval": _H.interval, "timeout": _H.timeout,
                  "failure_threshold": _H.failure_threshold}
DEFAULT_RESTART = {"backoff_initial": _R.backoff_initial, "backoff_max": _R.backoff_max}
DEFAULT_SERVER = {"stop_timeout": _S.stop_timeout}
# Probe churn: model probes every second and "idle" after 2 s, so an hour's worth of chances
# to swap models in fits in the measured window.
MODEL_PROBES = {"model_interval": 1.0, "idle_seconds": 2.0}
OUTAGE_SECONDS = 20.0
IDLE_SECONDS = 60.0
HEALTH_CMD = "wget -q -O /dev/null http://127.0.0.1:8080/health || exit 1"
AUTOHEAL_INTERVAL = 5.0
AUTOHEAL_STOP_TIMEOUT = 10  # autoheal's AUTOHEAL_DEFAULT_STOP_TIMEOUT
DASH = "\u2013"


class Interrupted(Exception):
    """SIGTERM: unwind through the same ``finally`` blocks as Ctrl-C."""


# ---- observation: docker events and the supervisor's log ------------------------------------


@dataclass(frozen=True)
class DockerEvent:
    at_ns: int
    action: str
    name: str


class DockerEvents:
    """Every container event of the private engine, read by one thread for the whole run
    (and across restarts of the engine: it reconnects and asks again since the last event)."""

    def __init__(self, host: str) -> None:
        self._host = host
        self._items: list[DockerEvent] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._client: Any = None
        self._stream: Any = None
        self._thread = threading.Thread(target=self._read, name="docker-events", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        since = int(time.time()) - 1
        while not self._closed.is_set():
            with contextlib.suppress(Exception):  # the engine went away, or close() cut it
                self._client = docker.DockerClient(base_url=self._host, timeout=None)
                self._stream = self._client.events(decode=True, since=since,
                                                   filters={"type": "container"})
                for ev in self._stream:
                    item = DockerEvent(
                        int(ev.get("timeNano", 0)), str(ev.get("Action", "")),
                        str(ev.get("Actor", {}).get("Attributes", {}).get("name", "")))
                    since = item.at_ns // 1_000_000_000
                    with self._lock:
                        if item not in self._items:
                            self._items.append(item)
            self._closed.wait(0.2)

    def first(self, name: str, action: str, after_ns: int, timeout: float = 3.0) -> int | None:
        """timeNano of the first ``action`` (prefix) of container ``name`` at/after ``after_ns``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for ev in self._items:
                    if ev.name == name and ev.at_ns >= after_ns and ev.action.startswith(action):
                        return ev.at_ns
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(Exception):
            self._stream.close()
        with contextlib.suppress(Exception):
            self._client.close()


def iso_ns(text: str) -> int:
    dt = datetime.fromisoformat(text)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def supervisor_log(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(wall-clock ns, event) for every JSON line the supervisor wrote."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            obj = json.loads(line)
            out.append((iso_ns(obj["timestamp"]), obj))
    return out


def first_log(entries: Sequence[tuple[int, dict[str, Any]]], event: str, after_ns: int,
              pred: Callable[[dict[str, Any]], bool] | None = None
              ) -> tuple[int, dict[str, Any]] | None:
    for at, obj in entries:
        if at >= after_ns and obj.get("event") == event and (pred is None or pred(obj)):
            return at, obj
    return None


# ---- contenders -------------------------------------------------------------------------------


class Server(Protocol):
    @property
    def label(self) -> str: ...
    @property
    def container(self) -> str: ...
    @property
    def url(self) -> str: ...

    def gave_up(self) -> str | None:
        """Why waiting for it to serve again is pointless (FATAL), else None."""


@dataclass
class SupervisedServer:
    sup: Supervised
    container: str
    label: str = "supervisor"

    @property
    def url(self) -> str:
        return self.sup.server_url

    def gave_up(self) -> str | None:
        st = self.sup.try_status()
        if st is not None and st["state"] == "FATAL":
            return f"FATAL: {st.get('reason')}"
        return None


@dataclass
class PlainServer:
    container: str
    url: str
    label: str = "docker"

    def gave_up(self) -> str | None:
        return None


def host_pid(client: docker.DockerClient, name: str, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        pid = int(client.api.inspect_container(name)["State"]["Pid"] or 0)
        if pid > 0 or time.monotonic() >= deadline:
            if pid <= 0:
                raise RuntimeError(f"container {name} has no running process")
            return pid
        time.sleep(0.05)


def wait_serving(server: Server, timeout: float, request_timeout: float = 5.0,
                 start: float | None = None) -> tuple[float | None, str]:
    """Seconds from ``start`` (monotonic; default now) until a chat completion answers 200,
    or (None, why not)."""
    start = time.monotonic() if start is None else start
    next_check = start + 0.5
    last = "no attempt"
    while time.monotonic() - start < timeout:
        try:
            code, body = chat(server.url, MODEL, max_tokens=8, timeout=request_timeout)
        except (OSError, http.client.HTTPException) as exc:
            code, body = 0, f"{type(exc).__name__}: {exc}"
        if code == 200:
            return time.monotonic() - start, ""
        last = f"{code} {str(body)[:120]}"
        if time.monotonic() >= next_check:
            next_check += 0.5
            reason = server.gave_up()
            if reason:
                return None, reason
        time.sleep(POLL)
    return None, f"not serving after {timeout:g}s (last: {last})"


# ---- measurements ---------------------------------------------------------------------------


@dataclass
class Crash:
    rep: int
    seconds: float | None
    kill_ns: int
    note: str = ""
    # Breakdown, filled in afterwards from events and logs (seconds).
    parts: dict[str, float] = field(default_factory=dict)
    # The supervisor's own log lines about a crash it did not recover from.
    evidence: list[str] = field(default_factory=list)


def crash_series(client: docker.DockerClient, server: Server, reps: int, pause: float,
                 before: Callable[[], str] | None = None) -> list[Crash]:
    """``reps`` SIGKILLs of the host PID, each ``pause`` s after the previous one answered."""
    out: list[Crash] = []
    for rep in range(1, reps + 1):
        time.sleep(pause)
        note = before() if before else ""
        pid = host_pid(client, server.container)
        kill_ns = time.time_ns()
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        secs, why = wait_serving(server, timeout=150, start=t0)
        out.append(Crash(rep, secs, kill_ns, "; ".join(x for x in (note, why) if x)))
        print(f"  {server.label} crash {rep}: "
              + (f"{secs:.2f}s" if secs is not None else f"NOT RECOVERED ({why})")
              + (f"  [{note}]" if note else ""), flush=True)
        if secs is None:
            break
    return out


def explain_supervisor_crashes(crashes: list[Crash], events: DockerEvents, container: str,
                               log_path: Path) -> None:
    entries = supervisor_log(log_path)
    for c in crashes:
        die = events.first(container, "die", c.kill_ns)
        failed = first_log(entries, "server.failed", c.kill_ns)
        exited = first_log(entries, "server.exited", c.kill_ns)
        fatal = first_log(entries, "server.fatal", c.kill_ns)
        launched = first_log(entries, "server.launched", failed[0]) if failed else None
        if die is not None and failed is not None:
            c.parts["die->decided_ms"] = (failed[0] - die) / 1e6
        if die is not None and exited is not None:
            c.parts["die->diagnosed_ms"] = (exited[0] - die) / 1e6
        if failed is not None:
            m = re.search(r"retrying in ([0-9.]+)s", str(failed[1].get("reason", "")))
            if m:
                c.parts["backoff_s"] = float(m.group(1))
        if failed is not None and launched is not None:
            c.parts["decided->launched_s"] = (launched[0] - failed[0]) / 1e9
        if launched is not None and c.seconds is not None:
            c.parts["launched->serving_s"] = (c.kill_ns + c.seconds * 1e9 - launched[0]) / 1e9
        if c.seconds is None:
            c.evidence = [json.dumps(obj) for at, obj in entries if at >= c.kill_ns
                          and str(obj.get("event", "")).startswith("server.")][:6]
        if fatal is not None and c.seconds is None:
            c.note = f"server.fatal: {fatal[1].get('reason')}"
            if die is not None:
                c.parts["die->fatal_ms"] = (fatal[0] - die) / 1e6


def explain_docker_crashes(crashes: list[Crash], events: DockerEvents, container: str,
                           client: docker.DockerClient) -> None:
    for c in crashes:
        die = events.first(container, "die", c.kill_ns)
        start = events.first(container, "start", die) if die is not None else None
        if die is not None and start is not None:
            c.parts["die->start_s"] = (start - die) / 1e9
            if c.seconds is not None:
                c.parts["start->serving_s"] = (c.kill_ns + c.seconds * 1e9 - start) / 1e9
    count = client.api.inspect_container(container)["RestartCount"]
    if crashes:
        crashes[-1].note = (crashes[-1].note + f" RestartCount={count}").strip()


@dataclass
class Hang:
    seconds: float | None
    detected: float | None
    note: str = ""
    parts: dict[str, float] = field(default_factory=dict)


def hang_once(client: docker.DockerClient, server: Server, timeout: float) -> tuple[Hang, int]:
    """SIGSTOP the host PID, wait until a chat completion answers again; always SIGCONT."""
    pid = host_pid(client, server.container)
    stop_ns = time.time_ns()
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        secs, why = wait_serving(server, timeout=timeout, start=t0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    print(f"  {server.label} hang: "
          + (f"{secs:.1f}s" if secs is not None else f"NOT RECOVERED ({why})"), flush=True)
    return Hang(secs, None, why), stop_ns


def explain_supervisor_hang(h: Hang, stop_ns: int, log_path: Path) -> None:
    entries = supervisor_log(log_path)
    marks = {
        "first probe.failed": first_log(entries, "probe.failed", stop_ns),
        "server.failed (detected)": first_log(entries, "server.failed", stop_ns),
        "server.terminated": first_log(entries, "server.terminated", stop_ns),
        "server.launched": first_log(entries, "server.launched", stop_ns),
    }
    for name, hit in marks.items():
        if hit is not None:
            h.parts[name] = (hit[0] - stop_ns) / 1e9
    h.detected = h.parts.get("server.failed (detected)")
    failed = marks["server.failed (detected)"]
    if failed is not None:
        h.note = str(failed[1].get("reason", ""))


def explain_docker_hang(h: Hang, stop_ns: int, events: DockerEvents, container: str) -> None:
    marks = {
        "health_status: unhealthy (detected)": events.first(
            container, "health_status: unhealthy", stop_ns),
        "restart begins (kill)": events.first(container, "kill", stop_ns),
        "die": events.first(container, "die", stop_ns),
        "start": events.first(container, "start", stop_ns),
    }
    for name, at in marks.items():
        if at is not None:
            h.parts[name] = (at - stop_ns) / 1e9
    h.detected = h.parts.get("health_status: unhealthy (detected)")


def pause_once(client: docker.DockerClient, server: Server) -> tuple[float, bool]:
    """docker pause the server's container: (seconds until a chat completion answers again,
    whether the container was restarted for it, as seen 1 s after that answer)."""
    started = client.containers.get(server.container).attrs["State"]["StartedAt"]
    t0 = time.monotonic()
    client.containers.get(server.container).pause()
    took, why = wait_serving(server, timeout=300, start=t0)
    with contextlib.suppress(docker.errors.APIError):
        if client.containers.get(server.container).status == "paused":
            client.containers.get(server.container).unpause()
    if took is None:
        raise RuntimeError(f"{server.label} not serving after docker pause: {why}")
    time.sleep(1.0)
    restarted = client.containers.get(server.container).attrs["State"]["StartedAt"] != started
    print(f"  {server.label} pause: serving again after {took:.2f}s"
          f"{', restarted' if restarted else ', not restarted'}", flush=True)
    return took, restarted


def proc_rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def watch_loads(url: str, seconds: float) -> list[tuple[float, str]]:
    """Poll the router's /models every 0.25 s for ``seconds``; when each model began loading
    (what is loaded at the first poll is where it starts, not a load)."""
    loads: list[tuple[float, str]] = []
    before: dict[str, str] | None = None
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            code, body = http_json("GET", f"{url}/models", timeout=2)
            if code == 200 and isinstance(body, dict):
                now = {m["id"]: m["status"]["value"] for m in body["data"]}
                for name, state in now.items():
                    if before is not None and state in ("loading", "loaded") and before.get(
                            name) not in ("loading", "loaded"):
                        loads.append((time.monotonic() - t0, name))
                before = now
        time.sleep(0.25)
    return loads


class Autoheal:
    """What willfarrell/autoheal does: every 5 s restart the unhealthy labelled containers."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.restarts: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autoheal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(AUTOHEAL_INTERVAL):
            ps = subprocess.run(
                ["docker", "-H", self.host, "ps", "-q", "--filter", "label=autoheal=true",
                 "--filter", "health=unhealthy"],
                capture_output=True, text=True, check=False, timeout=30)
            for cid in ps.stdout.split():
                self.restarts.append((time.monotonic(), cid))
                subprocess.run(["docker", "-H", self.host, "restart", "-t",
                                str(AUTOHEAL_STOP_TIMEOUT), cid],
                               capture_output=True, check=False, timeout=120)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(60)


@dataclass
class Load:
    ok: int
    errors: int
    seconds: float
    container_cpu_s: float
    supervisor_cpu_s: float | None = None

    @property
    def rps(self) -> float:
        return self.ok / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        """Server and supervisor CPU per answered request: what the probes add to each
        request, and far less sensitive than req/s to other work sharing the cores."""
        return 1000 * (self.container_cpu_s + (self.supervisor_cpu_s or 0.0)) / max(self.ok, 1)


def foreign_activity(own: set[int]) -> list[str]:
    """Other test runs on this machine (dockerd, pytest, supervisors we did not start): they
    share the cores and make load numbers noisy."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in own:
            continue
        with contextlib.suppress(OSError):
            argv = (d / "cmdline").read_bytes().split(b"\0")
            names = " ".join(Path(a.decode(errors="replace")).name for a in argv[:3])
            if re.search(r"\b(dockerd|pytest|localai-supervisor)\b", names):
                found.append(f"{d.name} {names.strip()}"[:80])
    return found


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def container_cpu_seconds(client: docker.DockerClient, name: str) -> float:
    stats = client.api.stats(name, stream=False, one_shot=True)
    return int(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9


def steady_load(client: docker.DockerClient, server: Server, seconds: float, threads: int,
                sup_pid: int | None = None) -> Load:
    """``threads`` clients doing chat completions (max_tokens 8) back to back for ``seconds``."""
    counts = [[0, 0] for _ in range(threads)]

    def user(i: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                code, _ = chat(server.url, MODEL, max_tokens=8, timeout=30)
            except (OSError, http.client.HTTPException):
                code = 0
            counts[i][0 if code == 200 else 1] += 1

    sup0 = proc_cpu_seconds(sup_pid) if sup_pid else None
    srv0 = container_cpu_seconds(client, server.container)
    start = time.monotonic()
    users = [threading.Thread(target=user, args=(i, start + seconds), daemon=True)
             for i in range(threads)]
    for t in users:
        t.start()
    for t in users:
        t.join()
    elapsed = time.monotonic() - start
    srv = container_cpu_seconds(client, server.container) - srv0
    sup = proc_cpu_seconds(sup_pid) - sup0 if sup_pid and sup0 is not None else None
    return Load(sum(c[0] for c in counts), sum(c[1] for c in counts), elapsed, srv, sup)


# ---- the run ------------------------------------------------------------------------------------


@dataclass
class Results:
    sup_consecutive: list[Crash] = field(default_factory=list)
    sup_spaced: list[Crash] = field(default_factory=list)
    dock_consecutive: list[Crash] = field(default_factory=list)
    dock_spaced: list[Crash] = field(default_factory=list)
    sup_hangs: list[Hang] = field(default_factory=list)
    dock_hangs: list[Hang] = field(default_factory=list)
    sup_load: list[Load] = field(default_factory=list)
    plain_load: list[Load] = field(default_factory=list)
    # Seconds from the engine answering again to a chat completion answering.
    sup_outage: list[float] = field(default_factory=list)
    dock_outage: list[float] = field(default_factory=list)
    sup_outage_failures: int | None = None
    # docker pause -> a chat completion answers again.
    sup_pause: list[float] = field(default_factory=list)
    dock_pause: list[float] = field(default_factory=list)
    # How many of those pauses ended in a restart of the container (models loaded again).
    sup_pause_restarts: int = 0
    dock_pause_restarts: int = 0
    # The supervisor's RSS after IDLE_SECONDS of serving idle, and its peak, in MB.
    rss_mb: float | None = None
    rss_peak_mb: float | None = None
    # Loads the probes caused while nobody used the server, in the first half and the rest.
    churn_seconds: float = 0.0
    churn_loads: list[tuple[float, str]] = field(default_factory=list)
    # The probes' own load tests and restores, in seconds from the supervisor's start.
    churn_tests: list[tuple[float, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Bench:
    """Owns every container, supervisor and thread it starts, and removes them in close()."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="lsv-bench-"))
        self.dockerd: Dockerd | None = None
        self.events: DockerEvents | None = None
        self.supervisors: list[Supervised] = []
        self.autoheal: Autoheal | None = None
        self.image = ""
        self.models_dir = self.tmp / "models"
        self.results = Results()
        self._n = 0
        self._shown: set[tuple[bool, str]] = set()

    # -- setup and teardown -----------------------------------------------------------------

    def open(self) -> None:
        self.models_dir.mkdir()
        for seed, name in enumerate(MODELS, start=1):
            write_tiny_llama(self.models_dir / MODELS[name], seed=seed, name=name)
        llama_dir = testbed.llama_server_dir()
        self.dockerd = Dockerd.start()  # on a bridge of its own
        self.image = testbed.build_image(llama_dir, self.dockerd.host)
        self.events = DockerEvents(self.dockerd.host)

    def close(self) -> None:
        if self.autoheal is not None:
            self.autoheal.close()
        for sup in self.supervisors:
            with contextlib.suppress(Exception):
                sup.stop(timeout=40)
            if sup.proc is not None and sup.proc.poll() is None:
                sup.kill()
        if self.events is not None:
            self.events.close()
        if self.dockerd is not None:
            self.dockerd.stop()  # removes every container first
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def host(self) -> str:
        assert self.dockerd is not None
        return self.dockerd.host

    @property
    def client(self) -> docker.DockerClient:
        assert self.dockerd is not None
        return self.dockerd.client()

    def name(self, what: str) -> str:
        self._n += 1
        return f"bench-{what}-{self._n}"

    def remove(self, container: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.containers.get(container).remove(force=True)

    @contextlib.contextmanager
    def supervised(self, what: str, **sections: dict[str, Any]) -> Iterator[SupervisedServer]:
        container = self.name(what)
        sup = Supervised.create(
            self.tmp / container, self.models_dir, dict(MODELS),
            supervisor={"log_level": "info"},
            server={"runtime": "docker", "listen_port": 8080, **DEFAULT_SERVER},
            docker={"host": self.host, "image": self.image, "container_name": container,
                    "gpus": "none"},
            health={**DEFAULT_HEALTH, **sections.pop("health", {})},
            restart={**DEFAULT_RESTART, **sections.pop("restart", {})},
            **sections,
        )
        self.supervisors.append(sup)
        server = SupervisedServer(sup, container)
        try:
            sup.start()
            sup.wait_running(timeout=120)
            secs, why = wait_serving(server, timeout=120)
            if secs is None:
                raise RuntimeError(f"supervised server never answered: {why}\n{sup.logs()}")
            yield server
        finally:
            with contextlib.suppress(Exception):
                sup.stop(timeout=40)
            self.supervisors.remove(sup)
            self.remove(container)

    def plain_command(self, template: dict[str, Any], name: str, port: int,
                      healthcheck: bool, restart: str = "on-failure") -> list[str]:
        """``docker run`` of the supervisor's container: same image, arguments, env, mounts."""
        image_env = set(self.client.images.get(self.image).attrs["Config"].get("Env") or [])
        cmd = ["docker", "-H", self.host, "run", "-d", "--name", name,
               f"--restart={restart}", "-p", f"127.0.0.1:{port}:8080"]
        for env in template["Config"].get("Env") or []:
            if env not in image_env:
                cmd += ["-e", env]
        for m in template["HostConfig"].get("Mounts") or []:
            cmd += ["--mount", f"type=bind,source={m['Source']},target={m['Target']}"
                    + (",readonly" if m.get("ReadOnly") else "")]
        if healthcheck:
            cmd += ["--health-cmd", HEALTH_CMD, "--label", "autoheal=true"]
        return [*cmd, self.image, *template["Config"]["Cmd"]]

    @contextlib.contextmanager
    def plain(self, what: str, template: dict[str, Any], healthcheck: bool = False,
              restart: str = "on-failure") -> Iterator[PlainServer]:
        name = self.name(what)
        port = free_port()
        cmd = self.plain_command(template, name, port, healthcheck, restart)
        if (healthcheck, restart) not in self._shown:  # the command once per kind
            self._shown.add((healthcheck, restart))
            print("  $ docker " + " ".join(cmd[3:]), flush=True)
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            server = PlainServer(name, f"http://127.0.0.1:{port}")
            secs, why = wait_serving(server, timeout=120)
            if secs is None:
                raise RuntimeError(f"plain container never answered: {why}")
            yield server
        finally:
            self.remove(name)

    # -- phases -------------------------------------------------------------------------------

    def run(self) -> None:
        a, r = self.args, self.results
        assert self.events is not None
        print(f"\n== probe overhead: {a.load_threads} clients, max_tokens 8, "
              f"{a.load_seconds:g}s per window, {a.load_rounds} round(s), alternating "
              "supervisor-plain / plain-supervisor", flush=True)
        template = self.load_supervised(1)
        self.load_plain(1, template)
        for rnd in range(2, a.load_rounds + 1):
            if rnd % 2 == 0:
                self.load_plain(rnd, template)
                self.load_supervised(rnd)
            else:
                self.load_supervised(rnd)
                self.load_plain(rnd, template)

        print(f"\n== crash, consecutive: {a.reps} SIGKILLs, each {a.settle:g}s after the "
              "previous one answered (supervisor: default settings)", flush=True)
        with self.supervised("crash") as s:
            r.sup_consecutive = crash_series(self.client, s, a.reps, a.settle,
                                             self.failures_note(s))
            time.sleep(0.5)
            explain_supervisor_crashes(r.sup_consecutive, self.events, s.container,
                                       s.sup.log_path)
        with self.plain("crash", template) as p:
            r.dock_consecutive = crash_series(self.client, p, a.reps, a.settle)
            explain_docker_crashes(r.dock_consecutive, self.events, p.container, self.client)

        print(f"\n== crash, spaced: {a.reps} SIGKILLs, each {a.spacing:g}s after the previous "
              "one answered (both back-offs reset after 10 s of running; defaults)", flush=True)
        with self.supervised("spaced") as s:
            r.sup_spaced = crash_series(self.client, s, a.reps, a.spacing, self.failures_note(s))
            time.sleep(0.5)
            explain_supervisor_crashes(r.sup_spaced, self.events, s.container, s.sup.log_path)
        with self.plain("spaced", template) as p:
            r.dock_spaced = crash_series(self.client, p, a.reps, a.spacing)
            explain_docker_crashes(r.dock_spaced, self.events, p.container, self.client)

        print(f"\n== idle: {IDLE_SECONDS:g}s of serving nobody; then the probes' model loads "
              f"over {a.churn_seconds:g}s (model probes every 1 s, idle after 2 s)", flush=True)
        with self.supervised("idle") as s:
            assert s.sup.proc is not None
            time.sleep(IDLE_SECONDS)
            r.rss_mb, r.rss_peak_mb = proc_rss_mb(s.sup.proc.pid)
            print(f"  supervisor RSS after {IDLE_SECONDS:g}s idle: {r.rss_mb:.1f} MB "
                  f"(peak {r.rss_peak_mb:.1f} MB)", flush=True)
        with self.supervised("churn", health=MODEL_PROBES) as s:
            r.churn_seconds = a.churn_seconds
            r.churn_loads = watch_loads(s.url, a.churn_seconds)
            entries = supervisor_log(s.sup.log_path)
            start = entries[0][0] if entries else 0
            r.churn_tests = [((at - start) / 1e9, str(obj.get("model")))
                             for at, obj in entries
                             if obj.get("event") in ("model.load_tested", "model.restored")]
            print("  loads the probes caused, from the supervisor's start: "
                  + (", ".join(f"{m} at {t:.1f}s" for t, m in r.churn_tests) or "none"),
                  flush=True)
            print(f"  model loads seen in the next {a.churn_seconds:g}s of idleness: "
                  f"{len(r.churn_loads)} "
                  + ", ".join(f"{m} at {t:.1f}s" for t, m in r.churn_loads), flush=True)

        print(f"\n== docker pause, {a.pause_reps} repetition(s) (Docker: HEALTHCHECK at "
              "its defaults + autoheal every 5 s)", flush=True)
        with self.supervised("pause") as s:
            for _ in range(a.pause_reps):
                took, restarted = pause_once(self.client, s)
                r.sup_pause.append(took)
                r.sup_pause_restarts += restarted
        self.autoheal = Autoheal(self.host)
        try:
            with self.plain("pause", template, healthcheck=True) as p:
                for _ in range(a.pause_reps):
                    took, restarted = pause_once(self.client, p)
                    r.dock_pause.append(took)
                    r.dock_pause_restarts += restarted
        finally:
            self.autoheal.close()
            self.autoheal = None

        print(f"\n== the Docker engine stopped for {OUTAGE_SECONDS:g}s and started again "
              "(Docker: --restart=unless-stopped)", flush=True)
        with self.supervised("outage") as s:
            r.sup_outage.append(self.outage_once(s))
            st = s.sup.try_status()
            r.sup_outage_failures = None if st is None else int(st["recent_failures"])
        with self.plain("outage", template, restart="unless-stopped") as p:
            r.dock_outage.append(self.outage_once(p))

        if a.skip_hang:
            return
        print(f"\n== hang: SIGSTOP of the host PID, {a.hang_reps} repetition(s) "
              "(the Docker side takes about 3 minutes each)", flush=True)
        for _ in range(a.hang_reps):
            with self.supervised("hang") as s:
                time.sleep(1.0)
                h, stop_ns = hang_once(self.client, s, timeout=300)
                time.sleep(0.5)
                explain_supervisor_hang(h, stop_ns, s.sup.log_path)
                r.sup_hangs.append(h)
        self.autoheal = Autoheal(self.host)
        try:
            for _ in range(a.hang_reps):
                with self.plain("hang", template, healthcheck=True) as p:
                    time.sleep(1.0)
                    h, stop_ns = hang_once(self.client, p, timeout=400)
                    explain_docker_hang(h, stop_ns, self.events, p.container)
                    r.dock_hangs.append(h)
        finally:
            self.autoheal.close()
            self.autoheal = None

    def outage_once(self, server: Server) -> float:
        """Stop dockerd for OUTAGE_SECONDS; seconds from it answering again to serving."""
        assert self.dockerd is not None
        back = self.dockerd.restart(down_for=OUTAGE_SECONDS)
        took, why = wait_serving(server, timeout=120, start=back)
        if took is None:
            raise RuntimeError(f"{server.label} not serving after the engine came back: {why}")
        print(f"  {server.label}: serving {took:.2f}s after the engine answered again",
              flush=True)
        return took

    def load_supervised(self, rnd: int) -> dict[str, Any]:
        """One load window against a supervised server; returns its container's inspect."""
        self.warn_foreign()
        with self.supervised("load") as s:
            template: dict[str, Any] = self.client.api.inspect_container(s.container)
            assert s.sup.proc is not None
            load = steady_load(self.client, s, self.args.load_seconds, self.args.load_threads,
                               s.sup.proc.pid)
        self.results.sup_load.append(load)
        print(f"  round {rnd} supervisor: {load.rps:.2f} req/s, "
              f"{load.cpu_ms_per_request:.2f} CPU ms/request", flush=True)
        return template

    def load_plain(self, rnd: int, template: dict[str, Any]) -> None:
        self.warn_foreign()
        with self.plain("load", template) as p:
            load = steady_load(self.client, p, self.args.load_seconds, self.args.load_threads)
        self.results.plain_load.append(load)
        print(f"  round {rnd} plain container: {load.rps:.2f} req/s, "
              f"{load.cpu_ms_per_request:.2f} CPU ms/request", flush=True)

    def warn_foreign(self) -> None:
        own = {os.getpid(), *(s.proc.pid for s in self.supervisors if s.proc is not None)}
        if self.dockerd is not None and self.dockerd.proc is not None:
            own.add(self.dockerd.proc.pid)
        others = foreign_activity(own)
        if others:
            note = f"other test runs shared the machine: {'; '.join(others)}"
            if note not in self.results.notes:
                print(f"  NOTE: {note}", flush=True)
                self.results.notes.append(note)

    @staticmethod
    def failures_note(s: SupervisedServer) -> Callable[[], str]:
        def note() -> str:
            st = s.sup.try_status()
            if st is None:
                return ""
            return f"{st.get('state')}, consecutive_failures={st.get('consecutive_failures')}"
        return note


# ---- report ---------------------------------------------------------------------------------


def secs(values: Sequence[float]) -> str:
    if not values:
        return "—"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f} s"
    return f"{med:.2f} s ({min(values):.2f}{DASH}{max(values):.2f}, n={len(values)})"


def ratio(a: Sequence[float], b: Sequence[float]) -> str:
    if not a or not b:
        return "—"
    return f"{statistics.median(a) / statistics.median(b):.2f}"


def paired(x: list[Crash], y: list[Crash]) -> tuple[list[float], list[float]]:
    """Seconds of the repetitions where both contenders served again."""
    xs, ys = [], []
    for a, b in zip(x, y, strict=False):
        if a.seconds is not None and b.seconds is not None:
            xs.append(a.seconds)
            ys.append(b.seconds)
    return xs, ys


def crash_row(what: str, sup: list[Crash], dock: list[Crash]) -> str:
    xs, ys = paired(sup, dock)
    lost = [c for c in sup if c.seconds is None]
    cell = secs([c.seconds for c in sup if c.seconds is not None])
    if lost:
        cell += f"; crash {lost[0].rep}: not recovered ({lost[0].note.split(':')[0]})"
    return (f"| {what} | {cell} | {secs([c.seconds for c in dock if c.seconds is not None])} "
            f"| {ratio(xs, ys)}{'' if len(xs) == len(dock) else f' (reps 1{DASH}{len(xs)})'} |")


def print_raw(r: Results) -> None:
    print("\n### Raw numbers\n")
    for title, series in (("crash, consecutive, supervisor", r.sup_consecutive),
                          ("crash, consecutive, docker", r.dock_consecutive),
                          ("crash, spaced, supervisor", r.sup_spaced),
                          ("crash, spaced, docker", r.dock_spaced)):
        print(f"{title}:")
        for c in series:
            parts = "  ".join(f"{k} {v:.3f}" for k, v in c.parts.items())
            got = f"{c.seconds:.3f}s" if c.seconds is not None else "not recovered"
            print(f"  rep {c.rep}: {got}  {parts}" + (f"  [{c.note}]" if c.note else ""))
            for line in c.evidence:
                print(f"    supervisor log: {line}")
    for title, hangs in (("hang, supervisor", r.sup_hangs), ("hang, docker", r.dock_hangs)):
        for i, h in enumerate(hangs, 1):
            got = f"{h.seconds:.2f}s" if h.seconds is not None else "not recovered"
            parts = "  ".join(f"{k} {v:.2f}" for k, v in h.parts.items())
            print(f"{title} rep {i}: serving again {got}; since SIGSTOP: {parts}"
                  + (f"  [{h.note}]" if h.note else ""))
    for title, loads in (("load, supervisor", r.sup_load), ("load, plain", r.plain_load)):
        for i, ld in enumerate(loads, 1):
            cpu = "" if ld.supervisor_cpu_s is None else (
                f", supervisor CPU {ld.supervisor_cpu_s:.2f}s "
                f"({100 * ld.supervisor_cpu_s / ld.seconds:.1f}% of one core)")
            print(f"{title} round {i}: {ld.ok} ok / {ld.errors} errors in {ld.seconds:.1f}s "
                  f"= {ld.rps:.2f} req/s; container CPU {ld.container_cpu_s:.2f}s{cpu}; "
                  f"{ld.cpu_ms_per_request:.3f} CPU ms/request")
    pairs = list(zip(r.sup_load, r.plain_load, strict=False))
    if pairs:
        print("load, supervisor/plain per round: req/s "
              + ", ".join(f"{a.rps / b.rps:.3f}" for a, b in pairs) + "; CPU ms/request "
              + ", ".join(f"{a.cpu_ms_per_request / b.cpu_ms_per_request:.3f}" for a, b in pairs))
    for note in r.notes:
        print(f"NOTE: {note}")


def print_summary(r: Results, args: argparse.Namespace, image: str) -> None:
    print(f"\n### Recovery: supervisor vs Docker ({os.cpu_count()} cores, {image}, "
          f"{platform.release()})\n")
    print("| what | supervisor | Docker | ratio supervisor/Docker |")
    print("|---|---|---|---|")
    print(crash_row(f"SIGKILL → chat answers again, {len(r.sup_consecutive)} consecutive "
                    f"crashes {args.settle:g} s apart (defaults)",
                    r.sup_consecutive, r.dock_consecutive))
    print(crash_row(f"SIGKILL → chat answers again, {len(r.sup_spaced)} crashes "
                    f"{args.spacing:g} s apart (both back-offs reset; defaults)",
                    r.sup_spaced, r.dock_spaced))
    if r.sup_outage or r.dock_outage:
        lost = ("" if r.sup_outage_failures is None else
                f"; failures counted: {r.sup_outage_failures}")
        print(f"| Docker engine stopped {OUTAGE_SECONDS:g} s → chat answers again, from the "
              f"engine answering (Docker: --restart=unless-stopped) | {secs(r.sup_outage)}{lost} "
              f"| {secs(r.dock_outage)} | {ratio(r.sup_outage, r.dock_outage)} |")
    if r.sup_pause or r.dock_pause:
        print(f"| docker pause → chat answers again (Docker: HEALTHCHECK defaults + autoheal "
              f"every 5 s) | {secs(r.sup_pause)}; restarted {r.sup_pause_restarts} of "
              f"{len(r.sup_pause)} | {secs(r.dock_pause)}; restarted {r.dock_pause_restarts} of "
              f"{len(r.dock_pause)} | {ratio(r.sup_pause, r.dock_pause)} |")
    if r.sup_hangs or r.dock_hangs:
        sd = [h.detected for h in r.sup_hangs if h.detected is not None]
        dd = [h.detected for h in r.dock_hangs if h.detected is not None]
        ss = [h.seconds for h in r.sup_hangs if h.seconds is not None]
        ds = [h.seconds for h in r.dock_hangs if h.seconds is not None]
        print(f"| SIGSTOP → hang detected (supervisor: server.failed; Docker: "
              f"health_status unhealthy) | {secs(sd)} | {secs(dd)} | {ratio(sd, dd)} |")
        print(f"| SIGSTOP → chat answers again (Docker: HEALTHCHECK defaults + autoheal "
              f"every 5 s) | {secs(ss)} | {secs(ds)} | {ratio(ss, ds)} |")
    det = [c.parts["die->decided_ms"] for c in (*r.sup_consecutive, *r.sup_spaced)
           if "die->decided_ms" in c.parts]
    if det:
        print(f"| engine `die` event → supervisor's decision (`server.failed`) | "
              f"{statistics.median(det):.0f} ms ({min(det):.0f}{DASH}{max(det):.0f}, n={len(det)})"
              " | — | — |")
    sl, pl = [x.rps for x in r.sup_load], [x.rps for x in r.plain_load]
    rounds = [a / b for a, b in zip(sl, pl, strict=False) if b]
    if rounds:
        spread = f" (rounds {min(rounds):.2f}{DASH}{max(rounds):.2f})" if len(rounds) > 1 else ""
        print(f"| steady load, {args.load_threads} clients, max_tokens 8, req/s, median of "
              f"{len(rounds)} alternated {args.load_seconds:g} s rounds (Docker column: plain "
              f"container, no probes; ratio: median of per-round ratios) | "
              f"{statistics.median(sl):.1f} | {statistics.median(pl):.1f} | "
              f"{statistics.median(rounds):.3f}{spread} |")
    sc = [x.cpu_ms_per_request for x in r.sup_load]
    pc = [x.cpu_ms_per_request for x in r.plain_load]
    per = [a / b for a, b in zip(sc, pc, strict=False) if b]
    if per:
        spread = f" (rounds {min(per):.2f}{DASH}{max(per):.2f})" if len(per) > 1 else ""
        print(f"| CPU per answered request under that load (server container + supervisor), "
              f"ms | {statistics.median(sc):.2f} | {statistics.median(pc):.2f} | "
              f"{statistics.median(per):.3f}{spread} |")
    cpu = [x.supervisor_cpu_s / x.seconds for x in r.sup_load if x.supervisor_cpu_s is not None]
    if cpu:
        print(f"| supervisor's own CPU during that load | {100 * statistics.median(cpu):.1f}% "
              "of one core | — | — |")
    if r.rss_mb is not None:
        print(f"| supervisor's RSS after {IDLE_SECONDS:g} s serving idle (docker runtime) | "
              f"{r.rss_mb:.1f} MB (peak {r.rss_peak_mb:.1f} MB) | — | — |")
    if r.churn_seconds:
        first = ", ".join(f"{m} {t:.0f} s" for t, m in r.churn_tests) or "none"
        print(f"| model loads the probes caused, model probes every 1 s, idle after 2 s: at "
              f"start (the once-per-revision load tests and the restore) / in the next "
              f"{r.churn_seconds:g} s idle | {len(r.churn_tests)} ({first}) / "
              f"{len(r.churn_loads)} | — | — |")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5, help="crashes per series (default 5)")
    p.add_argument("--hang-reps", type=int, default=1, help="hangs per contender (default 1)")
    p.add_argument("--skip-hang", action="store_true", help="skip the hang measurement")
    p.add_argument("--quick", action="store_true",
                   help="--reps 2 --skip-hang --load-seconds 10 --load-rounds 2")
    p.add_argument("--load-seconds", type=float, default=20.0)
    p.add_argument("--load-threads", type=int, default=4)
    p.add_argument("--load-rounds", type=int, default=4,
                   help="pairs of supervised/plain load windows, order alternated (default 4)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="pause between answering again and the next consecutive crash")
    p.add_argument("--spacing", type=float, default=12.0,
                   help="pause before each spaced crash (both back-offs reset after 10 s)")
    p.add_argument("--pause-reps", type=int, default=3, help="docker pauses per contender")
    p.add_argument("--churn-seconds", type=float, default=120.0,
                   help="how long to watch for model loads the probes cause while idle")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.skip_hang, args.load_seconds, args.load_rounds = 2, True, 10.0, 2
        args.pause_reps, args.churn_seconds = 1, 30.0
    return args


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("needs root: the bench starts its own dockerd", file=sys.stderr)
        return 2
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        print("dockerd/docker not found (apt-get install docker.io)", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_term)
    # Also when started in the background by a non-interactive shell, which ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    bench = Bench(args)
    started = time.monotonic()
    try:
        bench.open()
        print(f"image {bench.image}, dockerd {bench.host}", flush=True)
        bench.run()
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\ninterrupted ({type(exc).__name__}); cleaning up", file=sys.stderr)
        return 130
    finally:
        # Cleanup must finish even if a second Ctrl-C or SIGTERM arrives.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.close()
    print_raw(bench.results)
    print_summary(bench.results, args, bench.image)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
