"""What each engine asks the server (loaded models, probes, model restarts, activity) and how it
reads the answers. Pure: requests are described as ``Call``s, answers are fed in as text."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from supervisor.engines import Activity, Call, EngineAdapter, engine_for
from supervisor.engines.base import PROBE_PROMPT, metric_samples, openai_probe
from supervisor.engines.llamaserver import LlamaServerEngine
from supervisor.engines.localai import LocalAIEngine
from supervisor.settings import Engine

LLAMA = LlamaServerEngine()
LOCALAI = LocalAIEngine()

CHAT_BODY = {"model": "m", "max_tokens": 1, "temperature": 0,
             "messages": [{"role": "user", "content": PROBE_PROMPT}]}
EMBED_BODY = {"model": "m", "input": PROBE_PROMPT}

# llama-server --metrics, one model's child (b11434-style output, abridged).
LLAMA_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 240
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 95
# HELP llamacpp:n_decode_total Total number of llama_decode() calls
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 17
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode gauge
llamacpp:n_busy_slots_per_decode 1
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 0
"""

# LocalAI /metrics: the api_call histogram (OpenTelemetry exporter) plus Go runtime series.
LOCALAI_METRICS = """\
# HELP api_call_seconds Duration of API calls
# TYPE api_call histogram
api_call_bucket{method="POST",path="/v1/chat/completions",le="0.5"} 3
api_call_bucket{method="POST",path="/v1/chat/completions",le="+Inf"} 12
api_call_sum{method="POST",path="/v1/chat/completions"} 40.5
api_call_count{method="POST",path="/v1/chat/completions"} 12
api_call_count{method="POST",path="/v1/completions",otel_scope_name="LocalAI"} 3
api_call_count{method="POST",path="/v1/embeddings"} 5
api_call_count{method="POST",path="/v1/audio/transcriptions"} 1
api_call_count{method="GET",path="/v1/models"} 100
api_call_count{method="GET",path="/readyz"} 400
api_call_count{method="GET",path="/system"} 50
api_call_count{method="GET",path="/metrics"} 20
api_call_count{method="POST",path="/backend/shutdown"} 2
# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
"""


# ---- metric_samples (prometheus_client's text parser) -----------------------------------------


def test_metric_samples_of_plain_samples() -> None:
    assert metric_samples(LLAMA_METRICS, "llamacpp:n_decode_total") == [({}, 17.0)]
    assert metric_samples(LLAMA_METRICS, "llamacpp:requests_processing") == [({}, 1.0)]


def test_metric_samples_with_labels_skip_other_series_of_the_same_prefix() -> None:
    found = metric_samples(LOCALAI_METRICS, "api_call_count")
    assert found is not None
    assert found[0] == ({"method": "POST", "path": "/v1/chat/completions"}, 12.0)
    assert len(found) == 9  # not the _bucket or _sum series
    assert metric_samples(LOCALAI_METRICS, "api_call") == []  # histograms have no bare name
    assert metric_samples(LOCALAI_METRICS, "api_call_sum") == [
        ({"method": "POST", "path": "/v1/chat/completions"}, 40.5)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("# HELP x a counter\n# TYPE x counter\n", []),
        ("x 1\nx 2\n", [({}, 1.0), ({}, 2.0)]),
        ("x_total 1\nxx 2\n", []),  # other metrics that start with the name
        ("x 1e3\n", [({}, 1000.0)]),
        ("x +Inf\n", [({}, float("inf"))]),
        ('x{path="/a b"} 4\n', [({"path": "/a b"}, 4.0)]),  # a space inside a label value
        # Text that does not parse is an unknown reading, never a 0.
        ("x NaN-ish\nx 3\n", None),
        ("x\n", None),
    ],
    ids=repr,
)
def test_metric_samples_cases(text: str, expected: list[tuple[dict[str, str], float]] | None
                              ) -> None:
    assert metric_samples(text, "x") == expected


def test_metric_samples_with_a_timestamp() -> None:
    text = 'x{a="1"} 12 1700000000000\ny 3 1700000000000\n'
    assert metric_samples(text, "x") == [({"a": "1"}, 12.0)]
    assert metric_samples(text, "y") == [({}, 3.0)]



# ---- loaded_call / loaded_models ---------------------------------------------------------------


def test_llama_server_loaded_models_from_its_router_list() -> None:
    assert LLAMA.loaded_call() == Call("GET", "/models")
    body = {"object": "list", "data": [
        {"id": "a", "object": "model", "status": {"value": "loaded", "args": ["llama-server"]}},
        {"id": "b", "status": {"value": "loading"}},
        {"id": "c", "status": {"value": "unloaded"}},
        {"id": "d", "status": {"value": "unloaded", "failed": True, "exit_code": 1}},
        {"id": "e"},  # no status: not loaded as far as we know
        "junk",
    ]}
    assert LLAMA.loaded_models(body) == {"a": "loaded", "b": "loading", "c": "unloaded",
                                         "d": "failed", "e": "unloaded"}


def test_localai_loaded_models_from_system() -> None:
    assert LOCALAI.loaded_call() == Call("GET", "/system")
    body = {"backends": ["llama-cpp", "whisper"],
            "loaded_models": [{"id": "a", "backend": "llama-cpp"}, {"backend": "x"}, "junk",
                              {"id": "b", "backend": "whisper"}]}
    assert LOCALAI.loaded_models(body) == {"a": "loaded", "b": "loaded"}
    assert LOCALAI.loaded_models({"backends": [], "loaded_models": []}) == {}


@pytest.mark.parametrize("engine", [LLAMA, LOCALAI], ids=["llama-server", "localai"])
@pytest.mark.parametrize(
    "body", [None, [], "x", {}, {"data": None}, {"loaded_models": None},
             {"loaded_models": {"a": 1}}], ids=repr)
def test_loaded_models_on_unexpected_bodies(engine: EngineAdapter, body: Any) -> None:
    assert engine.loaded_models(body) == {}


# ---- probe_call ------------------------------------------------------------------------------


def test_openai_probe_is_the_smallest_real_request() -> None:
    assert openai_probe("m", False) == Call("POST", "/v1/chat/completions", CHAT_BODY)
    assert openai_probe("m", True, "?x=1") == Call("POST", "/v1/embeddings?x=1", EMBED_BODY)


@pytest.mark.parametrize(
    ("embeddings", "allow_load", "expected"),
    [
        (False, False, Call("POST", "/v1/chat/completions?autoload=false", CHAT_BODY)),
        (True, False, Call("POST", "/v1/embeddings?autoload=false", EMBED_BODY)),
        (False, True, Call("POST", "/v1/chat/completions", CHAT_BODY)),
        (True, True, Call("POST", "/v1/embeddings", EMBED_BODY)),
    ],
)
def test_llama_server_probe_never_loads_unless_allowed(embeddings: bool, allow_load: bool,
                                                       expected: Call) -> None:
    assert LLAMA.probe_call("m", embeddings, allow_load=allow_load) == expected


def test_llama_server_probe_defaults_to_no_load() -> None:
    assert LLAMA.probe_call("m", False).path.endswith("?autoload=false")


@pytest.mark.parametrize("allow_load", [False, True])
def test_localai_probe_has_no_load_switch(allow_load: bool) -> None:
    assert LOCALAI.probe_call("m", False, allow_load=allow_load) == Call(
        "POST", "/v1/chat/completions", CHAT_BODY)
    assert LOCALAI.probe_call("m", True, allow_load=allow_load) == Call(
        "POST", "/v1/embeddings", EMBED_BODY)


def test_probe_body_asks_for_one_token_of_the_named_model() -> None:
    for engine in (LLAMA, LOCALAI):
        body = engine.probe_call("qwen 2.5 & co", False).body
        assert body is not None
        assert body["model"] == "qwen 2.5 & co"
        assert body["max_tokens"] == 1


# ---- restart_model_calls ----------------------------------------------------------------------


def test_llama_server_restarts_a_model_by_unloading_and_loading_it() -> None:
    assert LLAMA.restart_model_calls("m") == [Call("POST", "/models/unload", {"model": "m"}),
                                              Call("POST", "/models/load", {"model": "m"})]


def test_localai_restarts_a_model_by_shutting_its_backend_down() -> None:
    assert LOCALAI.restart_model_calls("m") == [
        Call("POST", "/backend/shutdown", {"model": "m"})]


# ---- activity_calls / activity: llama-server ---------------------------------------------------


def test_llama_server_asks_each_loaded_model_without_loading_it() -> None:
    assert LLAMA.activity_calls(["a", "b"]) == [Call("GET", "/metrics?model=a&autoload=false"),
                                                Call("GET", "/metrics?model=b&autoload=false")]
    assert LLAMA.activity_calls([]) == []


def test_llama_server_activity_from_metrics() -> None:
    assert LLAMA.activity([(200, LLAMA_METRICS)]) == Activity(17.0, 1)


def test_llama_server_activity_sums_over_models() -> None:
    other = LLAMA_METRICS.replace("n_decode_total 17", "n_decode_total 3").replace(
        "requests_processing 1", "requests_processing 2").replace(
        "requests_deferred 0", "requests_deferred 4")
    assert LLAMA.activity([(200, LLAMA_METRICS), (200, other)]) == Activity(20.0, 7)


def test_llama_server_activity_of_no_loaded_model_is_idle() -> None:
    assert LLAMA.activity([]) == Activity(0.0, 0)


def test_llama_server_activity_skips_a_model_unloaded_since_we_asked() -> None:
    gone = (400, '{"error":{"code":400,"message":"model is not loaded","type":'
                 '"invalid_request_error"}}')
    assert LLAMA.activity([(200, LLAMA_METRICS), gone]) == Activity(17.0, 1)


@pytest.mark.parametrize(
    "answer",
    [
        (0, "no answer within 10s"),
        (0, "ClientConnectorError: Cannot connect to host 127.0.0.1:8080"),
        (404, "Not Found"),
        (501, '{"error":{"code":501,"message":"This server does not support metrics endpoint.'
              ' Start it with `--metrics`"}}'),
        (503, '{"error":{"message":"Loading model"}}'),
        (400, "model limit reached, try again later"),
    ],
    ids=repr,
)
def test_llama_server_activity_is_unknown_after_any_other_answer(
        answer: tuple[int, str]) -> None:
    assert LLAMA.activity([(200, LLAMA_METRICS), answer]) == Activity(None, None)
    assert LLAMA.activity([answer, (200, LLAMA_METRICS)]) == Activity(None, None)


def test_llama_server_activity_without_the_series_counts_zero() -> None:
    assert LLAMA.activity([(200, "# nothing here\n")]) == Activity(0.0, 0)


@pytest.mark.parametrize("name", ["a&b", "x+y"])
def test_llama_server_activity_call_encodes_the_model_name(name: str) -> None:
    (call,) = LLAMA.activity_calls([name])
    query = parse_qs(urlsplit(call.path).query, strict_parsing=True)
    assert query == {"model": [name], "autoload": ["false"]}


# ---- activity_calls / activity: LocalAI --------------------------------------------------------


def test_localai_reads_metrics_and_each_loaded_backends_monitor() -> None:
    assert LOCALAI.activity_calls(["a", "b&c"]) == [
        Call("GET", "/metrics"), Call("GET", "/backend/monitor?model=a"),
        Call("GET", "/backend/monitor?model=b%26c")]
    assert LOCALAI.activity_calls([]) == [Call("GET", "/metrics")]


def test_localai_in_flight_from_backend_monitors() -> None:
    busy, ready = (200, '{"state": 1, "memory": {}}'), (200, '{"state": 2}')
    assert LOCALAI.activity([(200, LOCALAI_METRICS), busy, ready]) == Activity(21.0, 1)
    assert LOCALAI.activity([(200, LOCALAI_METRICS), ready]) == Activity(21.0, 0)
    # The llama.cpp backend does not implement Status: an error makes in-flight unknown.
    err = (500, '{"error": {"message": "method Status not implemented"}}')
    assert LOCALAI.activity([(200, LOCALAI_METRICS), ready, err]) == Activity(21.0, None)


def test_localai_activity_counts_inference_calls_only() -> None:
    # 12 chat + 3 completions + 5 embeddings + 1 audio; models, health, system, metrics and
    # backend calls are not work; nothing loaded, so nothing in flight.
    assert LOCALAI.activity([(200, LOCALAI_METRICS)]) == Activity(21.0, 0)


def test_localai_activity_without_calls_yet() -> None:
    assert LOCALAI.activity([(200, "# HELP go_goroutines x\ngo_goroutines 7\n")]) == Activity(
        0.0, 0)


@pytest.mark.parametrize("status", [0, 401, 404, 500])
def test_localai_activity_is_unknown_without_a_metrics_page(status: int) -> None:
    assert LOCALAI.activity([(status, "Unauthorized")]) == Activity(None, None)


# ---- both engines through the adapter interface ------------------------------------------------


@pytest.mark.parametrize("kind", list(Engine))
def test_engines_describe_calls_and_never_load_to_read_activity(kind: Engine) -> None:
    engine = engine_for(kind)
    calls = [engine.loaded_call(), *engine.activity_calls(["m"]),
             engine.probe_call("m", False)]
    assert all(c.method == "GET" for c in calls[:-1])
    for call in calls:
        assert call.path.startswith("/")
        assert "autoload=true" not in call.path


def test_the_router_log_filter_keeps_one_models_lines_by_its_childs_port() -> None:
    from supervisor.engines.llamaserver import RouterLogFilter

    log = [
        "0.00.578.564 I srv  ensure_model: slot available, loading queued model name=tiny-a",
        "0.00.578.600 I srv          load: spawning server instance with name=tiny-a on port 41677",
        "[41677] 0.00.003.975 I srv    load_model: loading model 'tiny-a.gguf'",
        "0.03.807.774 I srv        unload: stopping model instance name=tiny-a",
        "0.13.850.643 I srv          load: spawning server instance with name=tiny-b on port 52477",
        "[52477] 0.00.004.025 I srv    load_model: loading model 'tiny-b.gguf'",
        "0.14.743.305 I srv  ensure_model: slot available, loading queued model name=tiny-ab",
        "0.14.743.366 I srv          load: spawning server instance with name=tiny-a on port 39971",
        "[41677] a late line of the old child",
        "[39971] 0.00.003.906 I srv    load_model: loading model 'tiny-a.gguf'",
    ]
    accept = RouterLogFilter("tiny-a").accept
    assert [line for line in log if accept(line)] == [log[0], log[1], log[2], log[3], log[7],
                                                      log[9]]
