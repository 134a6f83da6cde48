"""llama.cpp's ``llama-server`` in router mode, fed a models preset rendered from config.yaml.

The preset is an INI file: one section per model, keys are llama-server's long option names
(tools/server/README.md, "Model presets"). LocalAI fields without an llama-server equivalent
(Go templates, stopwords, …) are reported, not silently lost: llama-server uses the GGUF's own
chat template instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from ..lint import (
    CONTEXT_SHIFT_OPTIONS,
    KV_UNIFIED_OPTIONS,
    PARALLEL_OPTIONS,
    option_flag,
    option_parallel,
)
from ..modelconfig import ModelEntry, ModelSet
from ..settings import Engine, Settings
from ..versions import Version
from ..vocab import LoadState
from .base import (
    Activity,
    Call,
    EngineLaunch,
    RenderedFile,
    RestartAnswer,
    ServerPaths,
    metric_samples,
    openai_probe,
    plain_restart_answer,
)

PRESET_NAME = "models-preset.ini"

# LocalAI keys that have an llama-server option (everything else present is reported).
_MAPPED = frozenset({
    "name", "backend", "parameters", "context_size", "gpu_layers", "threads", "mmap",
    "mmlock", "embeddings", "flash_attention", "mmproj", "tensor_split",
})
_MAPPED_PARAMETERS = frozenset({
    "model", "temperature", "top_k", "top_p", "seed", "max_tokens", "batch", "repeat_penalty",
})
_LLAMA_BACKENDS = ("llama-cpp", "llama", "llama.cpp", "llama-cpp-fallback")
# LocalAI's llama.cpp backend options (``options: ["name:value"]``) that llama-server has as
# flags of the same meaning, read as the lint reads them (it counts the slots and the KV cache
# layout with them, and so does the gateway): they must be what runs.
_FLAG_OPTIONS = ((KV_UNIFIED_OPTIONS, "kv-unified"), (CONTEXT_SHIFT_OPTIONS, "context-shift"))


def _mapped_options(options: list[str] | None) -> tuple[dict[str, object], list[str]]:
    """The options llama-server can take, and the rest by name (one it has no flag for, or
    with a value the backend would not read), for ``engine.fields_dropped``."""
    opts = options or []
    mapped: dict[str, object] = {}
    if parallel := option_parallel(opts):  # 0: llama-server's automatic slots, as unset
        mapped["parallel"] = parallel
    for names, flag in _FLAG_OPTIONS:
        if (value := option_flag(opts, names)) is not None:
            mapped[flag] = value  # "kv-unified = false", as llama.cpp's presets say
    dropped = []
    for opt in opts:
        name = opt.partition(":")[0].strip()
        if name in PARALLEL_OPTIONS:
            carried = bool(option_parallel([opt]))
        else:
            carried = any(name in names and option_flag([opt], names) is not None
                          for names, _ in _FLAG_OPTIONS)
        if not carried:
            dropped.append(f"options.{name}")
    return mapped, dropped


def _ini_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if any(c in text for c in "\n\r;#[]=") or text != text.strip():
        raise ValueError(f"value {text!r} cannot be written to an INI preset")
    return text


def preset_options(entry: ModelEntry, models_dir: str) -> dict[str, str]:
    """llama-server options for one model entry, in a stable order."""
    opts: dict[str, object] = {}
    base = models_dir.rstrip("/")
    if entry.parameters.model:
        opts["model"] = f"{base}/{entry.parameters.model}"
    extra = entry.model_extra or {}
    params = entry.parameters.model_extra or {}
    flash = extra.get("flash_attention")
    mmproj = extra.get("mmproj")
    mapping: list[tuple[str, object]] = [
        ("ctx-size", entry.context_size),
        ("n-gpu-layers", entry.gpu_layers),
        ("threads", entry.threads),
        ("batch-size", entry.parameters.batch),
        ("temp", entry.parameters.temperature),
        ("top-k", entry.parameters.top_k),
        ("top-p", entry.parameters.top_p),
        ("seed", entry.parameters.seed),
        ("n-predict", entry.parameters.max_tokens),
        ("repeat-penalty", params.get("repeat_penalty")),
        # LocalAI: a bool up to v3.4, "auto"/"on"/"off" since v3.5; llama-server: on|off|auto.
        ("flash-attn", ("on" if flash else "off") if isinstance(flash, bool) else
         flash if isinstance(flash, str) else None),
        ("mmproj", f"{base}/{mmproj}" if isinstance(mmproj, str) and mmproj else None),
        ("tensor-split", extra.get("tensor_split")),
    ]
    opts.update({k: v for k, v in mapping if v is not None})
    opts.update(_mapped_options(entry.options)[0])
    if entry.mmap is False:
        opts["no-mmap"] = True
    if entry.mmlock:
        opts["mlock"] = True
    if entry.embeddings:
        opts["embeddings"] = True
    return {k: _ini_value(v) for k, v in opts.items()}


def dropped_fields(entry: ModelEntry) -> tuple[str, ...]:
    """Every key present in the entry that the preset cannot express."""
    present = set(entry.model_fields_set) | entry.extra_keys
    dropped = sorted(k for k in present if k not in _MAPPED and k != "options")
    dropped += sorted(set(_mapped_options(entry.options)[1]))
    params = entry.parameters
    dropped += sorted(f"parameters.{k}" for k in set(params.model_fields_set)
                      | set(params.model_extra or {}) if k not in _MAPPED_PARAMETERS)
    if entry.backend and entry.backend not in _LLAMA_BACKENDS:
        dropped.append(f"backend={entry.backend}")
    return tuple(dropped)


def render_preset(models: ModelSet, models_dir: str, stop_timeout: int | None = None) -> str:
    lines = ["; rendered by localai-supervisor from " + str(models.source),
             f"; revision {models.revision}", "version = 1", ""]
    for entry in models.entries:
        if any(c in entry.name for c in "[]\n\r;#"):
            raise ValueError(f"model name {entry.name!r} cannot be an INI section")
        lines.append(f"[{entry.name}]")
        lines.extend(f"{k} = {v}" for k, v in preset_options(entry, models_dir).items())
        if stop_timeout is not None:
            lines.append(f"stop-timeout = {stop_timeout}")
        lines.append("")
    return "\n".join(lines)


_SPAWN = re.compile(r"spawning server instance with name=(\S+) on port (\d+)")


class RouterLogFilter:
    """Which lines of the router's log are one model's: the router's own lines that name it,
    and its child's, which the router prefixes with the child's port (``[36575] ...``); the
    port is learned from the line that spawns the child, so it follows reloads."""

    def __init__(self, model: str) -> None:
        self._named = re.compile(rf"name={re.escape(model)}(?![\w.-])")
        self._model = model
        self._prefix: str | None = None

    def accept(self, line: str) -> bool:
        spawned = _SPAWN.search(line)
        if spawned is not None and spawned.group(1) == self._model:
            self._prefix = f"[{spawned.group(2)}]"
            return True
        if self._named.search(line):
            return True
        return self._prefix is not None and line.startswith(self._prefix)


# The preset's stop-timeout (seconds) behind the gateway; see LlamaServerEngine.render.
GATEWAY_STOP_TIMEOUT = 2

# llama-server's own --models-max default.
DEFAULT_MODELS_MAX = 4


class LlamaServerEngine:
    kind = Engine.LLAMA_SERVER
    liveness_path = "/health"
    readiness_path = "/models"
    default_binary = "llama-server"

    def render(self, models: ModelSet, paths: ServerPaths, settings: Settings,
               api_key: str | None = None) -> EngineLaunch:
        srv = settings.server
        models_max = settings.llama_server.models_max or (
            1 if srv.single_active_backend else DEFAULT_MODELS_MAX)
        args = (
            "--models-preset", f"{paths.rendered_dir.rstrip('/')}/{PRESET_NAME}",
            "--models-max", str(models_max),
            "--host", settings.endpoint.listen_host,
            "--port", str(settings.endpoint.listen_port),
            "--threads", str(srv.threads),
            # Per-model counters (n_decode_total, requests_processing) tell busy from idle.
            "--metrics",
            *settings.llama_server.extra_args,
        )
        # Behind the gateway a model is unloaded only when idle, yet a request of our own
        # (a metrics read) that reaches its child while it stops holds the child's exit up
        # to the router's stop-timeout (10 s by default, measured on the bench): shorten it.
        # Without the gateway the router may unload a busy model itself, and this timeout
        # is what its requests in flight get to finish: left alone.
        stop = GATEWAY_STOP_TIMEOUT if settings.gateway.enabled else None
        preset = RenderedFile(PRESET_NAME, render_preset(models, paths.models_dir, stop))
        dropped = tuple((e.name, d) for e in models.entries if (d := dropped_fields(e)))
        return EngineLaunch(
            args=args,
            env=tuple(sorted(settings.llama_server.environment.items())),
            files=(preset,),
            dropped=dropped,
        )

    def listed_models(self, body: Any) -> dict[str, LoadState | None]:
        """``GET /models`` in router mode: each entry carries ``status.value``."""
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            return {}
        out: dict[str, LoadState | None] = {}
        for item in data:
            if not isinstance(item, dict) or "id" not in item:
                continue
            status = item.get("status")
            value = status.get("value") if isinstance(status, dict) else None
            state = LoadState.parse(value) if value is not None else None
            if isinstance(status, dict) and status.get("failed"):
                state = LoadState.FAILED
            out[str(item["id"])] = state
        return out

    def loaded_call(self) -> Call:
        return Call("GET", "/models")

    def loaded_models(self, body: Any) -> dict[str, LoadState]:
        return {k: v or LoadState.UNLOADED for k, v in self.listed_models(body).items()}

    def probe_call(self, model: str, embeddings: bool, *, allow_load: bool = False) -> Call:
        # autoload=false: a probe of a loaded model can never start a swap, even if the model
        # was unloaded a moment ago (it answers 400 "model is not loaded" instead).
        return openai_probe(model, embeddings, "" if allow_load else "?autoload=false")

    def restart_model_calls(self, model: str) -> list[Call]:
        return [Call("POST", "/models/unload", {"model": model}),
                Call("POST", "/models/load", {"model": model})]

    def restart_answer(self, status: int, text: str) -> RestartAnswer:
        return plain_restart_answer(status, text)

    def restart_alone_refused(self, version: Version | None, hung: bool) -> str | None:
        return None  # the router kills a child that does not exit within its stop-timeout

    def cooldown_seconds(self, status: int, text: str) -> float | None:
        return None  # the router retries a failed child on the next request

    def model_log_call(self, model: str) -> Call | None:
        return None  # the router writes its children's output into its own log

    def model_log_lines(self, body: Any) -> list[tuple[str, str]]:
        return []

    def model_log_missing(self, model: str, kept: bool) -> str | None:
        return None  # the router logs a child's output once it starts: none yet

    def model_log_filter(self, model: str) -> Callable[[str], bool]:
        return RouterLogFilter(model).accept

    def version_call(self) -> Call:
        return Call("GET", "/props")

    def version(self, body: Any) -> str | None:
        """``/props``' ``build_info`` (``b<build>-<commit>``; a build without git says
        ``b0-unknown``)."""
        value = body.get("build_info") if isinstance(body, dict) else None
        return str(value) if value else None

    def unload_call(self, model: str) -> Call:
        return Call("POST", "/models/unload", {"model": model})

    def activity_calls(self, loaded: list[str]) -> list[Call]:
        return [Call("GET", f"/metrics?model={quote(m, safe='')}&autoload=false")
                for m in loaded]

    def activity(self, answers: list[tuple[int, str]]) -> Activity:
        work = 0.0
        in_flight = 0
        for status, text in answers:
            if status == 400 and "not loaded" in text:
                continue  # unloaded since we asked: it has nothing in flight
            if status != 200:
                return Activity(None, None)
            decoded = metric_samples(text, "llamacpp:n_decode_total")
            processing = metric_samples(text, "llamacpp:requests_processing")
            deferred = metric_samples(text, "llamacpp:requests_deferred")
            if decoded is None or processing is None or deferred is None:
                return Activity(None, None)
            work += sum(v for _, v in decoded)
            in_flight += int(sum(v for _, v in (*processing, *deferred)))
        return Activity(work, in_flight)
