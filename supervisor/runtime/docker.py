"""Docker runtime: one labelled container, watched through the engine's event stream.

docker-py is blocking, so API calls run in worker threads (``asyncio.to_thread``) and the
event stream is read by one thread that hands events to the loop. The container is created
with restart policy ``no``: the supervisor, not Docker, decides restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import docker
import docker.errors
import requests
import structlog
from docker.types import DeviceRequest, Ulimit
from docker.types import Mount as DockerMount

from ..settings import Settings
from ..spec import ServerSpec
from .base import (
    Emit,
    Instance,
    InstanceExited,
    InstanceHealth,
    InstancePaused,
    LaunchError,
    RuntimeConnection,
    RuntimeEvent,
)

LABEL_MANAGED = "io.localai-supervisor.managed"
LABEL_SPEC = "io.localai-supervisor.spec"
LABEL_REVISION = "io.localai-supervisor.revision"

# Lines a follower of the server's log may lag behind before it misses some.
FOLLOW_BACKLOG = 10_000

log = structlog.get_logger("supervisor.runtime.docker")

_FIRST_RECONNECT_DELAY = 0.1
_SOCKET_POLL_SECONDS = 0.1


def stop_container(container: Any, timeout: float) -> None:
    """timeout 0 (a hung server): SIGKILL alone, so a frozen container never runs again (a
    stop would queue a SIGTERM that it handles when thawed); else SIGTERM, then SIGKILL."""
    if timeout > 0:
        container.stop(timeout=max(1, round(timeout)))
        return
    try:
        container.kill()
    except docker.errors.APIError:
        container.reload()
        if container.status in ("running", "paused"):
            raise
        # It died meanwhile: nothing left to kill.


def _unreachable(exc: BaseException) -> bool:
    """Did this error mean the engine did not answer at all (not: it refused)?"""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.ConnectionError | ConnectionError
                      | FileNotFoundError | requests.exceptions.Timeout):
            return True
        if isinstance(seen, docker.errors.DockerException) and (
                "Error while fetching server API version" in str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _finished(state: dict[str, Any]) -> float | None:
    """A stopped container's FinishedAt as Unix seconds."""
    ns = _started_ns({"State": {"StartedAt": state.get("FinishedAt", "")}})
    return ns / 1e9 if ns else None


def device_requests(gpus: str) -> list[DeviceRequest]:
    """``all`` / ``none`` / ``0,1`` → Docker device requests (what ``--gpus`` does)."""
    value = gpus.strip()
    if value.lower() in ("", "none"):
        return []
    if value.lower() == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    ids = [d.strip() for d in value.split(",") if d.strip()]
    return [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]


def client_for(host: str | None, timeout: float) -> docker.DockerClient:
    """A client of ``docker.host``, else of the environment's engine (DOCKER_HOST)."""
    if host:
        return docker.DockerClient(base_url=host, timeout=timeout)
    return docker.from_env(timeout=timeout)


def container_kwargs(spec: ServerSpec, name: str) -> dict[str, Any]:
    """Pure: the create() arguments for a spec (unit-tested without Docker)."""
    return {
        "image": spec.program,
        "command": list(spec.args),
        "name": name,
        "labels": {LABEL_MANAGED: "true", LABEL_SPEC: spec.digest(), LABEL_REVISION: spec.revision},
        "environment": dict(spec.env),
        "ports": {f"{spec.listen_port}/tcp": (spec.publish_host, spec.publish_port)},
        "mounts": [
            DockerMount(target=m.target, source=m.source, type="bind", read_only=m.read_only)
            for m in spec.mounts
        ],
        "device_requests": device_requests(spec.gpus),
        "restart_policy": {"Name": "no"},
        "detach": True,
        **({"ulimits": [Ulimit(name="memlock", soft=-1, hard=-1)]}
           if spec.memlock_unlimited else {}),
    }


def _started_ns(attrs: dict[str, Any]) -> int:
    """Container start time in ns, to drop 'die' events of an earlier run of the same id."""
    from datetime import datetime

    text = attrs.get("State", {}).get("StartedAt", "")
    if not text or text.startswith("0001"):
        return 0
    whole, _, frac = text.rstrip("Z").partition(".")
    dt = datetime.fromisoformat(whole + "+00:00")
    return int(dt.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9])


class DockerRuntime:
    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._base_url = settings.docker.host
        self._name = settings.docker.container_name
        self._client: docker.DockerClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emit: Emit | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        # (container id, start ns, token) of the instance we watch; None while none.
        self._current: tuple[str, int, str] | None = None
        # Containers with an "oom" event since their start: that event precedes their "die".
        self._oom: set[str] = set()
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    def _new_client(self) -> docker.DockerClient:
        return client_for(self._base_url, 60)

    def _api(self) -> docker.DockerClient:
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _send(self, event: RuntimeEvent) -> None:
        if self._loop is not None and self._emit is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._emit, event)

    async def open(self, emit: Emit) -> None:
        self._loop = asyncio.get_running_loop()
        self._emit = emit
        self._thread = threading.Thread(target=self._watch_events, name="docker-events",
                                        daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()

    # -- the event stream -------------------------------------------------------------------

    def _watch_events(self) -> None:
        # Reconnect fast: every second the engine is back but unseen is a second the server is
        # not restarted. A missing unix socket is watched for; refused connects back off.
        delay = _FIRST_RECONNECT_DELAY
        connected = True
        while not self._stop.is_set():
            client: docker.DockerClient | None = None
            try:
                client = self._new_client()
                since = int(time.time()) - 1
                self._stream = client.events(
                    decode=True, since=since,
                    filters={"type": "container", "label": f"{LABEL_MANAGED}=true"},
                )
                if not connected:
                    connected = True
                    delay = _FIRST_RECONNECT_DELAY
                    # What the outage did to the container first, then that the engine is
                    # back: a dead container is relaunched without a detour through WAITING.
                    self._recheck(client)
                    self._send(RuntimeConnection(True, "docker engine reachable again"))
                for event in self._stream:
                    if self._stop.is_set():
                        break
                    self._on_event(client, event)
                if self._stop.is_set():
                    break
                raise ConnectionError("event stream ended")
            except Exception as exc:  # the engine went away: keep running, reconnect
                if self._stop.is_set():
                    break
                if connected:
                    connected = False
                    self._send(RuntimeConnection(False, f"{type(exc).__name__}: {exc}"))
                if self._await_socket():
                    continue  # it is there again: connect at once
                self._stop.wait(delay)
                delay = min(delay * 2, self._settings.docker.reconnect_max_delay)
            finally:
                self._stream = None
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()

    def _socket_path(self) -> str | None:
        url = self._base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return url.removeprefix("unix://") if url.startswith("unix://") else None

    def _await_socket(self) -> bool:
        """While the engine's unix socket is gone (the engine stopped and removed it), look
        for it every 0.1 s, which costs a stat, instead of connecting. True once it is back."""
        path = self._socket_path()
        if path is None or os.path.exists(path):
            return False
        while not self._stop.is_set() and not os.path.exists(path):
            self._stop.wait(_SOCKET_POLL_SECONDS)
        return not self._stop.is_set()

    def _on_event(self, client: docker.DockerClient, event: dict[str, Any]) -> None:
        action = str(event.get("status", event.get("Action", "")))
        cid = str(event.get("id", ""))
        when = int(event.get("timeNano", 0))
        with self._lock:
            current = self._current
        if current is None or cid != current[0] or when < current[1]:
            return
        if action == "oom":
            self._oom.add(cid)
            log.warning("container.oom", container=cid[:12],
                        action="the die event that follows triggers the restart")
            return
        if action == "pause":
            self._send(InstancePaused(current[2]))
            return
        if action.startswith("health_status:"):
            verdict = action.partition(":")[2].strip()
            if verdict in ("healthy", "unhealthy"):
                self._send(InstanceHealth(current[2], verdict == "healthy",
                                          f"docker HEALTHCHECK: {verdict}"))
            return
        if action != "die":
            return
        attrs = event.get("Actor", {}).get("Attributes", {})
        code = attrs.get("exitCode")
        # Report at once: the relaunch waits for nothing. An OOM kill announced itself with an
        # "oom" event; a SIGKILL without one is checked by exit_details, after the relaunch.
        oom = cid in self._oom
        self._oom.discard(cid)
        self._exit_once(InstanceExited(current[2], int(code) if code is not None else None, oom,
                                       at=when / 1e9 if when else time.time(), ident=cid))

    def _recheck(self, client: docker.DockerClient) -> None:
        """After a reconnect: did the container die while we could not see events?"""
        with self._lock:
            current = self._current
        if current is None:
            return
        try:
            state = client.api.inspect_container(current[0])["State"]
        except docker.errors.NotFound:
            self._exit_once(InstanceExited(current[2], None, detail="container removed",
                                           outage=True))
            return
        if not state.get("Running") or _started_ns({"State": state}) != current[1]:
            self._exit_once(InstanceExited(current[2], state.get("ExitCode"),
                                           bool(state.get("OOMKilled")), "seen after reconnect",
                                           outage=True, at=_finished(state)))
        elif state.get("Paused"):
            self._send(InstancePaused(current[2]))

    def _track(self, attrs: dict[str, Any]) -> Instance:
        token = uuid.uuid4().hex[:12]
        with self._lock:
            self._current = (attrs["Id"], _started_ns(attrs), token)
        labels = attrs.get("Config", {}).get("Labels") or {}
        started = _started_ns(attrs)
        return Instance(
            token=token,
            ident=attrs["Id"],
            spec_digest=labels.get(LABEL_SPEC, ""),
            started_at=started / 1e9 if started else time.time(),
            pid=attrs.get("State", {}).get("Pid") or None,
            image=attrs.get("Config", {}).get("Image"),
        )

    def _exit_once(self, exited: InstanceExited) -> None:
        """Report an instance's exit at most once, and only while it is the current one."""
        with self._lock:
            if self._current is None or self._current[2] != exited.token:
                return
            self._current = None
        self._send(exited)

    def _track_checked(self, container: Any) -> Instance:
        """Track a just-started container; a crash before tracking began is still reported."""
        instance = self._track(container.attrs)
        container.reload()
        state = container.attrs.get("State", {})
        if not state.get("Running"):
            self._exit_once(InstanceExited(instance.token, state.get("ExitCode"),
                                           bool(state.get("OOMKilled")), "exited at start"))
        return instance

    # -- operations -------------------------------------------------------------------------

    def _get(self) -> Any:
        try:
            return self._api().containers.get(self._name)
        except docker.errors.NotFound:
            return None

    async def find(self, spec_digest: str) -> Instance | None:
        def work() -> Instance | None:
            container = self._get()
            if container is None:
                return None
            attrs = container.attrs
            labels = attrs.get("Config", {}).get("Labels") or {}
            if labels.get(LABEL_MANAGED) != "true" or not attrs["State"].get("Running"):
                return None
            if labels.get(LABEL_SPEC) != spec_digest:
                return None
            return self._track(attrs)

        return await asyncio.to_thread(work)

    async def launch(self, spec: ServerSpec) -> Instance:
        def work() -> Instance:
            digest = spec.digest()
            container = self._get()
            if container is not None:
                labels = container.attrs.get("Config", {}).get("Labels") or {}
                if labels.get(LABEL_MANAGED) != "true":
                    raise LaunchError(
                        f"a container named {self._name!r} exists and was not created by "
                        f"localai-supervisor; remove it (docker rm -f {self._name}) or set "
                        "docker.container_name", permanent=True,
                    )
                if labels.get(LABEL_SPEC) == digest:
                    if container.attrs["State"].get("Running"):
                        return self._track(container.attrs)
                    container.start()
                    container.reload()
                    return self._track_checked(container)
                log.info("container.recreate", container=container.id[:12],
                         old_spec=labels.get(LABEL_SPEC), new_spec=digest)
                container.remove(force=True)
            kwargs = container_kwargs(spec, self._name)
            try:
                container = self._api().containers.create(**kwargs)
            except docker.errors.ImageNotFound as exc:
                raise LaunchError(
                    f"image {spec.program!r} not found in the docker engine; pull or build it "
                    "(the supervisor never pulls) or set docker.image", permanent=True,
                ) from exc
            try:
                container.start()
            except docker.errors.APIError as exc:
                with contextlib.suppress(Exception):
                    container.remove(force=True)
                text = str(exc.explanation or exc)
                if spec.memlock_unlimited and "rlimit" in text:
                    # Retrying cannot help: the engine lacks CAP_SYS_RESOURCE (a rootless or
                    # nested engine) and cannot lift the limit past its own.
                    raise LaunchError(
                        "a model sets mmlock: true, so the container asks for an unlimited "
                        "memlock ulimit, and the container engine may not grant it (it runs "
                        "without CAP_SYS_RESOURCE, rootless or nested): set mmlock: false, or "
                        f"raise the engine's own LimitMEMLOCK ({text})", permanent=True,
                    ) from exc
                raise LaunchError(f"container start failed: {text}") from exc
            container.reload()
            return self._track_checked(container)

        try:
            return await asyncio.to_thread(work)
        except LaunchError:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise LaunchError(f"docker engine: {exc}",
                              engine_down=_unreachable(exc)) from exc

    async def terminate(self, timeout: float) -> None:
        with self._lock:
            current = self._current
            self._current = None  # a stop we ask for is not a crash: drop its die event

        def work() -> None:
            container = self._get()
            if container is None:
                return
            if current is not None and container.id != current[0]:
                return
            try:
                stop_container(container, timeout)
            except docker.errors.APIError:
                if container.status != "paused":
                    raise
                # Docker signals a frozen container; an engine that refuses gets it thawed.
                container.unpause()
                stop_container(container, timeout)

        try:
            await asyncio.to_thread(work)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            log.warning("container.stop_failed", error=str(exc),
                        action="left as is; the next launch replaces or restarts it")

    async def unpause(self) -> None:
        with self._lock:
            current = self._current

        def work() -> None:
            container = self._get()
            if container is None or (current is not None and container.id != current[0]):
                raise RuntimeError("the paused container is gone")
            if container.status == "paused":
                container.unpause()

        await asyncio.to_thread(work)

    async def detach(self) -> None:
        with self._lock:
            self._current = None

    async def exit_details(self, exited: InstanceExited) -> InstanceExited:
        if exited.oom_killed or not exited.ident or exited.exit_code not in (137, -9, None):
            return exited

        def work() -> bool:
            # Best effort: asked as soon as the exit is decided on, which is before the
            # relaunch starts the container again (and resets the flag) in practice; the
            # "oom" event covers the usual case without asking at all.
            state = self._api().api.inspect_container(exited.ident)["State"]
            return bool(state.get("OOMKilled"))

        try:
            oom = await asyncio.to_thread(work)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return exited
        return replace(exited, oom_killed=oom)

    async def follow_logs(self) -> AsyncIterator[str]:
        """Docker's own log follow, read by a thread of its own (the stream blocks); when
        the container goes away or is replaced, it attaches again from where it left off."""
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str] = asyncio.Queue(FOLLOW_BACKLOG)
        stop = threading.Event()
        current: list[Any] = []

        def offer(line: str) -> None:
            with contextlib.suppress(asyncio.QueueFull):  # a reader that cannot keep up
                lines.put_nowait(line)

        def pump() -> None:
            since = int(time.time())
            while not stop.is_set():
                try:
                    container = self._get()
                    if container is not None:
                        stream = container.logs(stream=True, follow=True, since=since)
                        current[:] = [stream]
                        pending = b""
                        for chunk in stream:
                            since = int(time.time())
                            *done, pending = (pending + chunk).split(b"\n")
                            for raw in done:
                                loop.call_soon_threadsafe(offer, raw.decode("utf-8", "replace"))
                except (docker.errors.DockerException, requests.exceptions.RequestException,
                        RuntimeError):
                    pass  # the engine or the container went away: look again shortly
                stop.wait(0.5)

        thread = threading.Thread(target=pump, name="docker-logs-follow", daemon=True)
        thread.start()
        try:
            while True:
                yield await lines.get()
        finally:
            stop.set()
            for stream in current:
                with contextlib.suppress(Exception):
                    stream.close()

    async def logs(self, lines: int, exited: InstanceExited | None = None) -> list[str]:
        # A relaunch restarts the same container and its log goes on: a dead instance's
        # lines are those before it died.
        until = exited.at if exited is not None else None

        def work() -> list[str]:
            container = self._get()
            if container is None:
                return []
            raw: bytes = (container.logs(tail=lines, until=until) if until
                          else container.logs(tail=lines))
            return raw.decode("utf-8", "replace").splitlines()

        try:
            return await asyncio.to_thread(work)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return []
