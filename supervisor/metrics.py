"""Prometheus metrics (``GET /metrics`` on the status API), with ``prometheus_client``.

The supervisor's own series (server state, restarts by reason, last failure's cause, config
revision and checks, models, drains, runtime connection) are read from the typed status when
scraped, so they cannot go stale; the process's own (``process_*``) come from
``prometheus_client``. The gateway's per-model series: requests by outcome, in flight,
queued, queue wait and time-to-first-byte histograms, swaps and their duration, held
requests, tokens. Label values are closed vocabularies: states, reasons, causes, configured
model names (``-`` for requests naming none), the ``Outcome`` enum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .classify import Cause
from .doctor import Symptom
from .gateway import GatewayObserver, Outcome
from .gpumem import GpuReading
from .gpumetrics import gpu_exposition
from .modelhealth import ModelState
from .policy import State
from .status import CheckOutcome, GatewaySnapshot, Status
from .vocab import RestartReason

PREFIX = "localai_supervisor_gateway"
# Seconds: sub-millisecond pass-through up to minutes of waiting behind another model.
WAIT_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SWAP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)


class GatewayMetrics(GatewayObserver):
    """The gateway owner's durations as Prometheus histograms (its counts come from its
    snapshot: GatewayGauges)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.wait = Histogram(f"{PREFIX}_queue_wait_seconds", "Time from arrival to admission "
                              "(waiting for a swap, a slot or the server)", ("model",),
                              buckets=WAIT_BUCKETS, registry=registry)
        self.ttfb = Histogram(f"{PREFIX}_time_to_first_byte_seconds", "Time from admission "
                              "to the server's first response byte", ("model",),
                              buckets=TTFB_BUCKETS, registry=registry)
        self.swap_seconds = Histogram(f"{PREFIX}_swap_seconds", "From the swap decision to "
                                      "the new model's first response byte", ("model",),
                                      buckets=SWAP_BUCKETS, registry=registry)

    def admitted(self, model: str, waited: float) -> None:
        self.wait.labels(model).observe(waited)

    def finished(self, model: str, ttfb: float | None, swap_seconds: float | None) -> None:
        if ttfb is not None:
            self.ttfb.labels(model).observe(ttfb)
        if swap_seconds is not None:
            self.swap_seconds.labels(model).observe(swap_seconds)


class GatewayGauges(Collector):
    """The gateway's per-model counts and gauges, read from the owner's snapshot at scrape
    (the same numbers /status shows: one record, two views)."""

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
        requests = CounterMetricFamily(f"{PREFIX}_requests", "Requests through the gateway "
                                       "by how they ended", labels=("model", "outcome"))
        swaps = CounterMetricFamily(f"{PREFIX}_swaps", "Swaps to this model (other models "
                                    "unloaded to make room)", labels=("model",))
        held = CounterMetricFamily(f"{PREFIX}_held_requests", "Requests that arrived while "
                                   "the server was not serving and were held for it",
                                   labels=("model",))
        tokens = CounterMetricFamily(f"{PREFIX}_tokens", "Tokens from the answers' usage "
                                     "blocks", labels=("model", "kind"))
        for m in snap.models:
            in_flight.add_metric((m.model,), m.in_flight)
            queued.add_metric((m.model,), m.queued)
            resident.add_metric((m.model,), 1.0 if m.resident else 0.0)
            for o in Outcome:
                requests.add_metric((m.model, o.value), m.requests.get(o.value, 0))
            swaps.add_metric((m.model,), m.swaps)
            held.add_metric((m.model,), m.held)
            tokens.add_metric((m.model, "prompt"), m.prompt_tokens)
            tokens.add_metric((m.model, "completion"), m.completion_tokens)
        yield from (in_flight, queued, resident, requests, swaps, held, tokens)


SUP = "localai_supervisor"
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class ProbeMetrics:
    """Probe durations and results, by probe kind and model (``-`` for server probes)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(f"{SUP}_probe_duration_seconds", "How long probes took",
                                  ("probe", "model"), buckets=PROBE_BUCKETS, registry=registry)
        self.results = Counter(f"{SUP}_probe_results", "Probe outcomes",
                               ("probe", "model", "result"), registry=registry)

    def observe(self, probe: str, model: str, result: str, seconds: float | None) -> None:
        self.results.labels(probe, model, result).inc()
        if seconds is not None:
            self.duration.labels(probe, model).observe(seconds)


class StatusCollector(Collector):
    """The supervisor's state, read from one status snapshot per scrape."""

    def __init__(self, status: Callable[[], Status]) -> None:
        self._status = status

    def describe(self) -> list[Metric]:
        return []  # registered before the owners exist: nothing to read yet

    def collect(self) -> Iterator[Metric]:
        st = self._status()

        def gauge(name: str, doc: str, value: float | None = None,
                  labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"{SUP}_{name}", doc, labels=labels)
            if value is not None:
                g.add_metric((), value)
            return g

        def counter(name: str, doc: str, value: float | None = None,
                    labels: tuple[str, ...] = ()) -> CounterMetricFamily:
            c = CounterMetricFamily(f"{SUP}_{name}", doc, labels=labels)
            if value is not None:
                c.add_metric((), value)
            return c

        serving = st.state in (State.RUNNING, State.UNHEALTHY)
        yield gauge("server_up", "1 while the server serves (RUNNING or UNHEALTHY)",
                    1.0 if serving else 0.0)
        state = gauge("server_state", "1 for the server's current state", labels=("state",))
        for s in State:
            state.add_metric((s.value,), 1.0 if s is st.state else 0.0)
        yield state
        yield gauge("server_state_seconds", "Seconds in the current state", st.since_seconds)
        if st.instance is not None:
            yield gauge("server_start_time_seconds", "When the running instance started "
                        "(Unix seconds)", st.instance.started_at)
        restarts = counter("server_restarts", "Server restarts by why they happened",
                           labels=("reason",))
        for r in RestartReason:
            restarts.add_metric((r.value,), st.restarts_by_reason.get(r, 0))
        yield restarts
        yield gauge("server_consecutive_failures", "Failures in a row (the backoff's count)",
                    st.consecutive_failures)
        yield gauge("server_recent_failures", "Failures within restart.failure_window",
                    st.recent_failures)
        yield gauge("server_crash_looping", "1 while crash-looping", float(st.crash_looping))
        yield gauge("server_fatal", "1 when the supervisor gave up (FATAL)",
                    float(st.state is State.FATAL))
        if st.retry_in_seconds is not None:
            yield gauge("server_backoff_seconds", "Seconds until the next start attempt",
                        st.retry_in_seconds)
        findings = gauge("findings", "What `supervisorctl doctor` would report, by symptom",
                         labels=("symptom",))
        for symptom in Symptom:
            findings.add_metric((symptom.name.lower(),), st.findings_by_symptom.get(symptom, 0))
        yield findings
        failures = counter("server_failures", "Server failures by the cause its log named",
                           labels=("cause",))
        for c in Cause:
            failures.add_metric((c.value,), st.failures_by_cause.get(c, 0))
        yield failures
        last = gauge("server_last_failure", "1 for the cause of the latest failure",
                     labels=("cause",))
        for c in Cause:
            last.add_metric((c.value,), 1.0 if st.last_failure and
                            st.last_failure.cause is c else 0.0)
        yield last
        yield gauge("runtime_connected", "1 while the container engine (or process runtime) "
                    "answers", float(st.runtime_connected))
        cfg = st.config
        info = gauge("config_info", "The applied model config's revision and server spec",
                     labels=("revision", "spec"))
        if cfg.revision is not None:
            info.add_metric((cfg.revision, cfg.spec or ""), 1.0)
        yield info
        yield gauge("config_rejected", "1 while the latest config change is rejected",
                    float(cfg.rejected is not None))
        yield gauge("config_pending_files", "Model files still being written", len(cfg.pending))
        yield counter("config_checks", "Checks of the config files since start", cfg.checks)
        if cfg.last_check_at is not None:
            yield gauge("config_last_check_timestamp_seconds", "When the files were last "
                        "checked (Unix seconds)", cfg.last_check_at)
        outcome = gauge("config_last_check", "1 for what the latest check (reload, file "
                        "change) concluded", labels=("outcome",))
        for o in CheckOutcome:
            outcome.add_metric((o.value,), 1.0 if cfg.last_check is o else 0.0)
        yield outcome
        listed = gauge("model_listed", "1 when the server lists the model", labels=("model",))
        loaded = gauge("model_loaded", "1 when the model is loaded", labels=("model",))
        health = gauge("model_health", "1 for the model's health state",
                       labels=("model", "state"))
        model_restarts = gauge("model_restarts", "In-place restarts of the model (recent "
                               "window)", labels=("model",))
        for m in st.models:
            listed.add_metric((m.name,), float(m.listed))
            loaded.add_metric((m.name,), float(m.loaded))
            model_restarts.add_metric((m.name,), m.restarts)
            for h in ModelState:
                health.add_metric((m.name, h.value), 1.0 if m.health is h else 0.0)
        yield from (listed, loaded, health, model_restarts)
        yield counter("drains", "Planned stops that waited for requests in flight",
                      st.drain.drains)
        yield counter("drained_requests", "Requests a drain waited for",
                      st.drain.drained_requests)
        yield counter("cut_off_requests", "Requests still in flight when a drain timed out",
                      st.drain.cut_off_requests)


def exposition(registry: CollectorRegistry, gpus: list[GpuReading] | None = None) -> bytes:
    """The registry's metrics, and the GPU readings when given."""
    return generate_latest(registry) + (gpu_exposition(gpus) if gpus else b"")
