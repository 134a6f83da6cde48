"""Lint for LocalAI's quiet failures: pure rules over a model entry and its GGUF metadata.

Each rule returns warnings with a one-line fix hint; none of them blocks a config (errors
come from parsing and checking in modelconfig.py, which uses ``chat_message_input_line``
from here). Rules whose truth depends on the LocalAI version name the range they assume, and
what they assume when the version is unknown. The mechanisms behind the rules are in
../shared/LOCALAI-NOTES.md ("The three failures people see").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .ggufinfo import GGUFInfo
from .settings import Engine, Settings
from .turns import turns_of
from .versions import Version, at_least

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
# chat_message is rendered once per message, with .Content: it has no .Input (see
# chat_message_input_line).
_TEMPLATE_INPUTS = {"chat": (".Input",), "completion": (".Input",),
                    "chat_message": (".Content",), "edit": (".Input", ".Instruction")}
# A Go template action, and .Input (or $.Input) used in one.
_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_INPUT_FIELD = re.compile(r"(?<![\w)\]])\$?\.Input\b")
# std::stoi as LocalAI's backend reads LLAMACPP_PARALLEL: leading blanks, a sign, digits.
_STOI = re.compile(r"\s*([+-]?[0-9]{1,9})(?![0-9])")
PARALLEL_OPTIONS = ("parallel", "n_parallel")
# LocalAI v3.10.0+ with one active backend: a busy model is skipped and the request for
# another waits this many 1 s retries, then loads it beside (LOCALAI_LRU_EVICTION_*).
LRU_EVICTION_RETRIES = 30
# LocalAI v4.6.1+ without context_size: the trained context capped here, stepped down to
# no less than the fallback when GPU memory is short (core/config/context_fit.go).
AUTO_CONTEXT_CAP = 8192
AUTO_CONTEXT_FLOOR = 4096


@dataclass(frozen=True)
class Lint:
    """One warning; ``path`` is the field it is about (located in the YAML by the caller)."""

    code: str
    model: str | None
    path: tuple[str, ...]
    message: str
    hint: str
    # The fix as YAML to paste into the model's entry (not compared: it restates the hint).
    snippet: str | None = field(default=None, compare=False)
    # What the finding rests on besides the field itself (GGUF keys, settings).
    evidence: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class LintContext:
    engine: Engine = Engine.LOCALAI
    single_active_backend: bool = True
    # LLAMACPP_PARALLEL as LocalAI's backend reads it (llama-server: server.parallel).
    parallel: int = 1
    gpu_memory_bytes: int | None = None
    # The engine version the rules apply to (None: unknown; each rule says what it assumes).
    engine_version: Version | None = None
    # Where LLAMACPP_PARALLEL is set, as messages name it.
    parallel_setting: str = "server.parallel"
    # The supervisor's gateway fronts the server: it queues a request for a second model.
    gateway: bool = True


def llamacpp_parallel(settings: Settings) -> int:
    """LLAMACPP_PARALLEL as the rendered environment sets it (``localai.environment``
    overrides ``server.parallel``, engines/localai.py), read as the backend reads it:
    ``std::stoi``, so leading digits count and an unreadable value leaves 1 slot."""
    raw = settings.localai.environment.get("LLAMACPP_PARALLEL")
    if raw is None:
        return settings.server.parallel
    match = _STOI.match(raw)
    return max(1, int(match.group(1))) if match else 1


def context_for(settings: Settings, engine_version: Version | None = None) -> LintContext:
    srv = settings.server
    localai = srv.engine is Engine.LOCALAI
    overridden = localai and "LLAMACPP_PARALLEL" in settings.localai.environment
    return LintContext(
        engine=srv.engine, single_active_backend=srv.single_active_backend,
        parallel=llamacpp_parallel(settings) if localai else srv.parallel,
        gpu_memory_bytes=int(srv.gpu_memory_gb * 1024**3) if srv.gpu_memory_gb else None,
        engine_version=engine_version or Version.parse(settings.localai.version),
        parallel_setting=("LLAMACPP_PARALLEL in localai.environment" if overridden
                          else "server.parallel"),
        gateway=settings.gateway.enabled,
    )


def _assumed(version: Version | None) -> str:
    """How a message says which version a range was picked for."""
    return "version unknown: assumed" if version is None else f"{version} here"


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
    trimsuffix: tuple[str, ...] = ()
    f16: bool = False


def option_parallel(options: Sequence[str]) -> int | None:
    """The model's ``parallel:N`` (or ``n_parallel:N``) option; the last readable one wins,
    as in the backend's option loop."""
    found = None
    for opt in options:
        key, _, value = opt.partition(":")
        if key.strip() in PARALLEL_OPTIONS and re.fullmatch(r"[0-9]{1,6}", value.strip()):
            found = int(value)
    return found


# The words LocalAI's llama.cpp backend reads a boolean option by (grpc-server.cpp, the option
# loop: an option with no value is "true"); any other value leaves the setting as it was.
_OPTION_TRUE = frozenset({"true", "1", "yes", "on", "enabled"})
_OPTION_FALSE = frozenset({"false", "0", "no", "off", "disabled"})
# Options that decide how a model's context is split per request, by their names there.
KV_UNIFIED_OPTIONS = ("kv_unified", "unified_kv")
CONTEXT_SHIFT_OPTIONS = ("context_shift",)


def option_flag(options: Sequence[str], names: Sequence[str]) -> bool | None:
    """A boolean backend option as LocalAI's llama.cpp backend reads it: the last one with a
    word it knows wins; None when there is none."""
    found = None
    for opt in options:
        key, _, value = opt.partition(":")
        word = value.strip().lower() or "true"
        if key.strip() in names and word in _OPTION_TRUE | _OPTION_FALSE:
            found = word in _OPTION_TRUE
    return found


def localai_slots(options: Sequence[str], parallel: int, version: Version | None) -> int:
    """Requests LocalAI's llama.cpp backend serves at once for one model. v3.8.0+ (assumed
    when unknown): ``options: parallel:N`` when N is not 1, else LLAMACPP_PARALLEL, which
    applies whenever the model's parallel is 1, so it overrides an explicit ``parallel:1``.
    Before v3.8.0 the backend reads no parallel option: LLAMACPP_PARALLEL alone."""
    wanted = option_parallel(options)
    if wanted is not None and wanted != 1 and at_least(version, 3, 8, 0, unknown=True):
        return max(1, wanted)
    return max(1, parallel)


def _slots(options: Sequence[str], ctx: LintContext) -> int:
    return slots_for(options, ctx.engine, ctx.parallel, ctx.engine_version)


def _request_slots(options: Sequence[str], ctx: LintContext) -> int:
    """How many ways context_size is split: the slots, or 1 with a unified KV cache."""
    return 1 if _kv_unified(options, ctx) else _slots(options, ctx)


def _context_size_unset(f: ModelFacts, ctx: LintContext) -> Lint:
    trained = f.gguf.context_length if f.gguf else None
    whole = f"the model's whole trained context{f' ({trained} tokens here)' if trained else ''}"
    v = ctx.engine_version
    if v is None:
        message = (
            "context_size is not set, and what LocalAI takes then depends on its version "
            f"(unknown): 512 tokens up to v2.26; {whole} on v2.27-v4.6.0, which may not fit "
            f"in memory; on v4.6.1+ the trained context capped at {AUTO_CONTEXT_CAP} tokens, "
            f"less (down to {AUTO_CONTEXT_FLOOR}) when GPU memory is short")
    elif at_least(v, 4, 6, 1, unknown=True):
        here = (f"{min(trained, AUTO_CONTEXT_CAP)} tokens for this model" if trained else
                f"{AUTO_CONTEXT_FLOOR} when the GGUF does not say")
        message = (
            f"context_size is not set: LocalAI v4.6.1+ ({v} here) takes the model's trained "
            f"context capped at {AUTO_CONTEXT_CAP} tokens ({here}), less (down to "
            f"{AUTO_CONTEXT_FLOOR}) when GPU memory is short, so the context depends on the "
            "GPU it runs on")
    elif at_least(v, 2, 27, 0, unknown=True):
        message = (
            f"context_size is not set: LocalAI v2.27-v4.6.0 ({v} here) takes {whole}, whose "
            "KV cache may not fit in memory: the load then fails (could not load model: rpc "
            "error)")
    else:
        message = (f"context_size is not set: LocalAI up to v2.26 ({v} here) uses 512 tokens: "
                   "answers are cut off mid-sentence past it")
    return Lint("context-size-unset", f.name, ("context_size",), message,
                "set context_size explicitly")


def context_rules(f: ModelFacts, ctx: LintContext) -> list[Lint]:
    out: list[Lint] = []
    trained = f.gguf.context_length if f.gguf else None
    if f.context_size is None:
        if ctx.engine is Engine.LOCALAI:
            out.append(_context_size_unset(f, ctx))
        return out
    if trained and f.context_size > trained:
        out.append(Lint(
            "context-exceeds-training", f.name, ("context_size",),
            f"context_size {f.context_size} exceeds the model's trained context {trained}: "
            "output degrades past it", f"set context_size to at most {trained}"))
    if option_flag(f.options, CONTEXT_SHIFT_OPTIONS):
        return out  # the backend drops old tokens instead of stopping: no cut-off
    slots = _request_slots(f.options, ctx)
    per_slot = f.context_size // slots
    need = max(MIN_SLOT_CONTEXT, (f.max_tokens or 0) + PROMPT_ALLOWANCE)
    if per_slot < need:
        if ctx.engine is Engine.LOCALAI:
            split = (f" split over {slots} parallel slots (LLAMACPP_PARALLEL / options "
                     "parallel; LocalAI before v4.3.0 does not unify the KV cache: "
                     f"{_assumed(ctx.engine_version)})")
            finish = "and LocalAI still reports finish_reason \"stop\""
        else:
            split = (f" split over {slots} parallel slots (options parallel, without "
                     "kv_unified:true)")
            finish = ("and llama-server reports finish_reason \"length\" before max_tokens is "
                      "reached")
        split = split if slots > 1 else ""
        evidence = [f"context_size {f.context_size}", f"{slots} slot(s) per model ("
                    + (ctx.parallel_setting if option_parallel(f.options) in (None, 1)
                       else "options parallel") + ")"]
        if trained:
            evidence.append(f"GGUF {f.gguf.architecture if f.gguf else ''}.context_length "
                            f"{trained}")
        out.append(Lint(
            "context-too-small", f.name, ("context_size",),
            f"about {per_slot} tokens per request{split}: answers will be cut off mid-sentence "
            f"when prompt + answer fill it, with no error (context shift is off), {finish}",
            f"raise context_size to at least {need * slots}"
            + (" or lower the parallel slots" if slots > 1 else ""),
            snippet=f"context_size: {need * slots}\n",
            evidence=tuple(evidence)))
    return out


def request_budget(context_size: int | None, options: Sequence[str],
                   ctx: LintContext) -> int | None:
    """Tokens one request gets (prompt + answer): the slot's share of context_size, or all
    of it with a unified KV cache; None when context_size is unset."""
    if context_size is None:
        return None
    return context_size // _request_slots(options, ctx)


def _kv_unified(options: Sequence[str], ctx: LintContext) -> bool:
    """All slots share one KV cache: LocalAI's default from v4.3.0 (unknown version: split),
    and what ``kv_unified`` says on any version that reads it (v3.9.0+, 2387b266d).
    llama-server (the preset carries both options): with ``parallel:N`` only when
    ``kv_unified:true``; without, its automatic slot count always unifies (b11434 logs
    ``kv_unified = 'true'`` even under ``kv_unified:false``)."""
    wanted = option_flag(options, KV_UNIFIED_OPTIONS)
    if ctx.engine is Engine.LOCALAI:
        return wanted if wanted is not None else at_least(ctx.engine_version, 4, 3, 0,
                                                          unknown=False)
    return wanted is True or not option_parallel(options)  # none or 0: automatic


def parallel_rule(f: ModelFacts, ctx: LintContext) -> list[Lint]:
    """An ``options: parallel:N`` that LocalAI does not follow."""
    wanted = option_parallel(f.options)
    if ctx.engine is not Engine.LOCALAI or wanted is None:
        return []
    v, env, setting = ctx.engine_version, max(1, ctx.parallel), ctx.parallel_setting
    if at_least(v, 3, 8, 0, unknown=True):
        if wanted != 1 or env == 1:
            return []
        why = ("LocalAI v3.8.0+ applies it to every model whose parallel is 1, and earlier "
               "versions read no parallel option" if v is None else
               f"LocalAI v3.8.0+ ({v} here) applies it to every model whose parallel is 1")
        return [Lint(
            "parallel-overridden", f.name, ("options",),
            f"options parallel:1 does not make this model serve one request at a time: "
            f"LLAMACPP_PARALLEL={env} ({setting}) overrides it ({why}), so it gets {env} slots",
            f"for one slot set {setting} to 1 and give the models that need more "
            "options parallel:N; otherwise remove parallel:1")]
    if max(1, wanted) == env:
        return []
    return [Lint(
        "parallel-overridden", f.name, ("options",),
        f"options parallel:{wanted} is ignored: LocalAI before v3.8.0 ({v} here) reads no "
        f"parallel option, so LLAMACPP_PARALLEL={env} ({setting}) sets this model's slots",
        f"set {setting} to {wanted} (it applies to every model), or run LocalAI v3.8.0+")]


def max_tokens_rule(f: ModelFacts, ctx: LintContext) -> list[Lint]:
    if f.max_tokens is not None:
        return []
    return [Lint(
        "max-tokens-unset", f.name, ("parameters", "max_tokens"),
        "parameters.max_tokens is not set: only the slot's context bounds an answer, so a "
        "runaway answer is cut mid-sentence when the context fills",
        "set parameters.max_tokens below the per-request context",
        snippet="parameters:\n  max_tokens: 512\n")]


def _has_template(f: ModelFacts) -> bool:
    """LocalAI's HasTemplate() less use_tokenizer_template: a chat, chat_message,
    completion or edit template."""
    return any(f.templates.values())


def _tokenizer_template_honoured(version: Version | None) -> bool:
    # Honoured by the llama.cpp backend since v3.8.0; assumed when unknown: whoever sets it
    # asks for a v3.8.0+ feature.
    return at_least(version, 3, 8, 0, unknown=True)


def special_token_rules(f: ModelFacts, ctx: LintContext) -> list[Lint]:
    if ctx.engine is not Engine.LOCALAI:
        return []  # llama-server stops on the GGUF's own end-of-generation tokens
    v = ctx.engine_version
    if f.use_tokenizer_template and _tokenizer_template_honoured(v):
        return []  # LocalAI ignores the Go templates; the GGUF's own template ends turns
    # v3.8.0+ switches use_tokenizer_template on for a config with no template at all
    # (core/config/gguf.go). Unknown: assumed older, since the fix (a stopword) is harmless.
    no_template = not _has_template(f)
    if no_template and f.gguf is not None and at_least(v, 3, 8, 0, unknown=False):
        return []
    out: list[Lint] = []
    stops = set(f.stopwords)
    if f.gguf is not None:
        tokenizer_fix = (", or set template.use_tokenizer_template: true"
                         if _tokenizer_template_honoured(v) else "")
        since = (f" on LocalAI before v3.8.0 ({_assumed(v)}; v3.8.0+ uses the GGUF's chat "
                 "template for a config with no template)" if no_template else "")
        tokens = [t for t in (f.gguf.eos_token, f.gguf.eot_token) if t]
        for tok in dict.fromkeys(tokens):
            # A stopword stops generation when it appears in the output: one that is part of
            # the token's text stops it; a longer one containing it never matches.
            if not any(s and s in tok for s in stops):
                key = ("tokenizer.ggml.eos_token_id" if tok == f.gguf.eos_token
                       else "tokenizer.ggml.eot_token_id")
                out.append(Lint(
                    "special-tokens", f.name, ("stopwords",),
                    f"the model ends turns with {tok!r} but stopwords does not list it: special "
                    f"tokens will appear at the end of answers{since}",
                    f"add {tok!r} to stopwords{tokenizer_fix}",
                    snippet=stopwords_snippet(f.stopwords, tok),
                    evidence=(f"GGUF {key} -> {tok!r}",)))
    own = turns_of(f.gguf.chat_template) if f.gguf and f.gguf.chat_template else None
    for key, text in sorted(f.templates.items()):
        turns = turns_of(text)
        if turns is None:
            continue
        if own is not None and own.family != turns.family:
            fix = ("set template.use_tokenizer_template: true (the GGUF's own template)"
                   if _tokenizer_template_honoured(v) else
                   f"write template.{key} with the {own.family.name} markers")
            out.append(Lint(
                "template-family-mismatch", f.name, ("template", key),
                f"template.{key} uses {turns.family.name} markers "
                f"({', '.join(m for m, _ in turns.found)}) but the model's own chat template "
                f"(GGUF tokenizer.chat_template) uses {own.family.name} markers "
                f"({', '.join(m for m, _ in own.found)}): the model was trained to end its "
                "turns the other way, so it runs on past them and its own end markers show in "
                "answers", fix,
                snippet="template:\n  use_tokenizer_template: true\n"
                if _tokenizer_template_honoured(v) else None,
                evidence=(f"GGUF tokenizer.chat_template: {own.family.name}",)))
        for marker, why in turns.stopwords():
            if marker in stops:
                continue
            if why.startswith("ends"):
                message = (f"template.{key} ({turns.family.name}) ends each turn with "
                           f"{marker!r} but stopwords does not list it: the model writes it "
                           "when its answer is done, and it shows at the end of answers")
            else:
                message = (f"template.{key} ({turns.family.name}) opens each user turn with "
                           f"{marker!r}: the model's answer ends with its EOS token, and a "
                           f"model that runs past it writes the next turn's {marker!r} into the "
                           "answer; stopwords does not list it")
            out.append(Lint("template-end-marker", f.name, ("template", key), message,
                            f"add {marker!r} to stopwords",
                            snippet=stopwords_snippet(f.stopwords, marker)))
    return out


def stopwords_snippet(current: Sequence[str], *adding: str) -> str:
    """The model's ``stopwords:`` with ``adding`` appended, as YAML to paste."""
    words = [*current, *(w for w in adding if w not in current)]
    return "stopwords:\n" + "".join(f"- {json.dumps(w)}\n" for w in words)


def trimsuffix_rule(f: ModelFacts, ctx: LintContext) -> list[Lint]:
    """``trimsuffix`` is applied to the whole answer once generated (core/backend/llm.go
    Finetune, from ComputeChoices in core/http/endpoints/openai/inference.go); streamed
    tokens go out as generated, so a streamed answer keeps the suffix."""
    if ctx.engine is not Engine.LOCALAI:
        return []
    missing = [t for t in f.trimsuffix if t.strip() and t not in f.stopwords]
    if not missing:
        return []
    return [Lint(
        "trimsuffix-streamed", f.name, ("trimsuffix",),
        f"trimsuffix {', '.join(repr(t) for t in missing)} is cut from answers only when they "
        "are not streamed: LocalAI trims the finished answer, while a stream sends each token "
        "as it comes, so streamed answers still end with it",
        f"also list {', '.join(repr(t) for t in missing)} in stopwords (generation then stops "
        "there, streamed or not)", snippet=stopwords_snippet(f.stopwords, *missing))]


def f16_rule(f: ModelFacts, ctx: LintContext) -> list[Lint]:
    """LocalAI passes ``f16`` as F16Memory, which its llama.cpp backend no longer reads
    (backend/cpp/llama-cpp/grpc-server.cpp, checked at v4.9.0): it changes nothing, and never
    made a quantised file 16-bit."""
    quant = f.gguf.quantization if f.gguf else None
    if ctx.engine is not Engine.LOCALAI or not f.f16 or quant in (None, "F16", "F32", "BF16"):
        return []
    return [Lint(
        "f16-quantised", f.name, ("f16",),
        f"f16: true with a {quant} file: LocalAI's llama.cpp backend ignores f16 (it does "
        "not dequantise the weights to 16 bits nor set the KV cache type), so it changes "
        "neither quality nor memory",
        "remove f16 (for a 16-bit KV cache LocalAI's options take cache_type_k:f16)",
        snippet="f16: false\n", evidence=(f"GGUF general.file_type -> {quant}",))]


def chat_message_input_line(text: str) -> int | None:
    """The line (1-based, within ``text``) where a ``chat_message`` template first uses
    ``.Input`` in an action; None when it does not. Every LocalAI version renders
    chat_message with per-message data that has no ``.Input``: the render fails and LocalAI
    falls back to plain role-prefixed text (core/templates/evaluator.go)."""
    for action in _ACTION.finditer(text):
        body = action.group(1).strip("- \t\r\n")
        if body.startswith("/*"):
            continue  # a comment
        found = _INPUT_FIELD.search(action.group(1))
        if found is not None:
            return text.count("\n", 0, action.start(1) + found.start()) + 1
    return None


# Fields of LocalAI's per-message data (core/templates ChatMessageTemplateData), not of the
# per-conversation data template.chat gets.
_PER_MESSAGE = re.compile(r"(?<![\w)\]])\$?(\.RoleName|\.Role|\.Content|\.FunctionCall|"
                          r"\.FunctionName|\.LastMessage)\b")


def _chat_message_snippet(text: str) -> str:
    """template.chat's per-message text moved to chat_message, as YAML to paste."""
    body = "".join(f"    {ln}\n" for ln in text.rstrip("\n").splitlines())
    return "template:\n  chat_message: |\n" + body + "  chat: |\n    {{.Input}}\n"


def template_rules(f: ModelFacts, ctx: LintContext) -> list[Lint]:
    out: list[Lint] = []
    for key, text in sorted(f.templates.items()):
        if key == "chat_message" and chat_message_input_line(text) is not None:
            continue  # an error, reported by modelconfig with the template's line
        per_message = sorted(set(_PER_MESSAGE.findall(text)))
        if key == "chat" and per_message and not _INPUT_FIELD.search(text):
            out.append(Lint(
                "chat-is-per-message", f.name, ("template", "chat"),
                f"template.chat uses {', '.join(per_message)}, which exist only per message: "
                "this is a chat_message template. LocalAI renders template.chat once per "
                "conversation with .Input (the messages already joined), so these fields are "
                "not there and the prompt is not what the template says",
                "move it to template.chat_message and make template.chat \"{{.Input}}\"",
                snippet=_chat_message_snippet(text)))
            continue
        wanted = _TEMPLATE_INPUTS.get(key)
        if wanted and "{{" in text and not any(w in text for w in wanted):
            out.append(Lint(
                "template-ignores-input", f.name, ("template", key),
                f"template.{key} never uses {' or '.join(wanted)}: the prompt never reaches "
                "the model", f"insert {{{{{wanted[0]}}}}} where the text should go"))
    if not f.use_tokenizer_template:
        return out
    v = ctx.engine_version
    if ctx.engine is Engine.LOCALAI and not _tokenizer_template_honoured(v):
        out.append(Lint(
            "tokenizer-template-unsupported", f.name, ("template", "use_tokenizer_template"),
            f"template.use_tokenizer_template is honoured by LocalAI's llama.cpp backend only "
            f"since v3.8.0 ({v} here): before that LocalAI skips its own chat templating and "
            "the backend ignores the messages, so the model gets an empty prompt",
            "write template.chat / chat_message and stopwords, or run LocalAI v3.8.0+"))
    elif f.gguf is not None and not f.gguf.chat_template:
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
        f"gpu_layers: {most} offloads every layer", snippet=f"gpu_layers: {most}\n",
        evidence=(f"GGUF {f.gguf.architecture}.block_count {f.gguf.block_count}",))]


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


def slots_for(options: Sequence[str], engine: Engine, parallel: int,
              version: Version | None = None) -> int:
    """Requests the engine serves at once for one model: for LocalAI see ``localai_slots``
    (``parallel`` is LLAMACPP_PARALLEL, ``llamacpp_parallel(settings)``); llama-server:
    options parallel:N, else its own default."""
    if engine is Engine.LOCALAI:
        return localai_slots(options, parallel, version)
    return max(1, option_parallel(options) or LLAMA_SERVER_DEFAULT_SLOTS)


def _need(m: ModelFacts) -> int:
    return (m.file_size or 0) + kv_cache_bytes(m)


def fit_rule(models: Sequence[ModelFacts], ctx: LintContext) -> list[Lint]:
    if len(models) < 2 or ctx.gpu_memory_bytes is None:
        return []
    gib = 1024**3
    gpu = ctx.gpu_memory_bytes / gib
    if not ctx.single_active_backend:
        need = sum(_need(m) for m in models)
        if need <= ctx.gpu_memory_bytes:
            return []
        return [Lint(
            "models-do-not-fit", None, (),
            f"the {len(models)} models need up to {need / gib:.1f} GiB together (files + KV "
            f"cache) but the GPU has {gpu:.1f} GiB: concurrent requests to two models will "
            "fail (out of memory: could not load model: rpc error)",
            "set server.single_active_backend = true, or serve fewer or smaller models")]
    # One active backend keeps models apart only before v3.10.0 (there a request for B
    # waits until A is idle and unloads it); llama-server's models_max 1 waits likewise.
    v = ctx.engine_version
    if ctx.engine is not Engine.LOCALAI or not at_least(v, 3, 10, 0, unknown=True):
        return []
    first, second = sorted(models, key=_need, reverse=True)[:2]
    need = _need(first) + _need(second)
    if need <= ctx.gpu_memory_bytes:
        return []
    message = (
        f"models {first.name!r} and {second.name!r} need up to {need / gib:.1f} GiB together "
        f"(files + KV cache) but the GPU has {gpu:.1f} GiB, and on LocalAI v3.10.0+ "
        f"({_assumed(v)}) one active backend does not keep them apart: a request for one "
        f"while the other is busy waits {LRU_EVICTION_RETRIES} x 1 s, then loads it beside "
        "the busy model instead of unloading that, and the load fails (out of memory: could "
        "not load model: rpc error)")
    if ctx.gateway:
        return [Lint(
            "models-do-not-fit", None, (),
            message + "; the supervisor's gateway ([gateway] enabled) queues that request "
            "until the busy model is idle, so only requests sent to LocalAI directly fail",
            "send every client through the gateway, or serve smaller models")]
    return [Lint(
        "models-do-not-fit", None, (),
        message + "; the supervisor's gateway would queue that request until the busy model "
        "is idle, but it is off",
        "set [gateway] enabled = true (the default), or serve smaller models")]


MODEL_RULES = (context_rules, parallel_rule, max_tokens_rule, special_token_rules,
               template_rules, gpu_layers_rule, trimsuffix_rule, f16_rule)


def lint(models: Sequence[ModelFacts], ctx: LintContext) -> list[Lint]:
    out = [w for m in models for rule in MODEL_RULES for w in rule(m, ctx)]
    return out + fit_rule(models, ctx)


def closest(word: str, candidates: Sequence[str]) -> str | None:
    """The likeliest intended key (``templature`` → ``temperature``), if one is close."""
    import difflib

    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return match[0] if match else None
