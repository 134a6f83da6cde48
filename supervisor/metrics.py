"""Prometheus metrics (``GET /metrics`` on the status API), with ``prometheus_client``.

The gateway's per-model series: requests by outcome, in flight, queued, queue wait and
time-to-first-byte histograms, swaps and their duration, held requests, tokens. Label values
are closed vocabularies: configured model names (``-`` for requests naming none) and the
``Outcome`` enum. Counters and histograms are fed by the gateway owner as things happen;
gauges are read from its snapshot when scraped, so they cannot go stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .gateway import Finished, GatewayObserver, Outcome
from .status import GatewaySnapshot

PREFIX = "localai_supervisor_gateway"
# Seconds: sub-millisecond pass-through up to minutes of waiting behind another model.
WAIT_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SWAP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)


class GatewayMetrics(GatewayObserver):
    """What the gateway owner reports, as Prometheus series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(f"{PREFIX}_requests", "Requests through the gateway by "
                                "how they ended", ("model", "outcome"), registry=registry)
        self.wait = Histogram(f"{PREFIX}_queue_wait_seconds", "Time from arrival to admission "
                              "(waiting for a swap, a slot or the server)", ("model",),
                              buckets=WAIT_BUCKETS, registry=registry)
        self.ttfb = Histogram(f"{PREFIX}_time_to_first_byte_seconds", "Time from admission "
                              "to the server's first response byte", ("model",),
                              buckets=TTFB_BUCKETS, registry=registry)
        self.swaps = Counter(f"{PREFIX}_swaps", "Swaps to this model (other models unloaded "
                             "to make room)", ("model",), registry=registry)
        self.swap_seconds = Histogram(f"{PREFIX}_swap_seconds", "From the swap decision to "
                                      "the new model's first response byte", ("model",),
                                      buckets=SWAP_BUCKETS, registry=registry)
        self.held = Counter(f"{PREFIX}_held_requests", "Requests that arrived while the "
                            "server was not serving and were held for it", ("model",),
                            registry=registry)
        self.tokens = Counter(f"{PREFIX}_tokens", "Tokens from the answers' usage blocks",
                              ("model", "kind"), registry=registry)

    def admitted(self, model: str, waited: float, held: bool) -> None:
        self.wait.labels(model).observe(waited)
        if held:
            self.held.labels(model).inc()

    def outcome(self, model: str, outcome: Outcome) -> None:
        self.requests.labels(model, outcome.value).inc()

    def finished(self, model: str, msg: Finished, swap_seconds: float | None) -> None:
        self.outcome(model, msg.outcome)
        if msg.ttfb is not None:
            self.ttfb.labels(model).observe(msg.ttfb)
        if swap_seconds is not None:
            self.swap_seconds.labels(model).observe(swap_seconds)
        if msg.prompt_tokens:
            self.tokens.labels(model, "prompt").inc(msg.prompt_tokens)
        if msg.completion_tokens:
            self.tokens.labels(model, "completion").inc(msg.completion_tokens)

    def swap(self, model: str) -> None:
        self.swaps.labels(model).inc()


class GatewayGauges(Collector):
    """In flight, queued and resident per model, read from the owner's snapshot at scrape."""

    def __init__(self, snapshot: Callable[[], GatewaySnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        in_flight = GaugeMetricFamily(f"{PREFIX}_in_flight", "Requests passed to the server "
                                      "and not finished", labels=("model",))
        queued = GaugeMetricFamily(f"{PREFIX}_queued", "Requests waiting in the gateway",
                                   labels=("model",))
        resident = GaugeMetricFamily(f"{PREFIX}_resident", "1 when the gateway counts the "
                                     "model as loaded in the server", labels=("model",))
        for m in snap.models:
            in_flight.add_metric((m.model,), m.in_flight)
            queued.add_metric((m.model,), m.queued)
            resident.add_metric((m.model,), 1.0 if m.resident else 0.0)
        yield from (in_flight, queued, resident)


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
