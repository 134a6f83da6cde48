"""Lint for LocalAI's quiet failures: pure rules over a model entry and its GGUF metadata.

Each rule returns warnings with a one-line fix hint; none of them blocks a config (errors
come from parsing and checking in modelconfig.py). The mechanisms behind the rules are in
../shared/LOCALAI-NOTES.md ("The three failures people see").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .ggufinfo import GGUFInfo
from .settings import Engine, Settings
from .versions import Version

# gpu_layers at or above this is the common "offload everything" idiom.
ALL_LAYERS_IDIOM = 99
# Below this many tokens per slot, ordinary prompt + answer pairs get cut off.
MIN_SLOT_CONTEXT = 1024
# Room a prompt needs next to max_tokens for the slot not to fill first.
PROMPT_ALLOWANCE = 256
# Turn terminators seen in real chat templates and tokenizers.
END_MARKERS = (
    "</s>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>",
    "[/INST]", "<|end_of_text|>", "<|END_OF_TURN_TOKEN|>",
)
_TEMPLATE_INPUTS = {"chat": (".Input",), "completion": (".Input",),
                    "chat_message": (".Content", ".Input"), "edit": (".Input", ".Instruction")}


@dataclass(frozen=True)
class Lint:
    """One warning; ``path`` is the field it is about (located in the YAML by the caller)."""

    code: str
    model: str | None
    path: tuple[str, ...]
    message: str
    hint: str


@dataclass(frozen=True)
class LintContext:
    engine: Engine = Engine.LOCALAI
    single_active_backend: bool = True
    parallel: int = 1
    gpu_memory_bytes: int | None = None
    # The engine version the rules apply to (None: unknown; each rule says what it assumes).
    engine_version: Version | None = None


def context_for(settings: Settings, engine_version: Version | None = None) -> LintContext:
    srv = settings.server
    return LintContext(
        engine=srv.engine, single_active_backend=srv.single_active_backend,
        parallel=srv.parallel,
        gpu_memory_bytes=int(srv.gpu_memory_gb * 1024**3) if srv.gpu_memory_gb else None,
        engine_version=engine_version or Version.parse(settings.localai.version),
    )


@dataclass(frozen=True)
class ModelFacts:
    """What lint needs of one entry, typed (built by modelconfig from a valid entry)."""

    name: str
    context_size: int | None
    max_tokens: int | None
    gpu_layers: int | None
    stopwords: tuple[str, ...]
    # template key -> resolved text (a .tmpl file's content when the value names one)
    templates: Mapping[str, str]
    use_tokenizer_template: bool
    options: tuple[str, ...]
    file_size: int | None
    gguf: GGUFInfo | None


def _slots(facts: ModelFacts, ctx: LintContext) -> int:
    for opt in facts.options:
        key, _, value = opt.partition(":")
        if key.strip() == "parallel" and re.fullmatch(r"[0-9]{1,6}", value.strip()):
            return max(1, int(value))
    return ctx.parallel if ctx.engine is Engine.LOCALAI else 1


def context_rules(f: ModelFacts, ctx: LintContext) -> list[Lint]:
    out: list[Lint] = []
    trained = f.gguf.context_length if f.gguf else None
    if f.context_size is None:
        if ctx.engine is Engine.LOCALAI:
            guess = f" ({trained} tokens here)" if trained else ""
            out.append(Lint(
                "context-size-unset", f.name, ("context_size",),
                "context_size is not set: LocalAI up to v2.26 uses 512 tokens, v2.27-v4.6.0 "
                f"take the model's whole trained context{guess}, which may not fit in memory",
                "set context_size explicitly"))
        return out
    if trained and f.context_size > trained:
        out.append(Lint(
            "context-exceeds-training", f.name, ("context_size",),
            f"context_size {f.context_size} exceeds the model's trained context {trained}: "
            "output degrades past it", f"set context_size to at most {trained}"))
    slots = _slots(f, ctx)
    per_slot = f.context_size // slots
    need = max(MIN_SLOT_CONTEXT, (f.max_tokens or 0) + PROMPT_ALLOWANCE)
    if per_slot < need:
        split = (f" split over {slots} parallel slots (LLAMACPP_PARALLEL / options parallel; "
                 "LocalAI before v4.3.0 does not unify the KV cache)" if slots > 1 else "")
        out.append(Lint(
            "context-too-small", f.name, ("context_size",),
            f"about {per_slot} tokens per request{split}: answers will be cut off mid-sentence "
            "when prompt + answer fill it, and LocalAI still reports finish_reason \"stop\"",
            f"raise context_size to at least {need * slots}"
            + (" or lower the parallel slots" if slots > 1 else "")))
    return out


def max_tokens_rule(f: ModelFacts, ctx: LintContext) -> list[Lint]:
    if f.max_tokens is not None:
        return []
    return [Lint(
        "max-tokens-unset", f.name, ("parameters", "max_tokens"),
        "parameters.max_tokens is not set: only the slot's context bounds an answer, so a "
        "runaway answer is cut mid-sentence when the context fills",
        "set parameters.max_tokens below the per-request context")]


def _markers_in(text: str) -> list[str]:
    return [m for m in END_MARKERS if m in text]


def special_token_rules(f: ModelFacts, ctx: LintContext) -> list[Lint]:
    if ctx.engine is not Engine.LOCALAI:
        return []  # llama-server stops on the GGUF's own end-of-generation tokens
    out: list[Lint] = []
    stops = set(f.stopwords)
    if f.gguf is not None and not f.use_tokenizer_template:
        tokens = [t for t in (f.gguf.eos_token, f.gguf.eot_token) if t]
        for tok in dict.fromkeys(tokens):
            # A stopword stops generation when it appears in the output: one that is part of
            # the token's text stops it; a longer one containing it never matches.
            if not any(s and s in tok for s in stops):
                out.append(Lint(
                    "special-tokens", f.name, ("stopwords",),
                    f"the model ends turns with {tok!r} but stopwords does not list it: special "
                    "tokens will appear at the end of answers",
                    f"add {tok!r} to stopwords, or set template.use_tokenizer_template: true"))
    # With use_tokenizer_template LocalAI ignores the Go templates.
    templates = {} if f.use_tokenizer_template else f.templates
    for key, text in sorted(templates.items()):
        for marker in _markers_in(text):
            if marker not in stops:
                out.append(Lint(
                    "template-end-marker", f.name, ("template", key),
                    f"template.{key} ends turns with {marker!r} but stopwords does not list it: "
                    "the model will echo it at the end of answers",
                    f"add {marker!r} to stopwords"))
    return out


def template_rules(f: ModelFacts, ctx: LintContext) -> list[Lint]:
    out: list[Lint] = []
    for key, text in sorted(f.templates.items()):
        wanted = _TEMPLATE_INPUTS.get(key)
        if wanted and "{{" in text and not any(w in text for w in wanted):
            out.append(Lint(
                "template-ignores-input", f.name, ("template", key),
                f"template.{key} never uses {' or '.join(wanted)}: the prompt never reaches "
                "the model", f"insert {{{{{wanted[0]}}}}} where the text should go"))
    if f.use_tokenizer_template and f.gguf is not None and not f.gguf.chat_template:
        out.append(Lint(
            "tokenizer-template-missing", f.name, ("template", "use_tokenizer_template"),
            "template.use_tokenizer_template is set but the GGUF has no tokenizer.chat_template",
            "write template.chat / chat_message, or use a GGUF that carries a chat template"))
    return out


def gpu_layers_rule(f: ModelFacts, ctx: LintContext) -> list[Lint]:
    if f.gpu_layers is None or f.gguf is None or f.gguf.block_count is None:
        return []
    most = f.gguf.block_count + 1
    # 99 / 999 / -1 are the usual ways to say "all layers": not a mistake.
    if f.gpu_layers <= most or f.gpu_layers >= ALL_LAYERS_IDIOM:
        return []
    return [Lint(
        "gpu-layers-exceed", f.name, ("gpu_layers",),
        f"gpu_layers {f.gpu_layers} is more than this model's {f.gguf.block_count} blocks + 1: "
        "check that parameters.model is the model you meant",
        f"gpu_layers: {most} offloads every layer")]


def kv_cache_bytes(f: ModelFacts) -> int:
    return _kv_bytes(f.gguf, f.context_size)


def _kv_bytes(g: GGUFInfo | None, context_size: int | None) -> int:
    """Upper bound (no GQA): K and V, f16, per layer, per context token."""
    if g is None or not g.block_count or not g.embedding_length:
        return 0
    ctx_tokens = context_size or g.context_length or 0
    return 2 * g.block_count * ctx_tokens * g.embedding_length * 2


def footprint_bytes(file_size: int | None, context_size: int | None,
                    gguf: GGUFInfo | None) -> int | None:
    """What a resident model needs (weights + KV cache), as the fit rule counts it; None when
    the file size is unknown."""
    if file_size is None:
        return None
    return file_size + _kv_bytes(gguf, context_size)


# llama-server's router children start 4 slots unless told (b11434: "n_slots = 4").
LLAMA_SERVER_DEFAULT_SLOTS = 4


def slots_for(options: Sequence[str], engine: Engine, parallel: int) -> int:
    """Requests the engine serves at once for one model: options parallel:N, else LocalAI's
    LLAMACPP_PARALLEL (server.parallel), else llama-server's own default."""
    for opt in options:
        key, _, value = opt.partition(":")
        if key.strip() == "parallel" and re.fullmatch(r"[0-9]{1,6}", value.strip()):
            return max(1, int(value))
    return parallel if engine is Engine.LOCALAI else LLAMA_SERVER_DEFAULT_SLOTS


def fit_rule(models: Sequence[ModelFacts], ctx: LintContext) -> list[Lint]:
    if ctx.single_active_backend or len(models) < 2 or ctx.gpu_memory_bytes is None:
        return []
    need = sum((m.file_size or 0) + kv_cache_bytes(m) for m in models)
    if need <= ctx.gpu_memory_bytes:
        return []
    gib = 1024**3
    return [Lint(
        "models-do-not-fit", None, (),
        f"the {len(models)} models need up to {need / gib:.1f} GiB together (files + KV cache) "
        f"but the GPU has {ctx.gpu_memory_bytes / gib:.1f} GiB: concurrent requests to two "
        "models will fail (could not load model: rpc error: code = Canceled)",
        "set server.single_active_backend = true, or serve fewer or smaller models")]


MODEL_RULES = (context_rules, max_tokens_rule, special_token_rules, template_rules,
               gpu_layers_rule)


def lint(models: Sequence[ModelFacts], ctx: LintContext) -> list[Lint]:
    out = [w for m in models for rule in MODEL_RULES for w in rule(m, ctx)]
    return out + fit_rule(models, ctx)




def closest(word: str, candidates: Sequence[str]) -> str | None:
    """The likeliest intended key (``templature`` → ``temperature``), if one is close."""
    import difflib

    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return match[0] if match else None
