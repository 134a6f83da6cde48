"""Failure classification: turn an exit code, the OOM flag and log lines into a cause + hint.

Pure. The patterns are the messages LocalAI, its llama.cpp backend and llama-server print
(../shared/LOCALAI-NOTES.md, "The three failures people see").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Cause(StrEnum):
    OOM_KILLED = "oom-killed"
    CUDA_OOM = "cuda-out-of-memory"
    HOST_OOM = "host-out-of-memory"
    CLIENT_GONE = "client-disconnected"
    RPC_CANCELED = "rpc-canceled"
    BACKEND_CRASHED = "backend-crashed"
    MODEL_FILE_MISSING = "model-file-missing"
    MODEL_LOAD_FAILED = "model-load-failed"
    KILLED = "killed"
    # SIGTERM or a clean exit nobody asked for: the container engine's own shutdown, or a
    # person (docker stop, kill).
    STOPPED = "stopped"
    ENGINE_OUTAGE = "engine-outage"
    # LocalAI v4.2.0+ will not listen on a public address without authentication.
    PUBLIC_BIND_REFUSED = "public-bind-refused"
    CRASHED = "crashed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Diagnosis:
    cause: Cause
    hint: str
    evidence: str = ""


# Checked in order: the first match wins, so specific causes come before generic ones.
_RULES: tuple[tuple[Cause, re.Pattern[str], str], ...] = (
    (Cause.PUBLIC_BIND_REFUSED, re.compile(
        r"refusing to start: API bound to public address", re.I),
     "LocalAI v4.2.0+ refuses to listen on a public address with no authentication "
     "(core/cli/run_safety.go): keep the gateway on ([gateway] enabled: the server then "
     "listens on 127.0.0.1 and the gateway takes the public port), or set server.listen_host "
     "to a private address, or add \"--allow-insecure-public-bind\" to localai.extra_args "
     "if something else gates access"),
    (Cause.CUDA_OOM, re.compile(
        r"CUDA error: out of memory|cudaMalloc failed: out of memory|"
        r"ggml_backend_cuda\w*: (allocating .* failed|failed to allocate)|"
        r"failed to allocate CUDA\d* buffer", re.I),
     "GPU memory ran out: lower gpu_layers or context_size, or serve one model at a time "
     "(server.single_active_backend = true)"),
    (Cause.HOST_OOM, re.compile(
        r"ggml_backend_cpu\w*: failed to allocate|failed to allocate .*buffer of size|"
        r"std::bad_alloc", re.I),
     "host RAM ran out while loading: lower context_size, serve one model at a time, or "
     "give the server more memory (more gpu_layers only helps if GPU memory is free)"),
    (Cause.CLIENT_GONE, re.compile(r"code = Canceled desc = context canceled", re.I),
     "a client disconnected while its model was still loading (LocalAI v4.3.2+ then abandons "
     "the load): not a fault of the model; the next request loads it again"),
    (Cause.RPC_CANCELED, re.compile(r"rpc error: code = Canceled", re.I),
     "LocalAI before v3.10 reports every backend load failure as Canceled: the real cause is "
     "in the backend log (usually (V)RAM taken by another resident model, or a context guessed "
     "from the GGUF); set context_size and server.single_active_backend = true"),
    (Cause.BACKEND_CRASHED, re.compile(
        r"code = Unavailable desc = error reading from server: EOF|"
        r"code = Unavailable.*connection refused", re.I),
     "the model's backend process crashed or was killed mid-request; see the lines before it"),
    (Cause.MODEL_FILE_MISSING, re.compile(
        r"(No such file or directory|does not exist|failed to open).*\.gguf|"
        r"\.gguf.*(No such file or directory|does not exist)", re.I),
     "a model file named in config.yaml is missing inside the container: check models_dir "
     "and parameters.model"),
    (Cause.MODEL_LOAD_FAILED, re.compile(
        r"error loading model|failed to load model|failed to read magic|"
        r"model name=\S+ failed to load|llama_model_load: error|"
        r"try reducing --n-gpu-layers|invalid magic|unknown model architecture", re.I),
     "the model file could not be loaded (corrupt, truncated, or an architecture this "
     "engine version does not know): `supervisorctl check` inspects it"),
)


def diagnose(exit_code: int | None, oom_killed: bool, log_lines: Sequence[str],
             *, outage: bool = False) -> Diagnosis:
    """The likeliest cause of a failure, most specific evidence first."""
    if outage:
        return Diagnosis(Cause.ENGINE_OUTAGE, "the container engine went away and the server "
                         "stopped with it (an engine restart without live-restore); it is "
                         "started again when the engine is back, not counted as a failure",
                         f"found stopped after the engine came back (exit code {exit_code})")
    if oom_killed:
        return Diagnosis(Cause.OOM_KILLED, "the kernel OOM killer stopped the server: the models "
                         "need more RAM than it may use; lower context_size, serve one model "
                         "at a time, or raise the container's memory limit", "OOMKilled=true")
    for cause, pattern, hint in _RULES:
        for line in reversed(log_lines):
            if pattern.search(line):
                return Diagnosis(cause, hint, line.strip()[:300])
    if exit_code in (143, -15, 0):
        return Diagnosis(Cause.STOPPED, "stopped on request (SIGTERM or a clean exit) by "
                         "someone other than the supervisor: the container engine shutting "
                         "down, docker stop, or a kill", f"exit code {exit_code}")
    if exit_code is not None and (exit_code == 137 or exit_code == -9):
        return Diagnosis(Cause.KILLED, "killed with SIGKILL (by a person, a watchdog, or the "
                         "OOM killer without a record)", f"exit code {exit_code}")
    if exit_code is not None and exit_code != 0:
        tail = next((ln.strip() for ln in reversed(log_lines) if ln.strip()), "")
        return Diagnosis(Cause.CRASHED, "the server exited with an error; its last log lines "
                         "say why", tail[:300] or f"exit code {exit_code}")
    return Diagnosis(Cause.UNKNOWN, "no known cause in the exit status or the log", "")
