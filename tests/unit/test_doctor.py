"""doctor's rules, each with a case that triggers it and one that does not: load failures read
from the backend's own output (captured llama-server logs in tests/data/captured/, LocalAI's
lines as its source prints them), the host rules, and the report on the original config."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor import doctor
from supervisor.checkup import offline_report
from supervisor.doctor import HostFacts, ModelFit, Symptom, from_load_log, host_rules
from supervisor.settings import Engine, Settings

DATA = Path(__file__).resolve().parents[1] / "data"
GIB = 1024**3


def captured(name: str) -> list[str]:
    return [ln for ln in (DATA / "captured" / name).read_text().splitlines()
            if not ln.startswith("#")]


# ---- could not load model: the real cause from the backend's output ---------------------


@pytest.mark.parametrize(("log", "code", "evidence"), [
    ("llama-server-unknown-architecture.log", "load-unknown-architecture",
     "unknown model architecture: 'nosucharch'"),
    ("llama-server-wrong-tensor-shape.log", "load-bad-file",
     "tensor 'blk.0.attn_q.weight' has wrong shape"),
])
def test_captured_llama_server_load_failures_are_named(log: str, code: str,
                                                       evidence: str) -> None:
    f = from_load_log("m", "model name=m failed to load", captured(log), [], False)
    assert f is not None and f.code == code and f.symptom is Symptom.LOAD_FAILS
    assert any(evidence in e for e in f.evidence) and f.evidence[0].startswith("error: ")
    if code == "load-unknown-architecture":
        assert "'nosucharch'" in f.message and "newer" in f.fix


# LocalAI's own wording (pkg/model/initializers.go, grpc errors) and the llama.cpp backend's
# stderr lines as llama.cpp prints them.
CANCELED = "could not load model: rpc error: code = Canceled desc = "


@pytest.mark.parametrize(("lines", "others", "code", "says"), [
    (["ggml_backend_cuda_buffer_type_alloc_buffer: allocating 7168.00 MiB on device 0: "
      "cudaMalloc failed: out of memory"], ["karakuri-70b"], "load-out-of-memory",
     "with karakuri-70b resident"),
    (["llama_kv_cache_unified: failed to allocate buffer for kv cache: out of memory"], [],
     "load-context-too-large", "KV cache"),
    (["failed to load model, try reducing --n-gpu-layers"], [], "load-gpu-layers", "layers"),
    (["gguf_init_from_file_impl: failed to read magic"], [], "load-bad-file", "damaged"),
])
def test_load_failures_behind_the_canceled_error(lines: list[str], others: list[str],
                                                 code: str, says: str) -> None:
    f = from_load_log("vicuna-13b", CANCELED, ["some other line", *lines], others, True)
    assert f is not None and f.code == code and says in f.message
    assert f.evidence[0] == f"error: {CANCELED}"
    assert lines[0][:60] in f.evidence[1]


def test_the_canceled_error_with_no_cause_in_the_log_says_where_to_look() -> None:
    f = from_load_log("m", CANCELED, ["nothing useful"], [], True)
    assert f is not None and f.code == "load-cause-hidden"
    assert "not a cancellation" in f.message and "LOCALAI_LOG_LEVEL=debug" in f.fix


def test_from_v3_10_a_load_error_without_a_known_cause_is_not_called_hidden() -> None:
    internal = ("could not load model: rpc error: code = Internal desc = Failed to load "
                "model: x.gguf. Error: something new")
    assert from_load_log("m", internal, [], [], version_hides_cause=False) is None
    assert from_load_log("m", internal, [], [], version_hides_cause=True) is not None


@pytest.mark.parametrize(("error", "code"), [
    ("rpc error: code = Unavailable desc = error reading from server: EOF",
     "load-backend-crashed"),
    ("rpc error: code = Unavailable desc = connection error: dial tcp 127.0.0.1:41231: "
     "connect: connection refused", "load-backend-refused"),
])
def test_other_grpc_errors_are_decoded(error: str, code: str) -> None:
    f = from_load_log("m", error, [], [], False)
    assert f is not None and f.code == code


def test_no_error_and_no_cause_is_no_finding() -> None:
    assert from_load_log("m", None, ["all fine"], [], False) is None


# ---- host rules ---------------------------------------------------------------------------


def host(**changes: object) -> HostFacts:
    base: dict[str, object] = dict(
        engine=Engine.LOCALAI, process_runtime=False, single_active_backend=True, gateway=True,
        gpu_memory_bytes=24 * GIB, gpu_memory_source="NVML", memlock_soft_bytes=8 << 20,
        environment={})
    return HostFacts(**{**base, **changes})  # type: ignore[arg-type]


def fit(name: str = "m", size: float = 8, need: float = 10, mmlock: bool = False,
        mmap: bool | None = None) -> ModelFit:
    return ModelFit(name, int(size * GIB), 4096, int(need * GIB), mmlock, mmap)


def codes(found: list[doctor.DoctorFinding]) -> list[str]:
    return [f.code for f in found]


def test_a_model_bigger_than_the_gpu() -> None:
    assert codes(host_rules([fit(need=30)], host())) == ["model-does-not-fit"]
    assert host_rules([fit(need=20)], host()) == []
    assert host_rules([fit(need=30)], host(gpu_memory_bytes=None)) == []


def test_mmlock_over_the_memlock_limit_only_matters_for_the_process_runtime() -> None:
    f = host_rules([fit(mmlock=True)], host(process_runtime=True))
    assert codes(f) == ["mmlock-limit"] and f[0].snippet == "mmlock: false\n"
    # Docker: the supervisor gives the container an unlimited memlock ulimit.
    assert host_rules([fit(mmlock=True)], host()) == []
    assert host_rules([fit(mmlock=True)], host(process_runtime=True,
                                               memlock_soft_bytes=None)) == []


def test_mmap_off_makes_every_swap_a_cold_load() -> None:
    f = host_rules([fit(mmap=False)], host())
    assert codes(f) == ["mmap-off"] and f[0].symptom is Symptom.SLOW_SWAPS
    assert host_rules([fit(mmap=True)], host()) == []


def test_the_busy_watchdog_cuts_long_generations() -> None:
    f = host_rules([fit()], host(environment={"LOCALAI_WATCHDOG_BUSY": "true",
                                              "LOCALAI_WATCHDOG_BUSY_TIMEOUT": "2m"}))
    assert codes(f) == ["watchdog-busy"] and "2m" in f[0].message
    assert f[0].symptom is Symptom.CUT_OFF
    assert host_rules([fit()], host(environment={"LOCALAI_WATCHDOG_BUSY": "false"})) == []


def test_two_models_with_one_backend_need_the_gateway() -> None:
    two = [fit("a"), fit("b")]
    assert codes(host_rules(two, host(gateway=False))) == ["second-model-needs-gateway"]
    assert host_rules(two, host()) == []
    assert host_rules(two, host(gateway=False, engine=Engine.LLAMA_SERVER)) == []
    assert host_rules([fit("a")], host(gateway=False)) == []


def test_every_rule_names_its_symptom_and_versions() -> None:
    for code, rule in doctor.RULES.items():
        assert rule.symptom in Symptom and rule.versions, code


# ---- the report on the original setup's config ------------------------------------------


@pytest.fixture
def original(tmp_path: Path) -> Settings:
    from original import write_original

    config, models = write_original(tmp_path)
    s = Settings()
    return s.model_copy(update={
        "server": s.server.model_copy(update={"model_config_file": config,
                                              "models_dir": models, "gpu_memory_gb": 24.0}),
        "localai": s.localai.model_copy(update={"version": "v3.9.0"})})


def test_the_original_config_explained_by_symptom(original: Settings) -> None:
    report = offline_report(original)
    assert report.engine_version == "v3.9.0" and not report.live
    groups = report.by_symptom()
    # gpu_layers 41 / 33 / 81 are each model's blocks + 1: nothing about loading.
    assert list(groups) == [Symptom.CUT_OFF, Symptom.SPECIAL_TOKENS, Symptom.OTHER]
    by = {(f.model, f.code): f for f in report.findings}
    cut = by[("vicuna-13b", "context-too-small")]
    assert "about 511 tokens per request split over 8" in cut.message
    assert cut.snippet == "context_size: 8192\n"
    assert any(e.endswith("config.yaml:6 (vicuna-13b.context_size)") for e in cut.evidence)
    # Llama-2/Mistral: the next turn's [INST] is the stopword, never [/INST].
    inst = by[("karakuri-8x7b", "template-end-marker")]
    assert "'[INST]'" in inst.message and "[/INST]" not in inst.message
    assert inst.snippet == 'stopwords:\n- "</s>"\n- "[INST]"\n'
    moved = by[("karakuri-70b", "chat-is-per-message")]
    assert "template.chat_message" in moved.fix and "insert" not in moved.fix
    assert by[("vicuna-13b", "special-tokens")].evidence[-1] == \
        "GGUF tokenizer.ggml.eos_token_id -> '</s>'"
    assert ("vicuna-13b", "unknown-key") in by  # the ignored top-level batch
    text = doctor.render(report)
    assert text.startswith("localai v3.9.0, from setting; offline")
    assert "== answers cut off (" in text and "      context_size: 8192" in text


def test_on_v4_9_the_unified_kv_cache_is_no_cut_off(original: Settings) -> None:
    newer = original.model_copy(update={"localai": original.localai.model_copy(
        update={"version": "v4.9.0"})})
    report = offline_report(newer)
    assert not [f for f in report.findings if f.code == "context-too-small"]


def test_one_model(original: Settings) -> None:
    report = offline_report(original, "karakuri-70b")
    assert {f.model for f in report.findings} == {"karakuri-70b"}


def test_the_readme_shows_real_doctor_output(original: Settings) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    shown = readme.split("$ supervisorctl doctor karakuri-8x7b\n", 1)[1].split("```", 1)[0]
    text = doctor.render(offline_report(original, "karakuri-8x7b"))
    text = text.replace(str(original.server.model_config_file), "/etc/localai/config.yaml")
    assert shown == text
