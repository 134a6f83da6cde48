"""diagnose(): exit status, the OOM flag and real log lines of LocalAI / llama-server -> cause.

The log lines are the messages these programs print (../shared/LOCALAI-NOTES.md, "The three
failures people see"); the surrounding lines are ordinary start-up noise.
"""

from __future__ import annotations

import pytest

from supervisor.classify import Cause, Diagnosis, diagnose

NOISE = [
    "11:02:03 INF Starting LocalAI using 8 threads, with models path: /models",
    "11:02:03 INF LocalAI version: v3.9.0",
    "llama_model_loader: - kv   0:                       general.architecture str = llama",
    "",
]

CUDA_OOM = ("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 8192.00 MiB on device 0: "
            "cudaMalloc failed: out of memory")
RPC_CANCELED = ("11:04:10 ERR Server error error=\"could not load model: rpc error: "
                "code = Canceled desc = \" ip=127.0.0.1 latency=2.1s method=POST "
                "status=500 url=/v1/chat/completions")
BACKEND_EOF = ("11:05:00 ERR Server error error=\"rpc error: code = Unavailable desc = error "
               "reading from server: EOF\" method=POST status=500 url=/v1/chat/completions")
FILE_MISSING = "failed to open /models/x.gguf: No such file or directory"
LOAD_FAILED = "llama_model_load: error loading model: unknown model architecture: 'bogus'"


@pytest.mark.parametrize(
    ("line", "cause"),
    [
        ("CUDA error: out of memory", Cause.CUDA_OOM),
        (CUDA_OOM, Cause.CUDA_OOM),
        ("alloc_tensor_range: failed to allocate CUDA0 buffer of size 4294967296",
         Cause.CUDA_OOM),
        (RPC_CANCELED, Cause.RPC_CANCELED),
        ("could not load model: rpc error: code = Canceled desc = ", Cause.RPC_CANCELED),
        (BACKEND_EOF, Cause.BACKEND_CRASHED),
        ("rpc error: code = Unavailable desc = connection error: desc = \"transport: Error "
         "while dialing: dial tcp 127.0.0.1:36021: connect: connection refused\"",
         Cause.BACKEND_CRASHED),
        (FILE_MISSING, Cause.MODEL_FILE_MISSING),
        ("gguf_init_from_file: failed to open GGUF file '/models/x.gguf' (No such file or "
         "directory)", Cause.MODEL_FILE_MISSING),
        ("stat /models/x.gguf: no such file or directory", Cause.MODEL_FILE_MISSING),
        (LOAD_FAILED, Cause.MODEL_LOAD_FAILED),
        ("model name=bad failed to load", Cause.MODEL_LOAD_FAILED),
        ("gguf_init_from_file_impl: invalid magic characters: 'xxxx', expected 'GGUF'",
         Cause.MODEL_LOAD_FAILED),
        ("llama_model_load_from_file_impl: failed to load model", Cause.MODEL_LOAD_FAILED),
        ("failed to load model 'big', try reducing --n-gpu-layers", Cause.MODEL_LOAD_FAILED),
    ],
)
def test_each_cause_from_a_real_log_line(line: str, cause: Cause) -> None:
    d = diagnose(1, False, [*NOISE, line, *NOISE])
    assert d.cause is cause
    assert d.evidence == line.strip()
    assert d.hint


def test_every_cause_has_a_distinct_hint() -> None:
    hints = {
        diagnose(1, False, [line]).hint
        for line in ("CUDA error: out of memory", RPC_CANCELED, BACKEND_EOF, FILE_MISSING,
                     LOAD_FAILED,
                     "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer "
                     "of size 8589934592",
                     "could not load model: rpc error: code = Canceled desc = context canceled",
                     'refusing to start: API bound to public address "0.0.0.0:8080" with no')
    }
    hints |= {diagnose(None, True, []).hint, diagnose(137, False, []).hint,
              diagnose(1, False, []).hint, diagnose(143, False, []).hint,
              diagnose(None, False, []).hint, diagnose(143, False, [], outage=True).hint}
    assert len(hints) == len(Cause)


def test_the_rpc_canceled_hint_points_at_the_backend_log() -> None:
    hint = diagnose(None, False, [RPC_CANCELED]).hint
    assert "before v3.10" in hint
    assert "backend log" in hint


# ---- precedence -----------------------------------------------------------------------------


@pytest.mark.parametrize("lines", [[], [CUDA_OOM], ["Killed"]], ids=repr)
@pytest.mark.parametrize("exit_code", [None, 0, 1, 137])
def test_the_oom_flag_wins(exit_code: int | None, lines: list[str]) -> None:
    d = diagnose(exit_code, True, lines)
    assert d.cause is Cause.OOM_KILLED
    assert d.evidence == "OOMKilled=true"


@pytest.mark.parametrize(
    ("lines", "cause"),
    [
        # The Canceled line is how LocalAI reports the OOM the backend printed before it.
        ([CUDA_OOM, RPC_CANCELED], Cause.CUDA_OOM),
        ([RPC_CANCELED, CUDA_OOM], Cause.CUDA_OOM),
        ([LOAD_FAILED, RPC_CANCELED], Cause.RPC_CANCELED),
        ([FILE_MISSING, LOAD_FAILED], Cause.MODEL_FILE_MISSING),
        ([LOAD_FAILED, BACKEND_EOF], Cause.BACKEND_CRASHED),
        # One line matching two rules: the earlier, more specific one.
        (["llama_model_load: error loading model: failed to open /models/x.gguf: No such "
          "file or directory"], Cause.MODEL_FILE_MISSING),
    ],
)
def test_the_most_specific_rule_wins(lines: list[str], cause: Cause) -> None:
    assert diagnose(1, False, [*NOISE, *lines]).cause is cause


def test_a_log_match_wins_over_the_exit_code() -> None:
    assert diagnose(137, False, [CUDA_OOM]).cause is Cause.CUDA_OOM
    assert diagnose(0, False, [BACKEND_EOF]).cause is Cause.BACKEND_CRASHED


def test_the_latest_matching_line_is_the_evidence() -> None:
    old = "failed to open /models/old.gguf: No such file or directory"
    d = diagnose(1, False, [old, *NOISE, FILE_MISSING, *NOISE])
    assert d.evidence == FILE_MISSING


def test_evidence_is_stripped_and_capped() -> None:
    d = diagnose(1, False, ["   CUDA error: out of memory " + "x" * 500 + "  \n"])
    assert d.evidence.startswith("CUDA error: out of memory")
    assert len(d.evidence) == 300


# ---- exit codes without a known line -------------------------------------------------------


@pytest.mark.parametrize("exit_code", [137, -9])
def test_sigkill_is_killed(exit_code: int) -> None:
    d = diagnose(exit_code, False, NOISE)
    assert d == Diagnosis(Cause.KILLED, d.hint, f"exit code {exit_code}")
    assert "SIGKILL" in d.hint


@pytest.mark.parametrize("exit_code", [1, 2, 139, -11, 255])
def test_other_nonzero_exit_is_crashed_with_the_last_line(exit_code: int) -> None:
    lines = ["main: loading model", "terminate called after throwing an instance of "
             "'std::runtime_error'", "  what():  bad config  ", "", "   "]
    d = diagnose(exit_code, False, lines)
    assert d.cause is Cause.CRASHED
    assert d.evidence == "what():  bad config"


def test_crashed_without_log_lines_names_the_exit_code() -> None:
    assert diagnose(3, False, []).evidence == "exit code 3"
    assert diagnose(3, False, ["", "  "]).evidence == "exit code 3"


def test_crashed_evidence_is_capped() -> None:
    assert len(diagnose(1, False, ["y" * 1000]).evidence) == 300


def test_an_unknown_exit_without_a_known_line_is_unknown() -> None:
    d = diagnose(None, False, NOISE)
    assert d.cause is Cause.UNKNOWN
    assert d.evidence == ""


@pytest.mark.parametrize("exit_code", [0, 143, -15])
def test_sigterm_or_a_clean_exit_nobody_asked_for_is_a_stop_from_outside(exit_code: int) -> None:
    # What the engine's own shutdown does to a container: not a crash of the server.
    d = diagnose(exit_code, False, NOISE)
    assert d.cause is Cause.STOPPED
    assert d.evidence == f"exit code {exit_code}"
    assert "container engine" in d.hint


def test_an_exit_found_after_an_engine_outage_is_the_outage() -> None:
    d = diagnose(143, False, [LOAD_FAILED], outage=True)
    assert d.cause is Cause.ENGINE_OUTAGE
    assert "not counted as a failure" in d.hint


def test_nothing_at_all_is_unknown() -> None:
    assert diagnose(None, False, []).cause is Cause.UNKNOWN


# ---- bugs -----------------------------------------------------------------------------------


def test_a_host_ram_allocation_failure_is_not_a_gpu_oom() -> None:
    line = ("ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size "
            "34359738368")
    assert diagnose(1, False, [line]).cause is not Cause.CUDA_OOM


def test_a_client_disconnect_is_not_the_old_load_failure_report() -> None:
    line = "could not load model: rpc error: code = Canceled desc = context canceled"
    assert diagnose(1, False, [line]).cause is not Cause.RPC_CANCELED


def test_localais_public_bind_refusal_is_named_with_the_fixes() -> None:
    """Captured from LocalAI's own message (core/cli/run_safety.go, v4.2.0+)."""
    lines = ["3:04PM INF Starting LocalAI using 8 threads",
             'Error: refusing to start: API bound to public address "0.0.0.0:40080" with no '
             "authentication configured."]
    diag = diagnose(1, False, lines)
    assert diag.cause is Cause.PUBLIC_BIND_REFUSED
    assert "gateway" in diag.hint and "--allow-insecure-public-bind" in diag.hint
    assert "0.0.0.0:40080" in diag.evidence
