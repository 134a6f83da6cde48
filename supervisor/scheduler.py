"""The gateway's scheduler: which waiting request may go to the server now. Pure: no I/O, no
clock reads; ``now`` comes with every event.

The gateway owner feeds it events (a request arrived, finished or left; the server's phase
changed; an unload finished; time passed) and performs the actions it returns (admit, refuse,
unload, report a drain). It is the single writer of the queues, the in-flight counts and the
set of resident models.

Residency is the whole model of swapping. With a single active backend at most one model is
resident (``max_resident = 1``); otherwise up to ``max_resident`` models and, when a memory
budget is known, only as many as fit in it (weights + KV cache estimates). A request for a
resident model goes through at once, up to the model's slots. A request for another model waits
until room can be made by unloading *idle* residents (least recently used first): an unload is
never asked of a model with requests in flight, so no swap cuts a request. When that room is
made the model becomes resident and every waiting request for it goes through together.

Fairness: models take turns in the order of their oldest waiting request. A resident model
standing in the way of that request keeps admitting new requests for at most ``max_hold``
seconds (counted from when the waiter arrived or the model's turn began, whichever is later);
then it only finishes what it has, and the next model gets its turn.

Requests that name no configured model (``GET /v1/models``, the UI, an unknown model name) take
no part in swapping: they pass whenever the server serves, and wait only while it does not.

Closing (the supervisor itself stops): what was already received for a resident model is still
served, during the drain too, as slots free up; what would need a swap, what comes once the
drain is over (sealed) and what waits when the server goes away is refused
``supervisor-stopping``, so its client asks the next daemon. The listener is closed first, so
what can still arrive is bounded by the connections already open.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Phase(StrEnum):
    # The server serves: admit by the rules above.
    OPEN = "open"
    # The server is starting, restarting, draining or recovering: requests wait for it.
    HELD = "held"
    # The server will not come back without an operator (FATAL, stopped): refuse at once.
    DOWN = "down"


class Refusal(StrEnum):
    """Why a request was answered by the gateway itself (a closed vocabulary: a metric label)."""

    QUEUE_FULL = "queue-full"
    QUEUE_TIMEOUT = "queue-timeout"
    SERVER_UNAVAILABLE = "server-unavailable"
    SERVER_DOWN = "server-down"
    # The supervisor itself is stopping (a restart, under socket activation): ask again, and
    # the next daemon answers.
    SUPERVISOR_STOPPING = "supervisor-stopping"

    @property
    def status(self) -> int:
        return 429 if self is Refusal.QUEUE_FULL else 503


# ---- rules -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelLimits:
    # Requests the engine serves at once for this model (its parallel slots).
    slots: int = 1
    # Bytes it needs when resident (weights + KV cache); None when unknown.
    footprint: int | None = None


@dataclass(frozen=True)
class Rules:
    models: Mapping[str, ModelLimits] = field(default_factory=dict)
    # 1: a single active backend; None: no limit on the count.
    max_resident: int | None = 1
    memory_budget: int | None = None
    queue_max: int = 256
    queue_timeout: float = 120.0
    max_hold: float = 30.0


# ---- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrive:
    rid: int
    model: str | None
    # When the client's request first arrived (a request re-queued after a refused connect
    # keeps its place and its deadline).
    arrived: float


@dataclass(frozen=True)
class Finish:
    """An admitted request ended, however it ended."""

    rid: int


@dataclass(frozen=True)
class Leave:
    """A request's client went away while it waited (or just as it was admitted)."""

    rid: int


@dataclass(frozen=True)
class PhaseChanged:
    phase: Phase
    # A new server instance: nothing is resident in it yet.
    fresh: bool = False


@dataclass(frozen=True)
class Unloaded:
    """The unload asked for with the same ``epoch`` finished (or failed: either way the
    model has no requests in flight and the engine swaps by itself if it must)."""

    epoch: int


@dataclass(frozen=True)
class Drain:
    """A planned stop: admit nothing new, and say ``Drained`` once nothing is in flight."""


@dataclass(frozen=True)
class Close:
    """The supervisor is stopping: serve what was received for a resident model, swap nothing,
    refuse the rest (see the module docstring)."""


@dataclass(frozen=True)
class Seal:
    """The supervisor's loop is ending (its stop is done, or it leaves the server running):
    nothing more is admitted; what waits is refused ``supervisor-stopping`` at once."""


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class Configure:
    rules: Rules


Event = (Arrive | Finish | Leave | PhaseChanged | Unloaded | Drain | Close | Seal | Tick
         | Configure)


# ---- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admit:
    rid: int
    model: str | None
    waited: float
    # The first request admitted to a model that just became resident by evicting another:
    # when that swap began (its duration ends at this request's first byte).
    swap_began: float | None = None


@dataclass(frozen=True)
class Refuse:
    rid: int
    model: str | None
    why: Refusal
    waited: float


@dataclass(frozen=True)
class Unload:
    models: tuple[str, ...]
    # For the model this makes room for (the log line).
    for_model: str
    epoch: int


@dataclass(frozen=True)
class Drained:
    pass


Action = Admit | Refuse | Unload | Drained


@dataclass
class _Waiting:
    rid: int
    model: str | None
    arrived: float


class Scheduler:
    """Single writer of queues, in-flight counts and residency; see the module docstring."""

    def __init__(self, rules: Rules, *, phase: Phase = Phase.HELD) -> None:
        self.rules = rules
        self.phase = phase
        # model -> when it was last admitted to (LRU order for eviction).
        self.resident: dict[str, float] = {}
        # model -> when its current turn began (fairness).
        self._turn: dict[str, float] = {}
        self._admitted: dict[int, str | None] = {}
        self.in_flight: Counter[str | None] = Counter()
        self._waiting: dict[int, _Waiting] = {}
        self._queues: dict[str | None, deque[int]] = {}
        self._unloading: Unload | None = None
        self._epoch = 0
        # model -> when the swap that makes it resident began.
        self._swap_began: dict[str, float] = {}
        self._draining = False
        self._closed = False
        # Closing and drained: nothing more is admitted.
        self._sealed = False

    # -- views (for status and tests; nobody outside decides from them) ---------------------

    def queued(self, model: str | None) -> int:
        return len(self._queues.get(model, ()))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def admitted(self) -> int:
        return len(self._admitted)

    @property
    def unloading(self) -> tuple[str, ...]:
        return self._unloading.models if self._unloading else ()

    @property
    def unloading_epoch(self) -> int | None:
        return self._unloading.epoch if self._unloading else None

    def next_deadline(self, now: float) -> float | None:
        """When the next wait runs out or a hold ends (the owner wakes then to Tick)."""
        times = [w.arrived + self.rules.queue_timeout for w in self._waiting.values()]
        head = self._head()
        if head is not None and self.phase is Phase.OPEN:
            holds = (max(head[1], self._turn.get(v, head[1])) + self.rules.max_hold
                     for v in self._victims(head[0], idle_only=False) or ())
            times += [t for t in holds if t > now]  # a hold already over was acted on
        return min(times) if times else None

    # -- the one entry point ---------------------------------------------------------------

    def step(self, event: Event, now: float) -> list[Action]:
        out: list[Action] = []
        if isinstance(event, Arrive):
            self._arrive(event, now, out)
        elif isinstance(event, Finish):
            if event.rid in self._admitted:
                self._finish(self._admitted.pop(event.rid), now)
        elif isinstance(event, Leave):
            if event.rid in self._admitted:  # admitted just as its client went away
                self._finish(self._admitted.pop(event.rid), now)
            else:
                self._remove_waiting(event.rid)
        elif isinstance(event, PhaseChanged):
            self._phase(event, now, out)
        elif isinstance(event, Unloaded):
            if self._unloading is not None and event.epoch == self._unloading.epoch:
                self._unloading = None
        elif isinstance(event, Drain):
            self._draining = True
            if self.phase is Phase.OPEN and not self._closed:
                self.phase = Phase.HELD
        elif isinstance(event, Configure):
            self.rules = event.rules
        elif isinstance(event, Close):
            self._closed = True
        elif isinstance(event, Seal):
            self._closed = self._sealed = True
        self._expire(now, out)
        if self._closed:
            self._dispatch_closing(now, out)
        else:
            self._dispatch(now, out)
        if self._draining and not self._admitted and not (self._closed and self._waiting):
            self._draining = False
            self._sealed = self._closed
            out.append(Drained())
        if self._closed:
            self._refuse_unservable(now, out)
        return out

    # -- handlers --------------------------------------------------------------------------

    def _arrive(self, ev: Arrive, now: float, out: list[Action]) -> None:
        model = ev.model if ev.model in self.rules.models else None
        if self._closed and not self._servable_while_closing(model):
            out.append(Refuse(ev.rid, model, Refusal.SUPERVISOR_STOPPING, now - ev.arrived))
            return
        if self.phase is Phase.DOWN:
            out.append(Refuse(ev.rid, model, Refusal.SERVER_DOWN, now - ev.arrived))
            return
        queue = self._queues.setdefault(model, deque())
        if model is not None and len(queue) >= self.rules.queue_max:
            out.append(Refuse(ev.rid, model, Refusal.QUEUE_FULL, now - ev.arrived))
            return
        self._waiting[ev.rid] = _Waiting(ev.rid, model, ev.arrived)
        queue.append(ev.rid)

    def _finish(self, model: str | None, now: float) -> None:
        self.in_flight[model] -= 1
        if self.in_flight[model] <= 0:
            del self.in_flight[model]
        if model in self.resident:
            self.resident[model] = now

    def _remove_waiting(self, rid: int) -> _Waiting | None:
        w = self._waiting.pop(rid, None)
        if w is not None:
            queue = self._queues[w.model]
            queue.remove(rid)
            if not queue:
                del self._queues[w.model]
        return w

    def _phase(self, ev: PhaseChanged, now: float, out: list[Action]) -> None:
        self.phase = ev.phase
        if ev.fresh or ev.phase is Phase.DOWN:
            self.resident.clear()
            self._turn.clear()
            self._swap_began.clear()
            self._unloading = None
        if ev.phase is Phase.OPEN:
            self._draining = False
        if ev.phase is Phase.DOWN and not self._closed:  # closing: refused as stopping
            for w in list(self._waiting.values()):
                self._remove_waiting(w.rid)
                out.append(Refuse(w.rid, w.model, Refusal.SERVER_DOWN, now - w.arrived))

    def _servable_while_closing(self, model: str | None) -> bool:
        """Closing: can this daemon still serve it without a swap before it goes?"""
        return not self._sealed and self.phase is not Phase.DOWN and (
            model is None or model in self.resident)

    def _refuse_unservable(self, now: float, out: list[Action]) -> None:
        for w in list(self._waiting.values()):
            if not self._servable_while_closing(w.model):
                self._remove_waiting(w.rid)
                out.append(Refuse(w.rid, w.model, Refusal.SUPERVISOR_STOPPING, now - w.arrived))

    def _expire(self, now: float, out: list[Action]) -> None:
        limit = self.rules.queue_timeout
        for w in [w for w in self._waiting.values() if now >= w.arrived + limit]:
            self._remove_waiting(w.rid)
            why = Refusal.QUEUE_TIMEOUT if self.phase is Phase.OPEN else \
                Refusal.SERVER_UNAVAILABLE
            out.append(Refuse(w.rid, w.model, why, now - w.arrived))

    # -- dispatch --------------------------------------------------------------------------

    def _slots(self, model: str) -> int:
        limits = self.rules.models.get(model)
        return max(1, limits.slots) if limits else 1

    def _admit(self, rid: int, now: float, out: list[Action]) -> None:
        w = self._remove_waiting(rid)
        assert w is not None
        self._admitted[rid] = w.model
        self.in_flight[w.model] += 1
        began = self._swap_began.pop(w.model, None) if w.model is not None else None
        if w.model is not None:
            self.resident[w.model] = now
        out.append(Admit(rid, w.model, now - w.arrived, began))

    def _head(self) -> tuple[str, float] | None:
        """The non-resident model whose oldest request has waited longest, and its arrival."""
        best: tuple[str, float] | None = None
        for model, queue in self._queues.items():
            if model is None or model in self.resident or not queue:
                continue
            arrived = self._waiting[queue[0]].arrived
            if best is None or arrived < best[1]:
                best = (model, arrived)
        return best

    def _fits(self, model: str, residents: list[str]) -> bool:
        if not residents:
            return True  # alone it always goes (a model larger than the budget gets it all)
        r = self.rules
        if r.max_resident is not None and len(residents) + 1 > r.max_resident:
            return False
        if r.memory_budget is None:
            return True

        def size(m: str) -> int:
            limits = r.models.get(m)
            return limits.footprint or 0 if limits else 0

        return sum(size(m) for m in residents) + size(model) <= r.memory_budget

    def _victims(self, model: str, *, idle_only: bool) -> tuple[str, ...] | None:
        """Residents to unload (least recently used first) so ``model`` fits; None when the
        candidates are not enough."""
        keep = sorted(self.resident, key=self.resident.__getitem__)
        if self._fits(model, keep):
            return ()
        chosen: list[str] = []
        for m in list(keep):
            if idle_only and self.in_flight[m]:
                continue
            keep.remove(m)
            chosen.append(m)
            if self._fits(model, keep):
                return tuple(chosen)
        return None

    def _fill_slots(self, model: str, now: float, out: list[Action]) -> None:
        """Admit ``model``'s waiting requests, oldest first, while it has free slots."""
        queue = self._queues.get(model)
        while queue and self.in_flight[model] < self._slots(model):
            self._admit(queue[0], now, out)

    def _dispatch_closing(self, now: float, out: list[Action]) -> None:
        """Closing: admit waiting requests for resident models as their slots free up, while
        the server serves or is being drained; no swaps."""
        if self._sealed or not (self.phase is Phase.OPEN or self._draining):
            return
        for rid in list(self._queues.get(None, ())):
            self._admit(rid, now, out)
        for model in list(self.resident):
            self._fill_slots(model, now, out)

    def _dispatch(self, now: float, out: list[Action]) -> None:
        if self.phase is not Phase.OPEN:
            return
        for rid in list(self._queues.get(None, ())):
            self._admit(rid, now, out)
        head = self._head()
        closing: set[str] = set()
        if head is not None:
            model, arrived = head
            for v in self._victims(model, idle_only=False) or ():
                if now >= max(arrived, self._turn.get(v, arrived)) + self.rules.max_hold:
                    closing.add(v)
        for model in list(self.resident):
            if model not in closing:
                self._fill_slots(model, now, out)
        if self._unloading is not None or head is None:
            return
        model, _ = head
        victims = self._victims(model, idle_only=True)
        if victims is None:
            return  # busy residents are in the way: wait for them (bounded by max_hold)
        if victims:
            for v in victims:
                del self.resident[v]
                self._turn.pop(v, None)
            self._epoch += 1
            self._unloading = Unload(victims, model, self._epoch)
            self._swap_began[model] = now
            out.append(self._unloading)
            return
        self.resident[model] = now
        self._turn[model] = now
        self._fill_slots(model, now, out)
        # Room for the next waiting model too (several resident): look again.
        if self._head() is not None:
            self._dispatch(now, out)
