"""Keys LocalAI accepts in a model YAML, transcribed from LocalAI's Go struct tags.

What this describes
    One model entry: a one-model file in the models directory, or one element of the
    list in the ``--models-config-file`` / ``--config-file`` YAML.  ``MODEL_KEYS`` is the
    top level of such an entry; sections (``parameters``, ``template``, ``function``, ...)
    carry their children.  Only the field names and Go types were transcribed (no code
    copied); see ``SCHEMA_SOURCE`` for the files read.

Versions
    The key set is that of ``mudler/LocalAI`` at v4.9.0+22 (commit 82c191af, 2026-08-22).
    The core keys this supervisor cares about (``name``, ``backend``, ``parameters.*``,
    ``context_size``, ``gpu_layers``, ``f16``, ``threads``, ``mmap``, ``mmlock``,
    ``stopwords``, ``cutstrings``, ``trimspace``, ``trimsuffix``, ``template.*``) have
    had the same names and places since v2.10.0.  Newer sections only exist in recent
    releases: ``options`` (v2.24.0), ``reasoning`` (v3.4.0), ``disabled``, ``pinned``,
    ``concurrency_groups`` (v4.2.0), ``alias`` (v4.5.0), and the proxy/router/PII/MITM
    blocks (v4.x).  An older LocalAI silently ignores a key it does not know, exactly as
    every version ignores unknown keys (``yaml.v3`` ``Unmarshal`` without
    ``KnownFields``): a misspelt or misplaced key is never an error, it just does
    nothing, which is why a linter is worth having.

Renamed, legacy and commonly confused keys (see also ``LEGACY_KEYS``)
    * ``stopwords`` (top level, list of strings) -- not ``stop``.  ``stop`` is only a
      field of the OpenAI *request* body (``core/schema/openai.go``), never of the YAML.
    * ``mmlock`` (top level) -- not llama.cpp's ``mlock``; ``mmap`` likewise top level.
    * ``gpu_layers`` -- not ``n_gpu_layers``/``ngl``; ``context_size`` -- not ``n_ctx``/
      ``ctx_size``; both top level, not under ``parameters``.
    * ``f16`` and ``mirostat``/``mirostat_eta``/``mirostat_tau`` are top level.  Up to
      v2.9.x ``PredictionOptions`` also had them, so ``parameters.f16`` etc. were read
      then; removed in v2.10.0 (commit f895d066).
    * ``batch`` lives under ``parameters`` (``PredictionOptions``), not at the top level;
      ``threads`` is top level.  ``parameters.model`` is the weights file, ``name`` the
      API-facing id; a top-level ``model`` key is ignored.
    * ``parameters.max_completion_tokens`` is ``yaml:"-"`` (request-only): use
      ``max_tokens`` in the YAML.
    * ``options`` is a list of ``"key:value"`` strings passed to the backend (e.g.
      ``parallel:4``, ``context_shift:true``); llama.cpp flags do not go at the top level.
    * ``template.jinja_template`` was removed in v3.8.0 (commit 02cc8cbc); use
      ``template.use_tokenizer_template``.
    * ``flash_attention`` was a bool up to v3.4.x, a string (e.g. ``auto``) since v3.5.0.
    * Sections of dropped backends: ``autogptq`` (removed v2.29.0, with
      ``parameters.use_fast_tokenizer``), ``vall-e`` (removed v2.26.0).
    * ``tts`` is a nested section (embedded Go struct with a *named* tag), while the
      LLM settings (``LLMConfig``, ``yaml:",inline"``) sit at the top level.
    * Same name, different place: top-level ``grammar`` is a string (a BNF grammar);
      ``function.grammar`` is a section.  ``cuda`` exists both at top level and under
      ``diffusers``.  ``clip_skip`` exists under ``parameters`` and ``diffusers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

SCHEMA_SOURCE: Final[str] = (
    "github.com/mudler/LocalAI @ 82c191afadf5f005281e798ccfa0ffd0d5805030 "
    "(git describe v4.9.0-22-g82c191afa, committed 2026-08-22); files read: "
    "core/config/model_config.go (ModelConfig, LLMConfig, TemplateConfig, TTSConfig, "
    "Pipeline and its sub-structs, Diffusers, GRPC, LimitMMPerPrompt, File, MCPConfig, "
    "AgentConfig, PIIConfig, PIIDetectionConfig, RouterConfig, ProxyConfig, "
    "MITMModelConfig, LimitsConfig, CompressionConfig), "
    "core/schema/prediction.go (PredictionOptions), core/schema/request.go "
    "(BasicModelRequest), pkg/functions/parse.go (FunctionsConfig, GrammarConfig, "
    "XMLToolCallFormat, ReplaceResult), pkg/reasoning/config.go (Config, TagPair), "
    "pkg/modelartifacts/types.go (Spec, Source, Resolved), "
    "core/config/model_config_loader.go (how files are read); history of "
    "core/config/backend_config.go and api/config/{config,prediction}.go for legacy keys"
)

Kind = Literal[
    "str",
    "int",
    "float",
    "bool",
    "list[str]",
    "list[float]",
    "map",
    "any",
    "section",
    "list[section]",
]
"""Value kinds.

``section`` is a mapping with known keys (``children``); ``list[section]`` is a list of
such mappings, ``children`` describing the keys of each item.  ``map`` is a free-form
mapping (Go ``map[...]...``), ``any`` a value whose Go type is ``interface{}``/``any``.
Go pointer types map to their base kind; ``float32``/``float64`` map to ``float``.
"""


@dataclass(frozen=True)
class Field:
    """One accepted key: its value kind, its children (sections only) and a note."""

    kind: Kind
    children: Mapping[str, Field] | None = None
    note: str = ""


def _f(kind: Kind, note: str = "") -> Field:
    return Field(kind, None, note)


def _section(children: Mapping[str, Field], note: str = "") -> Field:
    return Field("section", MappingProxyType(dict(children)), note)


def _items(children: Mapping[str, Field], note: str = "") -> Field:
    return Field("list[section]", MappingProxyType(dict(children)), note)


_STR: Final = _f("str")
_INT: Final = _f("int")
_FLOAT: Final = _f("float")
_BOOL: Final = _f("bool")
_STRS: Final = _f("list[str]")
_MAP: Final = _f("map")

_TEMPLATE_TEXT = "inline Go text/template, or the name of a .tmpl file in the models dir"

# core/schema/prediction.go PredictionOptions (+ inline BasicModelRequest, request.go).
_PARAMETERS: Final = _section(
    {
        "model": _f("str", "weights file (relative to the models dir) or URL"),
        "language": _STR,
        "translate": _BOOL,
        "n": _INT,
        "top_p": _FLOAT,
        "top_k": _INT,
        "min_p": _FLOAT,
        "temperature": _FLOAT,
        "max_tokens": _f("int", "0 = unlimited"),
        "echo": _BOOL,
        "batch": _f("int", "batch size; lives here, not at the top level"),
        "ignore_eos": _BOOL,
        "repeat_penalty": _FLOAT,
        "repeat_last_n": _INT,
        "n_keep": _INT,
        "frequency_penalty": _FLOAT,
        "presence_penalty": _FLOAT,
        "tfz": _FLOAT,
        "typical_p": _FLOAT,
        "seed": _INT,
        "logprobs": _f("bool", "custom decoder: also accepts an int (>0 = true) or null"),
        "top_logprobs": _INT,
        "logit_bias": _f("map", "token id -> bias"),
        "negative_prompt": _STR,
        "rope_freq_base": _FLOAT,
        "rope_freq_scale": _FLOAT,
        "negative_prompt_scale": _FLOAT,
        "clip_skip": _INT,
        "tokenizer": _STR,
        "encoding_format": _STR,
        "pooling": _STR,
        "pooling_half_life_tokens": _INT,
    },
    "PredictionOptions: sampling defaults; request fields override them",
)

# core/config/model_config.go TemplateConfig.
_TEMPLATE: Final = _section(
    {
        "chat": _f("str", _TEMPLATE_TEXT),
        "chat_message": _f("str", _TEMPLATE_TEXT),
        "completion": _f("str", _TEMPLATE_TEXT),
        "edit": _f("str", _TEMPLATE_TEXT),
        "function": _f("str", _TEMPLATE_TEXT + " (used when tools are sent)"),
        "use_tokenizer_template": _f("bool", "use the model's own (GGUF/HF) chat template"),
        "join_chat_messages_by_character": _f("str", "defaults to a newline"),
        "multimodal": _STR,
        "reply_prefix": _STR,
    }
)

# pkg/functions/parse.go FunctionsConfig (+ GrammarConfig, XMLToolCallFormat, ReplaceResult).
_REPLACE: Final = _items({"key": _STR, "value": _STR})
_FUNCTION: Final = _section(
    {
        "disable_no_action": _BOOL,
        "grammar": _section(
            {
                "parallel_calls": _BOOL,
                "disable_parallel_new_lines": _BOOL,
                "mixed_mode": _BOOL,
                "no_mixed_free_string": _BOOL,
                "disable": _BOOL,
                "prefix": _STR,
                "expect_strings_after_json": _BOOL,
                "properties_order": _STR,
                "schema_type": _STR,
                "triggers": _items({"word": _STR}),
            }
        ),
        "no_action_function_name": _STR,
        "no_action_description_name": _STR,
        "response_regex": _STRS,
        "json_regex_match": _STRS,
        "argument_regex": _STRS,
        "argument_regex_key_name": _STR,
        "argument_regex_value_name": _STR,
        "replace_function_results": _REPLACE,
        "replace_llm_results": _REPLACE,
        "capture_llm_results": _STRS,
        "function_name_key": _STR,
        "function_arguments_key": _STR,
        "xml_format_preset": _STR,
        "xml_format": _section(
            {
                "scope_start": _STR,
                "tool_start": _STR,
                "tool_sep": _STR,
                "key_start": _STR,
                "key_val_sep": _STR,
                "val_end": _STR,
                "tool_end": _STR,
                "scope_end": _STR,
                "key_val_sep2": _STR,
                "raw_argval": _BOOL,
                "last_val_end": _STR,
                "last_tool_end": _STR,
                "trim_raw_argval": _BOOL,
                "allow_toolcall_in_think": _BOOL,
            }
        ),
        "automatic_tool_parsing_fallback": _BOOL,
        "disable_peg_parser": _BOOL,
    },
    "tool/function-call parsing and grammar",
)

# pkg/reasoning/config.go Config.
_REASONING: Final = _section(
    {
        "disable_reasoning_tag_prefill": _BOOL,
        "disable": _BOOL,
        "strip_reasoning_only": _BOOL,
        "thinking_start_tokens": _STRS,
        "tag_pairs": _items({"start": _STR, "end": _STR}),
    }
)

# core/config/model_config.go Pipeline and its sub-structs (realtime audio pipeline).
_PIPELINE: Final = _section(
    {
        "tts": _f("str", "model name"),
        "llm": _f("str", "model name"),
        "transcription": _f("str", "model name"),
        "vad": _f("str", "model name"),
        "sound_detection": _f("str", "model name"),
        "sound_detection_window_ms": _INT,
        "sound_detection_hop_ms": _INT,
        "reasoning_effort": _STR,
        "streaming": _section(
            {"llm": _BOOL, "tts": _BOOL, "transcription": _BOOL, "clause_chunking": _BOOL}
        ),
        "disable_thinking": _BOOL,
        "max_history_items": _INT,
        "compaction": _section(
            {
                "enabled": _BOOL,
                "trigger_items": _INT,
                "summary_model": _STR,
                "max_summary_tokens": _INT,
            }
        ),
        "voice_recognition": _section(
            {
                "model": _STR,
                "mode": _STR,
                "threshold": _FLOAT,
                "when": _STR,
                "on_reject": _STR,
                "anti_spoofing": _BOOL,
                "allow": _section({"names": _STRS, "labels": _STRS}),
                "references": _items({"name": _STR, "audio": _STR}),
                "enforce": _BOOL,
                "identity": _section(
                    {
                        "announce": _BOOL,
                        "announce_unknown": _BOOL,
                        "personalize": _BOOL,
                        "inject_name": _BOOL,
                        "inject_system_note": _BOOL,
                        "note_unknown": _BOOL,
                    }
                ),
            }
        ),
        "turn_detection": _section(
            {
                "type": _STR,
                "eagerness": _STR,
                "retranscribe": _BOOL,
                "vad_window_sec": _FLOAT,
            }
        ),
        "classifier": _section(
            {
                "enabled": _BOOL,
                "model": _STR,
                "threshold": _FLOAT,
                "normalization": _STR,
                "history_items": _INT,
                "fallback": _section({"mode": _STR, "reply": _STR}),
                "options": _items(
                    {
                        "id": _STR,
                        "description": _STR,
                        "reply": _STR,
                        "tool": _section(
                            {
                                "name": _STR,
                                "arguments": _MAP,
                                "slots": _items(
                                    {
                                        "name": _STR,
                                        "type": _STR,
                                        "values": _STRS,
                                        "default": _STR,
                                        "hint": _STR,
                                    }
                                ),
                            }
                        ),
                    }
                ),
                "address": _section({"names": _STRS, "mode": _STR, "reply": _STR}),
            }
        ),
        "disable_warmup": _BOOL,
    },
    "models composing a realtime (audio-to-audio) pipeline",
)

_ROUTER: Final = _section(
    {
        "classifier": _STR,
        "policies": _items({"label": _STR, "description": _STR}),
        "candidates": _items({"model": _STR, "labels": _STRS}),
        "fallback": _STR,
        "classifier_model": _STR,
        "classifier_cache_size": _INT,
        "activation_threshold": _FLOAT,
        "classifier_system_template": _STR,
        "score_normalization": _STR,
        "embedding_cache": _section(
            {
                "embedding_model": _STR,
                "similarity_threshold": _FLOAT,
                "confidence_threshold": _FLOAT,
                "store_name": _STR,
            }
        ),
        "knn": _section(
            {
                "embedding_model": _STR,
                "embedding_revision": _STR,
                "k": _INT,
                "similarity_threshold": _FLOAT,
                "vote_threshold": _FLOAT,
                "store_name": _STR,
            }
        ),
    }
)

# core/config/model_config.go LLMConfig: embedded with yaml:",inline", so top level.
_LLM_CONFIG: Final[dict[str, Field]] = {
    "system_prompt": _STR,
    "tensor_split": _STR,
    "main_gpu": _STR,
    "rms_norm_eps": _FLOAT,
    "ngqa": _INT,
    "prompt_cache_path": _STR,
    "prompt_cache_all": _BOOL,
    "prompt_cache_ro": _BOOL,
    "mirostat_eta": _FLOAT,
    "mirostat_tau": _FLOAT,
    "mirostat": _INT,
    "gpu_layers": _f("int", "layers offloaded to the GPU (not n_gpu_layers)"),
    "mmap": _BOOL,
    "mmlock": _f("bool", "mlock the weights (LocalAI spells it mmlock)"),
    "low_vram": _BOOL,
    "reranking": _BOOL,
    "grammar": _f("str", "BNF grammar text (function.grammar is a different section)"),
    "stopwords": _f("list[str]", "stop sequences (the YAML key is not 'stop')"),
    "cutstrings": _f("list[str]", "regexes removed from the reply"),
    "extract_regex": _STRS,
    "trimspace": _f("list[str]", "prefixes trimmed from the reply, then whitespace"),
    "trimsuffix": _f("list[str]", "suffixes trimmed from the reply, then whitespace"),
    "context_size": _f("int", "unset: guessed from the GGUF, depends on version"),
    "numa": _BOOL,
    "lora_adapter": _STR,
    "lora_base": _STR,
    "lora_adapters": _STRS,
    "lora_scales": _f("list[float]"),
    "lora_scale": _FLOAT,
    "no_mulmatq": _BOOL,
    "draft_model": _STR,
    "n_draft": _INT,
    "quantization": _STR,
    "load_format": _STR,
    "gpu_memory_utilization": _f("float", "vLLM"),
    "trust_remote_code": _f("bool", "vLLM"),
    "enforce_eager": _f("bool", "vLLM"),
    "swap_space": _f("int", "vLLM"),
    "max_model_len": _f("int", "vLLM"),
    "tensor_parallel_size": _f("int", "vLLM"),
    "disable_log_stats": _f("bool", "vLLM"),
    "dtype": _f("str", "vLLM"),
    "limit_mm_per_prompt": _section(
        {"image": _INT, "video": _INT, "audio": _INT}, "vLLM limit-mm-per-prompt"
    ),
    "engine_args": _f("map", "backend-native engine constructor arguments (e.g. vLLM)"),
    "mmproj": _f("str", "multimodal projector file or URL"),
    "flash_attention": _f("str", "string since v3.5.0 (e.g. auto); a bool before"),
    "no_kv_offloading": _BOOL,
    "cache_type_k": _STR,
    "cache_type_v": _STR,
    "rope_scaling": _STR,
    "type": _f("str", "model type hint for some backends"),
    "yarn_ext_factor": _FLOAT,
    "yarn_attn_factor": _FLOAT,
    "yarn_beta_fast": _FLOAT,
    "yarn_beta_slow": _FLOAT,
    "cfg_scale": _FLOAT,
}

_MODEL_KEYS: dict[str, Field] = {
    "parameters": _PARAMETERS,
    "name": _f("str", "model id used by the API; configs are keyed by it"),
    "artifacts": _items(
        {
            "name": _STR,
            "target": _STR,
            "source": _section(
                {
                    "type": _STR,
                    "repo": _STR,
                    "revision": _STR,
                    "token_env": _STR,
                    "allow_patterns": _STRS,
                    "ignore_patterns": _STRS,
                }
            ),
            "resolved": _section(
                {"endpoint": _STR, "revision": _STR, "cache_key": _STR, "primary_file": _STR}
            ),
        }
    ),
    "alias": _f("str", "pure redirect to another model; other keys ignored (v4.5.0+)"),
    "f16": _BOOL,
    "threads": _INT,
    "debug": _BOOL,
    "roles": _f("map", "role name -> prefix string"),
    "embeddings": _BOOL,
    "backend": _STR,
    "template": _TEMPLATE,
    "known_usecases": _STRS,
    "known_input_modalities": _STRS,
    "known_output_modalities": _STRS,
    "pipeline": _PIPELINE,
    "function": _FUNCTION,
    "reasoning": _REASONING,
    "compression": _section(
        {
            "enabled": _BOOL,
            "trigger_at_ratio": _FLOAT,
            "keep_tail_tokens": _INT,
            "max_summary_tokens": _INT,
            "compressor_model": _STR,
            "on_post_compression_overflow": _STR,
        }
    ),
    "reasoning_effort": _STR,
    "chat_template_kwargs": _f("map", "forwarded to the backend's jinja chat template"),
    "feature_flags": _f("map", "flag name -> bool"),
    **_LLM_CONFIG,
    "diffusers": _section(
        {
            "cuda": _BOOL,
            "pipeline_type": _STR,
            "scheduler_type": _STR,
            "enable_parameters": _STR,
            "img2img": _BOOL,
            "clip_skip": _INT,
            "clip_model": _STR,
            "clip_subfolder": _STR,
            "control_net": _STR,
        }
    ),
    "step": _INT,
    "grpc": _section({"attempts": _INT, "attempts_sleep_time": _INT}),
    "tts": _section({"voice": _STR, "audio_path": _STR, "voice_cloning": _BOOL}),
    "cuda": _BOOL,
    "download_files": _items({"filename": _STR, "sha256": _STR, "uri": _STR}),
    "description": _STR,
    "usage": _STR,
    "disabled": _BOOL,
    "pinned": _BOOL,
    "concurrency_groups": _STRS,
    "options": _f("list[str]", "backend options as 'key:value' strings, e.g. parallel:4"),
    "overrides": _STRS,
    "mcp": _section(
        {
            "remote": _f("str", "YAML/JSON text with an mcpServers map"),
            "stdio": _f("str", "YAML/JSON text with an mcpServers map"),
        }
    ),
    "agent": _section(
        {
            "max_attempts": _INT,
            "max_iterations": _INT,
            "enable_reasoning": _BOOL,
            "enable_planning": _BOOL,
            "enable_mcp_prompts": _BOOL,
            "enable_plan_re_evaluator": _BOOL,
            "disable_sink_state": _BOOL,
            "loop_detection": _INT,
            "max_adjustment_attempts": _INT,
            "force_reasoning_tool": _BOOL,
        }
    ),
    "pii": _section(
        {
            "enabled": _BOOL,
            "detectors": _STRS,
            "reversible_redactions": _BOOL,
            "reversible_token_prefix": _STR,
            "reversible_token_suffix": _STR,
        }
    ),
    "pii_detection": _section(
        {
            "min_score": _FLOAT,
            "default_action": _STR,
            "entity_actions": _MAP,
            "builtins": _STRS,
            "patterns": _items({"name": _STR, "match": _STR, "action": _STR, "min_len": _INT}),
        }
    ),
    "router": _ROUTER,
    "proxy": _section(
        {
            "upstream_url": _STR,
            "mode": _STR,
            "provider": _STR,
            "api_key_env": _STR,
            "api_key_file": _STR,
            "upstream_model": _STR,
            "request_timeout_seconds": _INT,
            "cache_prompt": _BOOL,
        }
    ),
    "mitm": _section({"hosts": _STRS}),
    "limits": _section({"max_concurrent": _INT, "retry_after_seconds": _INT}),
}

MODEL_KEYS: Final[Mapping[str, Field]] = MappingProxyType(_MODEL_KEYS)
"""Top-level keys of one LocalAI model entry (ModelConfig at the snapshot above)."""

LEGACY_KEYS: Final[Mapping[tuple[str, ...], str]] = MappingProxyType(
    {
        ("stop",): "not a model-YAML key (request field only); use stopwords",
        ("parameters", "stop"): "not a model-YAML key; use top-level stopwords",
        ("parameters", "stopwords"): "stopwords is top level, not under parameters",
        ("mlock",): "LocalAI spells it mmlock",
        ("n_gpu_layers",): "LocalAI calls it gpu_layers",
        ("ngl",): "LocalAI calls it gpu_layers",
        ("n_ctx",): "LocalAI calls it context_size",
        ("ctx_size",): "LocalAI calls it context_size",
        ("model",): "ignored at top level; use parameters.model (name is the API id)",
        ("batch",): "ignored at top level; use parameters.batch",
        ("parameters", "f16"): "read only up to v2.9.x; top-level f16 since v2.10.0",
        ("parameters", "mirostat"): "read only up to v2.9.x; top level since v2.10.0",
        ("parameters", "mirostat_eta"): "read only up to v2.9.x; top level since v2.10.0",
        ("parameters", "mirostat_tau"): "read only up to v2.9.x; top level since v2.10.0",
        ("parameters", "max_completion_tokens"): 'yaml:"-" (request only); use max_tokens',
        ("parameters", "use_fast_tokenizer"): "removed in v2.29.0 (AutoGPTQ dropped)",
        ("template", "jinja_template"): "removed in v3.8.0; use use_tokenizer_template",
        ("autogptq",): "section removed in v2.29.0 (AutoGPTQ backend dropped)",
        ("vall-e",): "section removed in v2.26.0 (vall-e-x backend dropped)",
    }
)
"""Keys seen in old or hand-written configs that the current LocalAI ignores, with a hint.

Misplacements not listed here (a key valid at another level, e.g. ``parameters.
context_size``) can be found by looking the key up in ``MODEL_KEYS`` and ``parameters``.
"""


def known_keys(path: tuple[str, ...]) -> Mapping[str, Field] | None:
    """Return the accepted keys at ``path`` (``()`` = top level), or None.

    None means the path does not lead to a section with known keys (unknown key, or a
    scalar/map/any value).  A ``list[section]`` step yields the keys of each list item,
    so ``("function", "grammar", "triggers")`` gives ``{"word": ...}``.
    """
    keys: Mapping[str, Field] = MODEL_KEYS
    for part in path:
        field = keys.get(part)
        if field is None or field.children is None:
            return None
        keys = field.children
    return keys
