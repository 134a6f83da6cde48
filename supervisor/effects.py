"""Runtime effects, strictly one after another: find, launch, unpause, terminate (with its
drain).

The server owner submits effects; one worker task performs them in order and reports each
one's outcome as exactly one event. A stop decided while a launch is in flight therefore acts
on the instance that launch produced, and two effects never race on the runtime. The worker
keeps no state anyone else reads: it only performs, and reports.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from .health import Probing, loaded_names
from .runtime import Instance, LaunchError, Runtime
from .spec import ServerSpec, write_rendered

log = structlog.get_logger("supervisor.effects")

# A hung server answers no graceful stop: waiting for one only prolongs the outage, so it is
# killed at once.
HUNG_STOP_SECONDS = 0.0
# After a second SIGTERM/SIGINT: as fast as the runtime can kill.
FORCED_STOP_SECONDS = 1.0
DRAIN_POLL_SECONDS = 0.25


# ---- effects (what the server owner asks for) -----------------------------------------------


@dataclass(frozen=True)
class Find:
    """Look for a running instance of this spec to adopt (boot)."""

    digest: str


@dataclass(frozen=True)
class Launch:
    spec: ServerSpec
    rendered_dir: Path
    reason: str


@dataclass(frozen=True)
class Terminate:
    """Stop the runtime's current instance, after a bounded drain when ``drain_timeout``."""

    reason: str
    drain_timeout: float
    stop_timeout: float
    hung: bool = False


@dataclass(frozen=True)
class Unpause:
    """Thaw the runtime's current instance (``token``, for the outcome)."""

    token: str


Effect = Find | Launch | Terminate | Unpause


# ---- outcomes (one per effect, posted to the loop) ------------------------------------------


@dataclass(frozen=True)
class FindDone:
    instance: Instance | None
    error: str | None = None


@dataclass(frozen=True)
class LaunchDone:
    """Exactly one of ``instance`` / ``error``; for an error, the runtime's verdict on it."""

    instance: Instance | None
    error: str | None = None
    permanent: bool = False
    engine_down: bool = False


@dataclass(frozen=True)
class DrainResult:
    # None: the engine does not report requests in flight, so nothing was waited for.
    in_flight: int | None
    drained: int = 0
    cut_off: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class TerminateDone:
    reason: str
    drain: DrainResult | None


@dataclass(frozen=True)
class UnpauseDone:
    token: str
    error: str | None = None


Outcome = FindDone | LaunchDone | TerminateDone | UnpauseDone


class EffectWorker:
    """Performs effects in submission order; ``run`` is the one task that touches the runtime."""

    def __init__(self, runtime: Runtime, prober: Probing, post: Callable[[Outcome], None],
                 clock: Callable[[], float], *, drain_poll: float = DRAIN_POLL_SECONDS,
                 drainer: Callable[[float], Awaitable[DrainResult]] | None = None) -> None:
        self._runtime = runtime
        self._prober = prober
        self._post = post
        self._clock = clock
        self._drain_poll = drain_poll
        # With the gateway on, it counts the requests in flight and says when they are done;
        # without it, the engine's own counters are polled.
        self._drainer = drainer
        self._queue: asyncio.Queue[Effect] = asyncio.Queue()
        # Set to end a drain early: the instance died, or a forced shutdown.
        self._abort = asyncio.Event()
        self._forced = False
        # What the worker is doing now (for tests and debugging; nobody decides from it).
        self.performing: Effect | None = None
        self.draining = False

    def submit(self, effect: Effect) -> None:
        self._queue.put_nowait(effect)

    def abort_drain(self) -> None:
        """The instance being drained is gone: nothing left to wait for."""
        self._abort.set()

    def force(self) -> None:
        """Second SIGTERM: stop waiting for anything, kill quickly from now on."""
        self._forced = True
        self._abort.set()

    async def run(self) -> None:
        while True:
            effect = await self._queue.get()
            self.performing = effect
            outcome = await self._perform(effect)
            self.performing = None
            self._post(outcome)

    async def _perform(self, effect: Effect) -> Outcome:
        if isinstance(effect, Find):
            try:
                return FindDone(await self._runtime.find(effect.digest))
            except Exception as exc:  # the runtime's own errors vary (docker-py, OS)
                return FindDone(None, f"{type(exc).__name__}: {exc}")
        if isinstance(effect, Launch):
            try:
                await asyncio.to_thread(write_rendered, effect.spec, effect.rendered_dir)
                return LaunchDone(await self._runtime.launch(effect.spec))
            except LaunchError as exc:
                return LaunchDone(None, str(exc), exc.permanent, exc.engine_down)
            except OSError as exc:
                return LaunchDone(None, f"cannot write the rendered files: {exc}")
        if isinstance(effect, Unpause):
            try:
                await self._runtime.unpause()
            except Exception as exc:  # the runtime's own errors vary (docker-py, OS)
                return UnpauseDone(effect.token, f"{type(exc).__name__}: {exc}")
            return UnpauseDone(effect.token)
        return await self._terminate(effect)

    async def _terminate(self, effect: Terminate) -> TerminateDone:
        self._abort.clear()
        drain = None
        if effect.drain_timeout > 0 and not self._forced:
            self.draining = True
            try:
                drain = await (self._drain_via_gateway(effect.drain_timeout) if self._drainer
                               else self._drain(effect.drain_timeout))
            finally:
                self.draining = False
        timeout = effect.stop_timeout
        if effect.hung:
            timeout = min(timeout, HUNG_STOP_SECONDS)
        if self._forced:
            timeout = min(timeout, FORCED_STOP_SECONDS)
        await self._runtime.terminate(timeout)
        return TerminateDone(effect.reason, drain)

    async def _drain_via_gateway(self, timeout: float) -> DrainResult:
        """The gateway holds new requests and answers once its in-flight ones are done (or
        the timeout passed); an abort (the instance died, a forced stop) ends the wait."""
        assert self._drainer is not None
        drained = asyncio.ensure_future(self._drainer(timeout))
        aborted = asyncio.ensure_future(self._abort.wait())
        try:
            await asyncio.wait({drained, aborted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            aborted.cancel()
        if drained.done():
            return drained.result()
        drained.cancel()
        return DrainResult(0)

    async def _drain(self, timeout: float) -> DrainResult:
        """Wait (bounded) until nothing is in flight, so a planned stop cuts no request."""
        start = self._clock()
        loaded = loaded_names(await self._prober.loaded())
        first = (await self._prober.activity(loaded)).in_flight
        if not first:
            return DrainResult(first)
        left: int | None = first
        while self._clock() - start < timeout and not self._abort.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._abort.wait(), self._drain_poll)
            if self._abort.is_set():
                break
            left = (await self._prober.activity(loaded)).in_flight
            if left == 0:
                return DrainResult(first, drained=first, seconds=self._clock() - start)
        cut = left or 0
        return DrainResult(first, drained=max(0, first - cut), cut_off=cut,
                           seconds=self._clock() - start)
