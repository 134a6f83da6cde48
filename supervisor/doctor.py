"""``supervisorctl doctor``: the quiet failures explained, grouped by the symptom people see.

Pure. Findings come from three places: the config's lint (file:line, GGUF metadata), rules
over the settings and the host (fit in GPU memory, the memlock limit, watchdogs), and, on a
running daemon, what the engine said when a model failed to load (its own log lines). Every
rule names the engine versions it applies to (``RULES``); the report names the version it
was run for. The mechanisms are in ../shared/LOCALAI-NOTES.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from .findings import Problem, Severity
from .settings import Engine

GIB = 1024**3


class Symptom(StrEnum):
    CUT_OFF = "answers cut off"
    SPECIAL_TOKENS = "special tokens in answers"
    LOAD_FAILS = "could not load model"
    SLOW_SWAPS = "slow swaps"
    OTHER = "other"


@dataclass(frozen=True)
class Rule:
    symptom: Symptom
    versions: str


# Every rule doctor reports: the symptom it explains and the versions it applies to.
RULES: Mapping[str, Rule] = {
    "context-too-small": Rule(Symptom.CUT_OFF, "LocalAI before v4.3.0 without kv_unified:true, "
                              "or kv_unified:false (the context is split per slot); "
                              "llama-server with parallel:N and without kv_unified:true"),
    "context-size-unset": Rule(Symptom.CUT_OFF, "LocalAI: 512 tokens up to v2.26; the trained "
                               "window v2.27-v4.6.0; capped at 8192 from v4.6.1"),
    "context-exceeds-training": Rule(Symptom.CUT_OFF, "every version"),
    "max-tokens-unset": Rule(Symptom.CUT_OFF, "every version"),
    "parallel-overridden": Rule(Symptom.CUT_OFF, "LocalAI: LLAMACPP_PARALLEL overrides parallel:1 "
                                "from v3.8.0; no parallel option before"),
    "watchdog-busy": Rule(Symptom.CUT_OFF, "LocalAI with LOCALAI_WATCHDOG_BUSY (every version)"),
    "smoke-cut-off": Rule(Symptom.CUT_OFF, "every version (LocalAI says finish_reason \"stop\" on "
                          "a context cut; \"length\" only for max_tokens, v4.5.6+)"),
    "special-tokens": Rule(Symptom.SPECIAL_TOKENS, "LocalAI with a Go template; before v3.8.0 "
                           "also a config with no template"),
    "template-end-marker": Rule(Symptom.SPECIAL_TOKENS, "LocalAI with Go templates (not "
                                "use_tokenizer_template on v3.8.0+)"),
    "template-family-mismatch": Rule(Symptom.SPECIAL_TOKENS, "LocalAI with Go templates; "
                                     "the fix (use_tokenizer_template) from v3.8.0"),
    "trimsuffix-streamed": Rule(Symptom.SPECIAL_TOKENS, "LocalAI, every version (checked "
                                "at v4.9.0: Finetune runs on the finished answer only)"),
    "f16-quantised": Rule(Symptom.OTHER, "LocalAI's llama.cpp backend (checked at v4.9.0)"),
    "chat-is-per-message": Rule(Symptom.SPECIAL_TOKENS, "LocalAI, every version"),
    "chat-message-input": Rule(Symptom.SPECIAL_TOKENS, "LocalAI, every version"),
    "template-ignores-input": Rule(Symptom.SPECIAL_TOKENS, "LocalAI, every version"),
    "tokenizer-template-unsupported": Rule(Symptom.SPECIAL_TOKENS, "LocalAI before v3.8.0"),
    "tokenizer-template-missing": Rule(Symptom.SPECIAL_TOKENS, "LocalAI v3.8.0+"),
    "smoke-special-token": Rule(Symptom.SPECIAL_TOKENS, "every version"),
    "models-do-not-fit": Rule(Symptom.LOAD_FAILS, "LocalAI v3.10.0+ with one active backend "
                              "(a busy model is not unloaded); any version with several"),
    "model-does-not-fit": Rule(Symptom.LOAD_FAILS, "every version"),
    "gpu-layers-exceed": Rule(Symptom.LOAD_FAILS, "every version"),
    "mmlock-limit": Rule(Symptom.LOAD_FAILS, "every version (the process runtime inherits the "
                         "supervisor's memlock limit)"),
    "load-out-of-memory": Rule(Symptom.LOAD_FAILS, "every version"),
    "load-context-too-large": Rule(Symptom.LOAD_FAILS, "every version"),
    "load-gpu-layers": Rule(Symptom.LOAD_FAILS, "every version"),
    "load-unknown-architecture": Rule(Symptom.LOAD_FAILS, "engine builds older than the model's "
                                      "architecture"),
    "load-bad-file": Rule(Symptom.LOAD_FAILS, "every version"),
    "load-backend-crashed": Rule(Symptom.LOAD_FAILS, "LocalAI (gRPC Unavailable: EOF)"),
    "load-backend-refused": Rule(Symptom.LOAD_FAILS, "LocalAI (gRPC Unavailable: connection "
                                 "refused)"),
    "load-cause-hidden": Rule(Symptom.LOAD_FAILS, "LocalAI up to v3.9.x (every load failure "
                              "reads code = Canceled)"),
    "second-model-needs-gateway": Rule(Symptom.LOAD_FAILS, "LocalAI v3.10.0+ with one active "
                                       "backend"),
    "mmap-off": Rule(Symptom.SLOW_SWAPS, "every version"),
}


class DoctorFinding(BaseModel):
    model_config = ConfigDict(frozen=True)

    symptom: Symptom
    code: str
    severity: Severity
    model: str | None
    message: str
    evidence: list[str] = Field(description="file:line, GGUF keys, log lines it rests on")
    fix: str
    snippet: str | None = Field(description="the fix as YAML to paste into the model's entry")
    versions: str = Field(description="the engine versions this rule applies to")


class DoctorReport(BaseModel):
    engine: Engine
    engine_version: str | None = Field(description="the version the rules were chosen for")
    version_source: str | None
    live: bool = Field(description="a running daemon answered (state and logs included)")
    findings: list[DoctorFinding]

    def by_symptom(self) -> dict[Symptom, list[DoctorFinding]]:
        out: dict[Symptom, list[DoctorFinding]] = {}
        for f in self.findings:
            out.setdefault(f.symptom, []).append(f)
        return {s: out[s] for s in Symptom if s in out}


def symptom_of(code: str) -> Symptom:
    rule = RULES.get(code)
    return rule.symptom if rule else Symptom.OTHER


def _finding(code: str, model: str | None, message: str, evidence: list[str], fix: str,
             snippet: str | None = None, severity: Severity = Severity.WARNING
             ) -> DoctorFinding:
    rule = RULES.get(code)
    return DoctorFinding(symptom=rule.symptom if rule else Symptom.OTHER, code=code,
                         severity=severity, model=model, message=message, evidence=evidence,
                         fix=fix, snippet=snippet,
                         versions=rule.versions if rule else "every version")


def from_problems(problems: Iterable[Problem]) -> list[DoctorFinding]:
    """Lint warnings and config errors, located in their file."""
    out = []
    for p in problems:
        where = str(p.file) + (f":{p.line}" if p.line else "")
        out.append(_finding(p.code, p.model, p.message,
                            [where + (f" ({p.field})" if p.field else ""), *p.evidence],
                            p.hint or "", p.snippet, p.severity))
    return out


@dataclass(frozen=True)
class ModelFit:
    """One model's size as the fit rules count it."""

    name: str
    file_size: int | None
    context_size: int | None
    bytes_needed: int | None
    mmlock: bool
    mmap: bool | None


@dataclass(frozen=True)
class HostFacts:
    """What the rules need of the settings and the host."""

    engine: Engine
    process_runtime: bool
    single_active_backend: bool
    gateway: bool
    gpu_memory_bytes: int | None
    gpu_memory_source: str
    memlock_soft_bytes: int | None  # None: unlimited
    environment: Mapping[str, str]


def host_rules(models: Sequence[ModelFit], host: HostFacts) -> list[DoctorFinding]:
    out: list[DoctorFinding] = []
    gpu = host.gpu_memory_bytes
    for m in models:
        if gpu is not None and m.bytes_needed is not None and m.bytes_needed > gpu:
            out.append(_finding(
                "model-does-not-fit", m.name,
                f"{m.name} needs up to {m.bytes_needed / GIB:.1f} GiB (file + KV cache for "
                f"context_size {m.context_size}) but the GPU has {gpu / GIB:.1f} GiB "
                f"({host.gpu_memory_source}): with every layer offloaded the load fails "
                "(out of memory, shown by LocalAI before v3.10 as rpc error: code = Canceled)",
                [f"GPU memory {gpu / GIB:.1f} GiB ({host.gpu_memory_source})",
                 f"model file {(m.file_size or 0) / GIB:.2f} GiB"],
                "lower context_size, offload fewer layers, or use a smaller quantisation",
                f"context_size: {max(512, (m.context_size or 4096) // 2)}\ngpu_layers: <fewer>\n"))
        if m.mmlock and host.process_runtime and host.memlock_soft_bytes is not None \
                and m.file_size and m.file_size > host.memlock_soft_bytes:
            out.append(_finding(
                "mmlock-limit", m.name,
                f"{m.name} sets mmlock: true but the server may lock only "
                f"{host.memlock_soft_bytes / 2**20:.0f} MiB (the supervisor's RLIMIT_MEMLOCK, "
                f"which the process runtime passes on) of its {m.file_size / 2**20:.0f} MiB: "
                "the lock fails and the load with it",
                [f"RLIMIT_MEMLOCK {host.memlock_soft_bytes} bytes"],
                "raise the limit (LimitMEMLOCK=infinity in a drop-in for the unit), or set "
                "mmlock: false", "mmlock: false\n"))
        if m.mmap is False:
            out.append(_finding(
                "mmap-off", m.name,
                f"{m.name} sets mmap: false: every load reads the whole file again instead of "
                "mapping it from the page cache, so each swap back to it is as slow as a cold "
                "start", [f"mmap: false ({(m.file_size or 0) / GIB:.2f} GiB file)"],
                "remove mmap: false unless the file sits on storage that cannot be mapped",
                "mmap: true\n"))
    if host.engine is Engine.LOCALAI:
        busy = host.environment.get("LOCALAI_WATCHDOG_BUSY", "").strip().lower()
        if busy in ("1", "true", "yes"):
            limit = host.environment.get("LOCALAI_WATCHDOG_BUSY_TIMEOUT", "5m")
            out.append(_finding(
                "watchdog-busy", None,
                f"LOCALAI_WATCHDOG_BUSY is on: LocalAI kills any backend busy for longer than "
                f"{limit} (LOCALAI_WATCHDOG_BUSY_TIMEOUT), so a long generation is cut off "
                "mid-answer",
                [f"localai.environment LOCALAI_WATCHDOG_BUSY={busy}"],
                "remove LOCALAI_WATCHDOG_BUSY (the supervisor's own probes find hung models "
                "and tell them from busy ones), or raise LOCALAI_WATCHDOG_BUSY_TIMEOUT"))
        if host.single_active_backend and not host.gateway and len(models) > 1:
            out.append(_finding(
                "second-model-needs-gateway", None,
                "one active backend and the gateway off: on LocalAI v3.10.0+ a request for a "
                "second model while the first is busy waits 30 x 1 s, then loads it beside "
                "the busy one (out of memory: could not load model: rpc error)",
                ["[gateway] enabled = false", "server.single_active_backend = true"],
                "set [gateway] enabled = true: it queues that request until the first model "
                "is idle"))
    return out


# Load failures, read from the backend's own output: (code, pattern, message, fix, snippet).
_LOAD_RULES: tuple[tuple[str, re.Pattern[str], str, str, str | None], ...] = (
    ("load-unknown-architecture", re.compile(r"unknown model architecture: '([^']+)'"),
     "the engine does not know the model's architecture {0!r}: its llama.cpp is older than "
     "the model", "run a newer engine version (or server.engine = \"llama-server\" with a "
     "newer build)", None),
    ("load-gpu-layers", re.compile(r"try reducing --n-gpu-layers|n_gpu_layers", re.I),
     "the weights of the layers asked for do not fit in GPU memory",
     "offload fewer layers", "gpu_layers: <fewer>\n"),
    ("load-context-too-large", re.compile(
        r"(kv[ _]?cache|kv self|llama_init_from_model|failed to initialize the context)"
        r".*(out of memory|failed to allocate|failed)", re.I),
     "the KV cache for this context does not fit in memory",
     "lower context_size (or the parallel slots it is split over)", "context_size: <smaller>\n"),
    ("load-out-of-memory", re.compile(
        r"CUDA error: out of memory|cudaMalloc failed: out of memory|failed to allocate CUDA|"
        r"ggml_backend_cuda\w*: .*(failed|allocating)|std::bad_alloc", re.I),
     "the GPU ran out of memory while loading", "free memory first: one model at a time "
     "through the gateway, a smaller context_size or fewer gpu_layers", None),
    ("load-bad-file", re.compile(
        r"wrong shape|failed to read magic|invalid magic|tensor data is not within|"
        r"gguf_init_from_file|failed to read tensor|corrupt", re.I),
     "the model file is damaged (its header reads, its tensors do not match the "
     "architecture)", "copy the file again and compare its checksum with the source", None),
)


def from_load_log(model: str, error: str | None, lines: Sequence[str],
                  others_loaded: Sequence[str], version_hides_cause: bool
                  ) -> DoctorFinding | None:
    """A model that failed to load, explained from the engine's error and its own output
    (the newest matching line is the evidence)."""
    text = error or ""
    for code, pattern, message, fix, snippet in _LOAD_RULES:
        for line in reversed(lines):
            match = pattern.search(line)
            if match is None:
                continue
            msg = message.format(*match.groups())
            evidence = [line.strip()[:300]]
            if code == "load-out-of-memory" and others_loaded:
                msg += f", with {', '.join(others_loaded)} resident"
                evidence.append(f"loaded at the time: {', '.join(others_loaded)}")
            if text:
                evidence.insert(0, f"error: {text[:200]}")
            return _finding(code, model, f"{model}: {msg}", evidence, fix, snippet,
                            Severity.ERROR)
    if "code = Unavailable" in text and "EOF" in text:
        return _finding("load-backend-crashed", model, f"{model}: the backend process crashed "
                        "or was killed mid-call (code = Unavailable … EOF); the lines before "
                        "the crash in its log say why", [f"error: {text[:200]}"],
                        "`supervisorctl logs " + model + "`", None, Severity.ERROR)
    if "code = Unavailable" in text and "connection refused" in text:
        return _finding("load-backend-refused", model, f"{model}: the backend was not listening "
                        "(code = Unavailable … connection refused): it exited while starting",
                        [f"error: {text[:200]}"], "`supervisorctl logs " + model + "`", None,
                        Severity.ERROR)
    if "code = Canceled" in text or (version_hides_cause and "could not load model" in text):
        return _finding("load-cause-hidden", model, f"{model}: 'rpc error: code = Canceled' is "
                        "not a cancellation: LocalAI up to v3.9.x reports every load failure "
                        "this way, and its backend's output has no known cause",
                        [f"error: {text[:200]}"],
                        "read the backend output: LOCALAI_LOG_LEVEL=debug in "
                        "localai.environment, then `supervisorctl logs " + model + "`", None,
                        Severity.ERROR)
    return None


def smoke_code(warning: str) -> str:
    """The rule a smoke check verdict (modelhealth.smoke_verdict) falls under."""
    return "smoke-special-token" if "special token" in warning else "smoke-cut-off"


def smoke_findings(model: str, warning: str | None) -> list[DoctorFinding]:
    """What the output smoke check saw on the live server."""
    if not warning:
        return []
    return [_finding(smoke_code(warning), model, f"{model}: {warning}",
                     [f"smoke check answer: {warning}"], warning.split(": ", 1)[-1])]


def render(report: DoctorReport) -> str:
    """Grouped by symptom, each finding with its evidence, fix and YAML."""
    version = report.engine_version or "unknown version"
    src = f", from {report.version_source}" if report.version_source else ""
    mode = "live" if report.live else "offline (config and models dir only)"
    lines = [f"{report.engine} {version}{src}; {mode}"]
    groups = report.by_symptom()
    if not groups:
        lines.append("no findings")
    for symptom, found in groups.items():
        lines.append("")
        lines.append(f"== {symptom} ({len(found)}) ==")
        for f in found:
            who = f"[{f.model}] " if f.model else ""
            lines.append(f"- {who}{f.message}")
            for e in f.evidence:
                lines.append(f"    evidence: {e}")
            if f.fix:
                lines.append(f"    fix: {f.fix}")
            if f.snippet:
                lines.extend("      " + ln for ln in f.snippet.rstrip("\n").splitlines())
            lines.append(f"    applies to: {f.versions} ({f.code})")
    return "\n".join(lines) + "\n"
