"""Lint rules: each one triggered and not triggered, as pure functions and through validate().

The exact messages are asserted on purpose: they are what an operator reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor.ggufinfo import GGUFInfo
from supervisor.lint import (
    ALL_LAYERS_IDIOM,
    MIN_SLOT_CONTEXT,
    Lint,
    LintContext,
    ModelFacts,
    chat_message_input_line,
    closest,
    context_for,
    kv_cache_bytes,
    lint,
    llamacpp_parallel,
    slots_for,
)
from supervisor.localai_schema import known_keys
from supervisor.modelconfig import Problem, Validation, validate
from supervisor.settings import Engine, Settings
from supervisor.tinygguf import DEFAULT_CHAT_TEMPLATE, write_tiny_llama
from supervisor.versions import Version

LOCALAI = LintContext()
LLAMA = LintContext(engine=Engine.LLAMA_SERVER)


def on(version: str | None, **fields: Any) -> LintContext:
    """A LocalAI context for ``version`` (None: unknown)."""
    return LintContext(engine_version=Version.parse(version), **fields)


def gguf(**fields: Any) -> GGUFInfo:
    """Header facts like a tiny llama's (2 blocks, 64 wide, 4096 trained, eos </s>)."""
    base: dict[str, Any] = dict(
        path=Path("/m/tiny.gguf"), version=3, architecture="llama", name="tiny",
        block_count=2, context_length=4096, embedding_length=64, file_type=1,
        file_type_name="MOSTLY_F16", quantization="F16", bos_token_id=1, bos_token="<s>",
        eos_token_id=2, eos_token="</s>", eot_token_id=None, eot_token=None,
        chat_template=DEFAULT_CHAT_TEMPLATE, kv_count=20, tensor_count=21, alignment=32,
        data_offset=8064, expected_size=239488, unknown_tensor_types=(), actual_size=239488,
        header_bytes_read=8064, split=None, split_tensor_count=None,
    )
    return GGUFInfo(**{**base, **fields})


def facts(**fields: Any) -> ModelFacts:
    """An entry that triggers no rule; each test changes what it is about."""
    base: dict[str, Any] = dict(
        name="m", context_size=4096, max_tokens=256, gpu_layers=None, stopwords=("</s>",),
        templates={}, use_tokenizer_template=False, options=(), file_size=239488,
        gguf=gguf(),
    )
    return ModelFacts(**{**base, **fields})


def codes(found: list[Lint]) -> list[str]:
    return [w.code for w in found]


def only(found: list[Lint]) -> Lint:
    assert len(found) == 1, found
    return found[0]


def test_the_baseline_facts_are_clean() -> None:
    assert lint([facts()], LOCALAI) == []
    assert lint([facts()], LLAMA) == []


# ---- context-size-unset -------------------------------------------------------------------


def test_context_size_unset_version_unknown_names_every_range() -> None:
    w = only(lint([facts(context_size=None)], LOCALAI))
    assert w == Lint(
        "context-size-unset", "m", ("context_size",),
        "context_size is not set, and what LocalAI takes then depends on its version "
        "(unknown): 512 tokens up to v2.26; the model's whole trained context (4096 tokens "
        "here) on v2.27-v4.6.0, which may not fit in memory; on v4.6.1+ the trained context "
        "capped at 8192 tokens, less (down to 4096) when GPU memory is short",
        "set context_size explicitly")


def test_context_size_unset_without_gguf_facts() -> None:
    w = only(lint([facts(context_size=None, gguf=None)], LOCALAI))
    assert "the model's whole trained context on v2.27-v4.6.0, which may not fit" in w.message


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("v2.26.0", "context_size is not set: LocalAI up to v2.26 (v2.26.0 here) uses 512 "
                    "tokens: answers are cut off mid-sentence past it"),
        ("v2.27.0", "context_size is not set: LocalAI v2.27-v4.6.0 (v2.27.0 here) takes the "
                    "model's whole trained context (131072 tokens here), whose KV cache may "
                    "not fit in memory: the load then fails (could not load model: rpc error)"),
        ("v4.6.0", "context_size is not set: LocalAI v2.27-v4.6.0 (v4.6.0 here) takes the "
                   "model's whole trained context (131072 tokens here), whose KV cache may not "
                   "fit in memory: the load then fails (could not load model: rpc error)"),
        ("v4.6.1", "context_size is not set: LocalAI v4.6.1+ (v4.6.1 here) takes the model's "
                   "trained context capped at 8192 tokens (8192 tokens for this model), less "
                   "(down to 4096) when GPU memory is short, so the context depends on the GPU "
                   "it runs on"),
    ],
)
def test_context_size_unset_by_version(version: str, message: str) -> None:
    long_context = gguf(context_length=131072)
    w = only(lint([facts(context_size=None, gguf=long_context)], on(version)))
    assert (w.code, w.message, w.hint) == ("context-size-unset", message,
                                           "set context_size explicitly")
    assert lint([facts(context_size=8192, gguf=long_context)], on(version)) == []


def test_context_size_unset_on_v4_6_1_with_a_short_or_unknown_trained_context() -> None:
    short = only(lint([facts(context_size=None)], on("v4.9.0")))
    assert "(4096 tokens for this model)" in short.message
    unknown = only(lint([facts(context_size=None, gguf=None)], on("v4.9.0")))
    assert "(4096 when the GGUF does not say)" in unknown.message


def test_context_size_unset_is_not_reported_for_llama_server() -> None:
    # llama-server's own default caps the context at the trained one; nothing to guess.
    assert lint([facts(context_size=None)], LLAMA) == []


# ---- context-exceeds-training -------------------------------------------------------------


def test_context_exceeds_training() -> None:
    w = only(lint([facts(context_size=8192)], LOCALAI))
    assert w == Lint(
        "context-exceeds-training", "m", ("context_size",),
        "context_size 8192 exceeds the model's trained context 4096: output degrades past it",
        "set context_size to at most 4096")
    assert lint([facts(context_size=4096)], LOCALAI) == []
    assert lint([facts(context_size=8192, gguf=gguf(context_length=None))], LOCALAI) == []
    assert codes(lint([facts(context_size=8192)], LLAMA)) == ["context-exceeds-training"]


# ---- context-too-small --------------------------------------------------------------------


def test_context_too_small_split_over_parallel_slots() -> None:
    w = only(lint([facts(context_size=4095)], LintContext(parallel=8)))
    assert w == Lint(
        "context-too-small", "m", ("context_size",),
        "about 511 tokens per request split over 8 parallel slots (LLAMACPP_PARALLEL / options "
        "parallel; LocalAI before v4.3.0 does not unify the KV cache: version unknown: "
        "assumed): answers will be cut off mid-sentence when prompt + answer fill it, with no "
        "error (context shift is off), and LocalAI still reports finish_reason \"stop\"",
        "raise context_size to at least 8192 or lower the parallel slots")
    assert w.snippet == "context_size: 8192\n"
    assert w.evidence == ("context_size 4095", "8 slot(s) per model (server.parallel)",
                          "GGUF llama.context_length 4096")


@pytest.mark.parametrize(("version", "options", "split"), [
    (None, (), True), ("v4.2.0", (), True),                 # split: 511 tokens per request
    ("v4.3.0", (), False), ("v4.9.0", (), False),          # one KV cache shared by the slots
    ("v4.9.0", ("kv_unified:false",), True),
    # The words LocalAI's llama.cpp backend reads (grpc-server.cpp), its alias, the last wins.
    ("v4.9.0", ("kv_unified:0",), True), ("v4.9.0", ("unified_kv:disabled",), True),
    ("v4.9.0", ("kv_unified:off", "kv_unified:maybe"), True),
    ("v4.2.0", ("kv_unified:on",), False), ("v4.2.0", ("unified_kv",), False),
    ("v4.9.0", ("kv_unified:no", "kv_unified:enabled"), False),
])
def test_from_v4_3_the_kv_cache_is_unified_and_not_split_per_slot(
        version: str | None, options: tuple[str, ...], split: bool) -> None:
    found = lint([facts(context_size=4095, options=options)], on(version, parallel=8))
    assert codes(found) == (["context-too-small"] if split else [])


def test_llama_server_splits_unless_kv_unified() -> None:
    """The preset carries parallel and kv_unified; llama-server's automatic slot count (no
    parallel option) always unifies (measured: n_slots 4, kv_unified 'true', n_ctx_slot = the
    whole context, also under kv_unified:false)."""
    llama = LintContext(engine=Engine.LLAMA_SERVER)
    w = only(lint([facts(context_size=4095, options=("parallel:8",))], llama))
    assert w.code == "context-too-small"
    assert w.message.startswith("about 511 tokens per request split over 8 parallel slots "
                                "(options parallel, without kv_unified:true)")
    assert "llama-server reports finish_reason \"length\"" in w.message
    assert "LocalAI" not in w.message
    assert lint([facts(context_size=4095, options=("parallel:8", "kv_unified:true"))],
                llama) == []
    for auto in ((), ("kv_unified:false",)):
        assert lint([facts(context_size=1024, options=auto)], llama) == []


def test_context_shift_on_means_no_cut_off() -> None:
    assert lint([facts(context_size=4095, options=("context_shift:true",))],
                LintContext(parallel=8)) == []


def test_context_too_small_single_slot() -> None:
    w = only(lint([facts(context_size=512)], LOCALAI))
    assert w.message.startswith("about 512 tokens per request: answers will be cut off")
    assert w.hint == f"raise context_size to at least {MIN_SLOT_CONTEXT}"


def test_context_too_small_counts_max_tokens_plus_a_prompt() -> None:
    w = only(lint([facts(context_size=2048, max_tokens=2000)], LOCALAI))
    assert w.hint == "raise context_size to at least 2256"
    assert lint([facts(context_size=2256, max_tokens=2000)], LOCALAI) == []


@pytest.mark.parametrize(
    ("options", "warns"),
    [
        (("parallel:2",), False),  # 4095 // 2 = 2047 per slot: enough
        (("parallel: 2",), False),
        (("parallel:8",), True),
        (("parallel:x",), True),  # not a number: the server setting (8) stands
        (("parallel:0",), False),  # at least one slot
        (("context_shift:false",), True),
    ],
)
def test_options_parallel_overrides_the_server_setting(options: tuple[str, ...],
                                                       warns: bool) -> None:
    found = lint([facts(context_size=4095, options=options)], LintContext(parallel=8))
    assert codes(found) == (["context-too-small"] if warns else [])


def test_llama_server_slots_do_not_follow_llamacpp_parallel() -> None:
    assert lint([facts(context_size=4095)], LintContext(engine=Engine.LLAMA_SERVER,
                                                        parallel=8)) == []


@pytest.mark.parametrize("value", ["²", "٣", "1234567", "-2", "2.0"])
def test_options_parallel_that_is_not_a_plain_number_is_ignored(value: str) -> None:
    # Unicode digits pass str.isdigit() but not int(): they must not make lint raise.
    assert lint([facts(options=(f"parallel:{value}",))], LOCALAI) == []
    found = lint([facts(context_size=4095, options=(f"parallel:{value}",))],
                 LintContext(parallel=8))
    assert codes(found) == ["context-too-small"]  # the server setting (8) stands


# ---- parallel-overridden ------------------------------------------------------------------


@pytest.mark.parametrize("version", [None, "v3.8.0", "v4.9.0"])
def test_llamacpp_parallel_overrides_options_parallel_1(version: str | None) -> None:
    # LLAMACPP_PARALLEL applies whenever the model's parallel is 1: an explicit parallel:1 too.
    found = lint([facts(context_size=4095, options=("parallel:1",))],
                 on(version, parallel=8))
    if version == "v4.9.0":  # a unified KV cache: 8 slots, but no cut-off at 511 tokens
        assert codes(found) == ["parallel-overridden"]
    else:
        assert codes(found) == ["context-too-small", "parallel-overridden"]
        assert found[0].message.startswith("about 511 tokens per request split over 8 parallel")
    why = ("LocalAI v3.8.0+ applies it to every model whose parallel is 1, and earlier "
           "versions read no parallel option" if version is None else
           f"LocalAI v3.8.0+ ({version} here) applies it to every model whose parallel is 1")
    assert found[-1] == Lint(
        "parallel-overridden", "m", ("options",),
        "options parallel:1 does not make this model serve one request at a time: "
        f"LLAMACPP_PARALLEL=8 (server.parallel) overrides it ({why}), so it gets 8 slots",
        "for one slot set server.parallel to 1 and give the models that need more options "
        "parallel:N; otherwise remove parallel:1")


def test_the_override_names_where_llamacpp_parallel_is_set() -> None:
    ctx = on("v4.9.0", parallel=4, parallel_setting="LLAMACPP_PARALLEL in localai.environment")
    w = only(lint([facts(options=("parallel:1",))], ctx))
    assert "LLAMACPP_PARALLEL=4 (LLAMACPP_PARALLEL in localai.environment) overrides it" in (
        w.message)
    assert w.hint.startswith("for one slot set LLAMACPP_PARALLEL in localai.environment to 1")


@pytest.mark.parametrize(
    ("options", "parallel", "version"),
    [
        (("parallel:1",), 1, None),  # LLAMACPP_PARALLEL=1: one slot, as asked
        (("parallel:2",), 8, None),  # N > 1 wins on v3.8.0+ (assumed)
        (("parallel:2",), 8, "v3.8.0"),
        (("n_parallel:2",), 8, "v3.8.0"),
        (("parallel:1", "parallel:2"), 8, "v4.9.0"),  # the last one wins
        (("parallel:2",), 2, "v3.7.0"),  # ignored, but what LLAMACPP_PARALLEL gives anyway
        ((), 2, "v3.7.0"),
    ],
)
def test_options_parallel_followed(options: tuple[str, ...], parallel: int,
                                   version: str | None) -> None:
    assert lint([facts(options=options)], on(version, parallel=parallel)) == []


def test_options_parallel_is_ignored_before_v3_8() -> None:
    found = lint([facts(context_size=4095, options=("parallel:2",))], on("v3.7.0", parallel=8))
    assert codes(found) == ["context-too-small", "parallel-overridden"]
    assert found[0].message.startswith("about 511 tokens per request split over 8 parallel")
    assert found[1] == Lint(
        "parallel-overridden", "m", ("options",),
        "options parallel:2 is ignored: LocalAI before v3.8.0 (v3.7.0 here) reads no parallel "
        "option, so LLAMACPP_PARALLEL=8 (server.parallel) sets this model's slots",
        "set server.parallel to 2 (it applies to every model), or run LocalAI v3.8.0+")
    one = only(lint([facts(options=("parallel:1",))], on("v3.7.0", parallel=2)))
    assert one.message.startswith("options parallel:1 is ignored: LocalAI before v3.8.0")
    # v3.8.0 reads it: 2 slots of 2047 tokens, nothing to say.
    assert lint([facts(context_size=4095, options=("parallel:2",))],
                 on("v3.8.0", parallel=8)) == []


def test_options_parallel_is_not_localai_s_on_llama_server() -> None:
    assert lint([facts(options=("parallel:1",))], LintContext(engine=Engine.LLAMA_SERVER,
                                                              parallel=8)) == []


@pytest.mark.parametrize(
    ("options", "parallel", "version", "slots"),
    [
        (("parallel:1",), 8, None, 8),
        (("parallel:1",), 8, "v3.8.0", 8),
        (("parallel:4",), 8, None, 4),
        (("parallel:4",), 8, "v3.7.0", 8),
        (("parallel:4",), 8, "v3.8.0", 4),
        (("parallel:0",), 8, "v3.8.0", 1),
        ((), 3, None, 3),
    ],
)
def test_slots_for_localai(options: tuple[str, ...], parallel: int, version: str | None,
                           slots: int) -> None:
    assert slots_for(options, Engine.LOCALAI, parallel, Version.parse(version)) == slots


def test_slots_for_llama_server() -> None:
    assert slots_for((), Engine.LLAMA_SERVER, 8) == 4
    assert slots_for(("parallel:1",), Engine.LLAMA_SERVER, 8) == 1


@pytest.mark.parametrize(
    ("environment", "parallel"),
    [
        ({}, 8),  # server.parallel's default
        ({"LLAMACPP_PARALLEL": "1"}, 1),
        ({"llamacpp_parallel": "3"}, 3),  # names are upper-cased by the settings
        ({"LLAMACPP_PARALLEL": " 4x"}, 4),  # std::stoi: leading digits
        ({"LLAMACPP_PARALLEL": "many"}, 1),  # unreadable: the backend keeps 1
        ({"LLAMACPP_PARALLEL": "0"}, 1),
        ({"LLAMACPP_PARALLEL": "9" * 40}, 1),  # out of range for stoi
    ],
)
def test_llamacpp_parallel_follows_the_rendered_environment(environment: dict[str, str],
                                                             parallel: int) -> None:
    settings = Settings(localai={"environment": environment})
    assert llamacpp_parallel(settings) == parallel
    ctx = context_for(settings)
    assert ctx.parallel == parallel
    assert ctx.parallel_setting == ("server.parallel" if not environment else
                                    "LLAMACPP_PARALLEL in localai.environment")


# ---- max-tokens-unset ---------------------------------------------------------------------


def test_max_tokens_unset() -> None:
    w = only(lint([facts(max_tokens=None)], LOCALAI))
    assert w == Lint(
        "max-tokens-unset", "m", ("parameters", "max_tokens"),
        "parameters.max_tokens is not set: only the slot's context bounds an answer, so a "
        "runaway answer is cut mid-sentence when the context fills",
        "set parameters.max_tokens below the per-request context")
    assert lint([facts(max_tokens=0)], LOCALAI) == []


# ---- special-tokens -----------------------------------------------------------------------


def test_special_tokens_missing_from_stopwords() -> None:
    w = only(lint([facts(stopwords=(), templates={"chat": "{{.Input}}"})], LOCALAI))
    assert w == Lint(
        "special-tokens", "m", ("stopwords",),
        "the model ends turns with '</s>' but stopwords does not list it: special tokens will "
        "appear at the end of answers",
        "add '</s>' to stopwords, or set template.use_tokenizer_template: true")
    # A Go template is LocalAI's on every version: v3.8.0+ warns the same.
    assert lint([facts(stopwords=(), templates={"chat": "{{.Input}}"})], on("v3.8.0")) == [w]


@pytest.mark.parametrize(
    ("version", "message", "hint"),
    [
        (None, "the model ends turns with '</s>' but stopwords does not list it: special "
               "tokens will appear at the end of answers on LocalAI before v3.8.0 (version "
               "unknown: assumed; v3.8.0+ uses the GGUF's chat template for a config with no "
               "template)", "add '</s>' to stopwords, or set template.use_tokenizer_template: "
                            "true"),
        ("v3.7.1", "the model ends turns with '</s>' but stopwords does not list it: special "
                   "tokens will appear at the end of answers on LocalAI before v3.8.0 (v3.7.1 "
                   "here; v3.8.0+ uses the GGUF's chat template for a config with no template)",
         "add '</s>' to stopwords"),
    ],
)
def test_special_tokens_with_no_template_before_v3_8(version: str | None, message: str,
                                                     hint: str) -> None:
    w = only(lint([facts(stopwords=())], on(version)))
    assert (w.code, w.path, w.message, w.hint) == ("special-tokens", ("stopwords",), message,
                                                   hint)


@pytest.mark.parametrize("version", ["v3.8.0", "v4.9.0"])
def test_no_special_tokens_warning_with_no_template_on_v3_8(version: str) -> None:
    # v3.8.0+ switches use_tokenizer_template on by itself: the GGUF's template ends turns.
    assert lint([facts(stopwords=())], on(version)) == []
    # An empty template value is no template (LocalAI's HasTemplate()).
    assert lint([facts(stopwords=(), templates={"chat": ""})], on(version)) == []


def test_special_tokens_eos_and_eot_are_both_checked() -> None:
    found = lint([facts(stopwords=(), gguf=gguf(eot_token="<|eot_id|>"))], LOCALAI)
    assert [w.message.split("'")[1] for w in found] == ["</s>", "<|eot_id|>"]
    same = lint([facts(stopwords=(), gguf=gguf(eot_token="</s>"))], LOCALAI)
    assert len(same) == 1  # one warning per distinct token


@pytest.mark.parametrize(
    "change",
    [
        {"stopwords": ("</s>",)},
        {"stopwords": ("x", "</s>")},
        {"stopwords": (), "use_tokenizer_template": True},
        {"stopwords": (), "gguf": None},
        {"stopwords": (), "gguf": gguf(eos_token=None)},
    ],
    ids=repr,
)
def test_special_tokens_not_reported(change: dict[str, Any]) -> None:
    assert lint([facts(**change)], LOCALAI) == []


@pytest.mark.parametrize("stop", ["</s>\n", "x</s>", "</s></s>"])
def test_a_longer_stopword_does_not_cover_the_token(stop: str) -> None:
    # A stop string longer than the emitted token text never matches it.
    assert codes(lint([facts(stopwords=(stop,))], LOCALAI)) == ["special-tokens"]


@pytest.mark.parametrize("stop", ["</s", "</", "s>"])
def test_a_stopword_that_is_part_of_the_token_covers_it(stop: str) -> None:
    assert lint([facts(stopwords=(stop,))], LOCALAI) == []


def test_an_empty_stopword_covers_nothing() -> None:
    assert codes(lint([facts(stopwords=("",))], LOCALAI)) == ["special-tokens"]


def test_special_tokens_not_reported_for_llama_server() -> None:
    assert lint([facts(stopwords=())], LLAMA) == []


# ---- template-end-marker ------------------------------------------------------------------


def test_template_end_marker() -> None:
    chat = "<|im_start|>user\n{{.Input}}<|im_end|>\n<|im_start|>assistant\n"
    w = only(lint([facts(templates={"chat": chat})], LOCALAI))
    assert w == Lint(
        "template-end-marker", "m", ("template", "chat"),
        "template.chat (ChatML) ends each turn with '<|im_end|>' but stopwords does not list "
        "it: the model writes it when its answer is done, and it shows at the end of answers",
        "add '<|im_end|>' to stopwords")
    assert w.snippet == 'stopwords:\n- "</s>"\n- "<|im_end|>"\n'
    assert lint([facts(templates={"chat": chat}, stopwords=("</s>", "<|im_end|>"))],
                LOCALAI) == []
    assert lint([facts(templates={"chat": chat})], LLAMA) == []


# Each family in its chat (whole conversation, .Input) and chat_message (.Content) form, and
# the stopwords its turn roles call for: end-of-turn markers, and the next user turn's opener
# where the answer ends with EOS. An assistant opener ([/INST], ASSISTANT:) is never one.
FAMILY_TEMPLATES = [
    ("Llama-2/Mistral", "[INST] {{.Input}} [/INST]",
     "{{if eq .RoleName \"user\"}}[INST] {{.Content}} [/INST]{{else}}{{.Content}}{{end}}",
     ["[INST]"]),
    ("ChatML", "<|im_start|>user\n{{.Input}}<|im_end|>\n<|im_start|>assistant\n",
     "<|im_start|>{{.RoleName}}\n{{.Content}}<|im_end|>", ["<|im_end|>"]),
    ("Llama-3", "<|start_header_id|>user<|end_header_id|>\n\n{{.Input}}<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\n",
     "<|start_header_id|>{{.RoleName}}<|end_header_id|>\n\n{{.Content}}<|eot_id|>",
     ["<|eot_id|>"]),
    ("Vicuna", "USER: {{.Input}}\nASSISTANT:", "{{.RoleName}}: {{.Content}}"
     "{{if eq .RoleName \"user\"}}\nUSER: {{end}}", ["USER:"]),
    ("Gemma", "<start_of_turn>user\n{{.Input}}<end_of_turn>\n<start_of_turn>model\n",
     "<start_of_turn>{{.RoleName}}\n{{.Content}}<end_of_turn>", ["<end_of_turn>"]),
]


@pytest.mark.parametrize(("family", "chat", "message", "stops"), FAMILY_TEMPLATES)
@pytest.mark.parametrize("key", ["chat", "chat_message"])
def test_turn_markers_are_read_by_their_role(family: str, chat: str, message: str,
                                             stops: list[str], key: str) -> None:
    text = chat if key == "chat" else message
    found = [w for w in lint([facts(templates={key: text})], LOCALAI)
             if w.code == "template-end-marker"]
    assert [w.message.split("'")[1] for w in found] == stops, found
    assert all(f"({family})" in w.message for w in found)
    assert not any("[/INST]" in w.message or "ASSISTANT:" in w.hint for w in found)
    # Listed: nothing to say.
    assert [w for w in lint([facts(templates={key: text}, stopwords=("</s>", *stops))],
                            LOCALAI) if w.code == "template-end-marker"] == []


def test_the_llama2_finding_names_the_next_turn_not_the_assistant_opener() -> None:
    w = only(lint([facts(templates={"chat": "[INST] {{.Input}} [/INST]"},
                         gguf=gguf(chat_template=None))], LOCALAI))
    assert "opens each user turn with '[INST]'" in w.message and "EOS" in w.message
    assert "[/INST]" not in w.message and w.hint == "add '[INST]' to stopwords"


@pytest.mark.parametrize("version", [None, "v3.8.0", "v4.9.0"])
def test_template_end_marker_is_skipped_with_the_tokenizer_template(version: str | None) -> None:
    # v3.8.0+ (assumed when unknown) ignores the Go templates with use_tokenizer_template.
    chat = "{{.Input}}<|im_end|>"
    assert lint([facts(templates={"chat": chat}, use_tokenizer_template=True, stopwords=())],
                on(version)) == []


def test_the_tokenizer_template_before_v3_8_is_unsupported_and_silences_nothing() -> None:
    chat = "{{.Input}}<|im_end|>"
    found = lint([facts(templates={"chat": chat}, use_tokenizer_template=True, stopwords=())],
                 on("v3.7.0"))
    assert codes(found) == ["special-tokens", "template-end-marker",
                            "tokenizer-template-unsupported"]
    assert found[2] == Lint(
        "tokenizer-template-unsupported", "m", ("template", "use_tokenizer_template"),
        "template.use_tokenizer_template is honoured by LocalAI's llama.cpp backend only since "
        "v3.8.0 (v3.7.0 here): before that LocalAI skips its own chat templating and the "
        "backend ignores the messages, so the model gets an empty prompt",
        "write template.chat / chat_message and stopwords, or run LocalAI v3.8.0+")
    # Unsupported is the finding, not a GGUF without a chat template.
    bare = lint([facts(use_tokenizer_template=True, gguf=gguf(chat_template=None))],
                on("v3.7.0"))
    assert codes(bare) == ["tokenizer-template-unsupported"]
    assert lint([facts(use_tokenizer_template=True)], LLAMA) == []


def test_template_end_markers_in_every_template_are_reported() -> None:
    found = lint([facts(templates={"completion": "{{.Input}}<|im_end|>",
                                   "chat_message": "{{.Content}}<|eot_id|>"})], LOCALAI)
    found = [w for w in found if w.code == "template-end-marker"]
    assert [(w.path, w.message.split("'")[1]) for w in found] == [
        (("template", "chat_message"), "<|eot_id|>"), (("template", "completion"), "<|im_end|>")]


# ---- chat-is-per-message ------------------------------------------------------------------


def test_a_per_message_template_under_chat_is_moved_to_chat_message() -> None:
    chat = ("{{if .SystemPrompt}}<<SYS>>{{.SystemPrompt}}<</SYS>>{{end}}"
            "{{if eq .RoleName \"user\"}}[INST] {{.Content}} [/INST]{{else}}{{.Content}}{{end}}")
    found = lint([facts(templates={"chat": chat}, stopwords=("</s>", "[INST]"),
                        gguf=gguf(chat_template=None))], LOCALAI)
    w = only(found)
    assert (w.code, w.path) == ("chat-is-per-message", ("template", "chat"))
    assert "this is a chat_message template" in w.message
    assert ".Content, .RoleName" in w.message and "insert" not in w.hint
    assert w.hint.startswith("move it to template.chat_message")
    assert w.snippet is not None and w.snippet.startswith("template:\n  chat_message: |\n")
    assert "  chat: |\n    {{.Input}}\n" in w.snippet and "[INST] {{.Content}}" in w.snippet
    # The same text under chat_message is right.
    assert lint([facts(templates={"chat_message": chat}, stopwords=("</s>", "[INST]"),
                       gguf=gguf(chat_template=None))], LOCALAI) == []


# ---- template-family-mismatch -------------------------------------------------------------


@pytest.mark.parametrize(("version", "fix"), [
    ("v4.9.0", "set template.use_tokenizer_template: true (the GGUF's own template)"),
    ("v3.7.0", "write template.chat with the ChatML markers")])
def test_a_go_template_of_another_family_than_the_ggufs_own(version: str, fix: str) -> None:
    # The tiny GGUF's own template is ChatML; the config's is Llama-2's.
    found = lint([facts(templates={"chat": "[INST] {{.Input}} [/INST]"},
                        stopwords=("</s>", "[INST]"))], on(version))
    w = next(w for w in found if w.code == "template-family-mismatch")
    assert "Llama-2/Mistral markers ([INST], [/INST])" in w.message
    assert "uses ChatML markers (<|im_start|>, <|im_end|>)" in w.message and w.hint == fix
    # The same family, or a GGUF without a template: nothing to compare.
    same = "<|im_start|>user\n{{.Input}}<|im_end|>\n<|im_start|>assistant\n"
    assert not [w for w in lint([facts(templates={"chat": same},
                                       stopwords=("</s>", "<|im_end|>"))], on(version))
                if w.code == "template-family-mismatch"]
    assert not [w for w in lint([facts(templates={"chat": "[INST] {{.Input}} [/INST]"},
                                       gguf=gguf(chat_template=None))], on(version))
                if w.code == "template-family-mismatch"]


# ---- template-ignores-input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "text", "wanted"),
    [
        ("chat", "{{.System}} hello", ".Input"),
        ("completion", "{{.Content}}", ".Input"),
        ("chat_message", "{{.RoleName}}:", ".Content"),
        ("edit", "{{.System}}", ".Input or .Instruction"),
    ],
)
def test_template_ignores_input(key: str, text: str, wanted: str) -> None:
    w = only(lint([facts(templates={key: text})], LOCALAI))
    first = wanted.split(" or ")[0]
    assert w == Lint(
        "template-ignores-input", "m", ("template", key),
        f"template.{key} never uses {wanted}: the prompt never reaches the model",
        f"insert {{{{{first}}}}} where the text should go")


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("chat", "{{.Input}}"),
        ("chat_message", "{{.RoleName}}: {{.Content}}"),
        ("edit", "{{.Instruction}}"),
        ("chat", "chatml"),  # no "{{": a file name LocalAI could not resolve, or plain text
        ("function", "{{.Functions}}"),  # no input rule for this key
    ],
)
def test_template_uses_its_input(key: str, text: str) -> None:
    assert lint([facts(templates={key: text})], LOCALAI) == []


def test_chat_message_using_input_is_left_to_modelconfig_s_error() -> None:
    # modelconfig rejects it with the template's line (test_modelconfig.py); no warning too.
    assert lint([facts(templates={"chat_message": "{{.RoleName}}: {{.Input}}"})],
                LOCALAI) == []


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("{{.Input}}", 1),
        ("{{.RoleName}}:\n{{ .Input }}", 2),
        ("{{- if .Content -}}\n{{ $.Input }}{{ end }}", 2),
        ("{{\n  .Input\n}}", 2),
        ("{{ printf \"%s\" .Input }}", 1),
        ("{{.Content}}", None),
        ("{{.InputTokens}}", None),
        ("{{.Content.Input}}", None),  # a field of a field, not the message data's
        ("{{/* .Input */}}{{.Content}}", None),
        ("{{- /* .Input */ -}}", None),
        (".Input {{.Content}}", None),  # outside any action: plain text
        ("chatml", None),
    ],
)
def test_chat_message_input_line(text: str, line: int | None) -> None:
    assert chat_message_input_line(text) == line


def test_template_ignores_input_is_reported_for_llama_server_too() -> None:
    assert codes(lint([facts(templates={"chat": "{{.System}}"})], LLAMA)) == [
        "template-ignores-input"]


# ---- tokenizer-template-missing -----------------------------------------------------------


def test_tokenizer_template_missing() -> None:
    w = only(lint([facts(use_tokenizer_template=True, gguf=gguf(chat_template=None))], LOCALAI))
    assert w == Lint(
        "tokenizer-template-missing", "m", ("template", "use_tokenizer_template"),
        "template.use_tokenizer_template is set but the GGUF has no tokenizer.chat_template",
        "write template.chat / chat_message, or use a GGUF that carries a chat template")
    assert lint([facts(use_tokenizer_template=True)], LOCALAI) == []
    assert lint([facts(use_tokenizer_template=True, gguf=None)], LOCALAI) == []
    assert lint([facts(gguf=gguf(chat_template=None))], LOCALAI) == []


# ---- gpu-layers-exceed --------------------------------------------------------------------


def test_gpu_layers_exceed() -> None:
    w = only(lint([facts(gpu_layers=4)], LOCALAI))
    assert w == Lint(
        "gpu-layers-exceed", "m", ("gpu_layers",),
        "gpu_layers 4 is more than this model's 2 blocks + 1: check that parameters.model is "
        "the model you meant",
        "gpu_layers: 3 offloads every layer")
    for ok in (None, -1, 0, 3):
        assert lint([facts(gpu_layers=ok)], LOCALAI) == []
    assert codes(lint([facts(gpu_layers=ALL_LAYERS_IDIOM - 1)], LOCALAI)) == [
        "gpu-layers-exceed"]


@pytest.mark.parametrize("layers", [ALL_LAYERS_IDIOM, 999, 10_000])
def test_gpu_layers_all_layers_idiom_is_not_a_mistake(layers: int) -> None:
    assert lint([facts(gpu_layers=layers)], LOCALAI) == []
    assert lint([facts(gpu_layers=4, gguf=None)], LOCALAI) == []
    assert lint([facts(gpu_layers=4, gguf=gguf(block_count=None))], LOCALAI) == []


# ---- models-do-not-fit --------------------------------------------------------------------

TWO = [facts(name="a", file_size=3 * 2**30), facts(name="b", file_size=2**30)]


def test_models_do_not_fit() -> None:
    ctx = LintContext(single_active_backend=False, gpu_memory_bytes=2 * 2**30)
    w = only(lint(TWO, ctx))
    assert w == Lint(
        "models-do-not-fit", None, (),
        "the 2 models need up to 4.0 GiB together (files + KV cache) but the GPU has 2.0 GiB: "
        "concurrent requests to two models will fail (out of memory: could not load model: rpc "
        "error)",
        "set server.single_active_backend = true, or serve fewer or smaller models")


@pytest.mark.parametrize(
    "ctx",
    [
        on("v3.9.0", single_active_backend=True, gpu_memory_bytes=2 * 2**30),
        LintContext(single_active_backend=False, gpu_memory_bytes=None),
        LintContext(single_active_backend=False, gpu_memory_bytes=5 * 2**30),
        on("v4.9.0", single_active_backend=True, gpu_memory_bytes=5 * 2**30),
    ],
    ids=["single-active-before-v3.10", "memory-unknown", "fits", "single-active-fits"],
)
def test_models_fit_or_are_not_checked(ctx: LintContext) -> None:
    assert lint(TWO, ctx) == []


FIT_V310 = (
    "models 'a' and 'b' need up to 4.0 GiB together (files + KV cache) but the GPU has 2.0 "
    "GiB, and on LocalAI v3.10.0+ ({}) one active backend does not keep them apart: a "
    "request for one while the other is busy waits 30 x 1 s, then loads it beside the busy "
    "model instead of unloading that, and the load fails (out of memory: could not load "
    "model: rpc error)")


@pytest.mark.parametrize(("version", "assumed"), [(None, "version unknown: assumed"),
                                                  ("v3.10.0", "v3.10.0 here")])
def test_models_do_not_fit_beside_a_busy_one_on_v3_10(version: str | None,
                                                      assumed: str) -> None:
    w = only(lint(TWO, on(version, single_active_backend=True, gpu_memory_bytes=2 * 2**30)))
    assert w == Lint(
        "models-do-not-fit", None, (),
        FIT_V310.format(assumed) + "; the supervisor's gateway ([gateway] enabled) queues that "
        "request until the busy model is idle, so only requests sent to LocalAI directly fail",
        "send every client through the gateway, or serve smaller models")


def test_models_do_not_fit_beside_a_busy_one_without_the_gateway() -> None:
    ctx = on("v4.9.0", single_active_backend=True, gpu_memory_bytes=2 * 2**30, gateway=False)
    w = only(lint(TWO, ctx))
    assert w.message == (FIT_V310.format("v4.9.0 here") + "; the supervisor's gateway would "
                         "queue that request until the busy model is idle, but it is off")
    assert w.hint == "set [gateway] enabled = true (the default), or serve smaller models"


@pytest.mark.parametrize("version", ["v3.9.0", "v3.9.9", "v2.27.0"])
def test_one_active_backend_keeps_models_apart_before_v3_10(version: str) -> None:
    assert lint(TWO, on(version, single_active_backend=True, gpu_memory_bytes=2 * 2**30)) == []


def test_one_active_backend_counts_the_two_largest_models_only() -> None:
    three = [*TWO, facts(name="c", file_size=2**29)]  # 3 + 1 + 0.5 GiB
    ctx = on("v4.9.0", single_active_backend=True, gpu_memory_bytes=int(4.2 * 2**30))
    assert lint(three, ctx) == []  # a and b fit side by side; c never joins a busy pair here
    w = only(lint([three[2], *TWO], on("v4.9.0", single_active_backend=True,
                                        gpu_memory_bytes=int(3.9 * 2**30))))
    assert w.message.startswith("models 'a' and 'b' need up to 4.0 GiB together")
    # Every model resident at once is another matter: all three count.
    assert codes(lint(three, LintContext(single_active_backend=False,
                                         gpu_memory_bytes=int(4.2 * 2**30)))) == [
        "models-do-not-fit"]


def test_llama_server_with_one_model_waits_instead() -> None:
    # models_max 1: the request for B waits for A (LOCALAI-NOTES, router mode): nothing to fit.
    ctx = LintContext(engine=Engine.LLAMA_SERVER, single_active_backend=True,
                      gpu_memory_bytes=2 * 2**30)
    assert lint(TWO, ctx) == []


def test_one_model_is_never_a_fit_problem() -> None:
    ctx = LintContext(single_active_backend=False, gpu_memory_bytes=1)
    assert lint([facts(file_size=10**12)], ctx) == []
    assert lint([facts(file_size=10**12)], on(None, gpu_memory_bytes=1)) == []


def test_kv_cache_bytes() -> None:
    # K and V, f16 (2 bytes), 2 layers x 64 wide, per context token.
    assert kv_cache_bytes(facts(context_size=1000)) == 2 * 2 * 1000 * 64 * 2
    assert kv_cache_bytes(facts(context_size=None)) == 2 * 2 * 4096 * 64 * 2
    assert kv_cache_bytes(facts(gguf=None)) == 0
    assert kv_cache_bytes(facts(gguf=gguf(block_count=None))) == 0


def test_kv_cache_counts_towards_the_fit() -> None:
    small = [facts(name="a", file_size=0, context_size=1024),
             facts(name="b", file_size=0, context_size=1024)]
    kv = 2 * kv_cache_bytes(small[0])
    assert lint(small, LintContext(single_active_backend=False, gpu_memory_bytes=kv)) == []
    assert codes(lint(small, LintContext(single_active_backend=False,
                                         gpu_memory_bytes=kv - 1))) == ["models-do-not-fit"]


# ---- lint() as a whole and closest() ------------------------------------------------------


def test_lint_is_pure_and_ordered_by_model_then_rule() -> None:
    models = [facts(name="a", context_size=None, max_tokens=None, options=("parallel:1",)),
              facts(name="b", gpu_layers=9, stopwords=())]
    ctx = LintContext(parallel=2)
    first = lint(models, ctx)
    assert lint(models, ctx) == first
    assert [(w.model, w.code) for w in first] == [
        ("a", "context-size-unset"), ("a", "parallel-overridden"), ("a", "max-tokens-unset"),
        ("b", "special-tokens"), ("b", "gpu-layers-exceed")]


def test_lint_of_nothing() -> None:
    assert lint([], LintContext(single_active_backend=False, gpu_memory_bytes=1)) == []


@pytest.mark.parametrize(
    ("word", "section", "expected"),
    [
        ("templature", ("parameters",), "temperature"),
        ("temperature", ("parameters",), "temperature"),
        ("contex_size", (), "context_size"),
        ("gpu_layer", (), "gpu_layers"),
        ("stopword", (), "stopwords"),
        ("use_tokenizer_templates", ("template",), "use_tokenizer_template"),
        ("frobnicate", (), None),
        ("x", (), None),
    ],
)
def test_closest(word: str, section: tuple[str, ...], expected: str | None) -> None:
    keys = known_keys(section)
    assert keys is not None
    assert closest(word, list(keys)) == expected


def test_closest_with_no_candidates() -> None:
    assert closest("anything", []) is None


def test_context_for_settings() -> None:
    ctx = context_for(Settings(server={"engine": "llama-server", "parallel": 3,
                                       "single_active_backend": False,
                                       "gpu_memory_gb": 24}))
    assert ctx == LintContext(engine=Engine.LLAMA_SERVER, single_active_backend=False,
                              parallel=3, gpu_memory_bytes=24 * 1024**3)
    half = context_for(Settings(server={"gpu_memory_gb": 0.5}))
    assert half.gpu_memory_bytes == 512 * 1024**2
    assert context_for(Settings()).gpu_memory_bytes is None


def test_context_for_version_and_gateway() -> None:
    assert context_for(Settings()).engine_version is None
    assert context_for(Settings()).gateway is True
    pinned = Settings(localai={"version": "v3.9.0"}, gateway={"enabled": False})
    ctx = context_for(pinned)
    assert (ctx.engine_version, ctx.gateway) == (Version(3, 9, 0), False)
    # A version learnt from the server wins over the setting.
    assert context_for(pinned, Version(4, 9, 0)).engine_version == Version(4, 9, 0)


# ---- through validate(): real tiny models, located in the YAML ----------------------------

CLEAN = """\
- name: a
  context_size: 2048
  stopwords: ["</s>"]
  parameters:
    model: tiny.gguf
    max_tokens: 256
"""


@pytest.fixture
def models(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    write_tiny_llama(d / "tiny.gguf", seed=1, context_length=4096)
    return d


def warnings_of(tmp_path: Path, models: Path, text: str,
                ctx: LintContext | None = None) -> list[Problem]:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    v = validate(config, models, ctx)
    assert isinstance(v, Validation)
    assert v.errors == [] and v.pending == ()
    assert v.models is not None  # lint never blocks
    return v.warnings


def one(found: list[Problem], code: str) -> Problem:
    (w,) = [w for w in found if w.code == code]
    return w


def test_clean_config_through_validate(tmp_path: Path, models: Path) -> None:
    assert warnings_of(tmp_path, models, CLEAN) == []
    assert warnings_of(tmp_path, models, CLEAN, LintContext(parallel=2)) == []


def test_validate_context_size_unset(tmp_path: Path, models: Path) -> None:
    w = one(warnings_of(tmp_path, models, CLEAN.replace("  context_size: 2048\n", "")),
            "context-size-unset")
    assert (w.field, w.line, w.model) == ("a.context_size", 1, "a")  # the entry: no such line
    assert "(4096 tokens here)" in w.message
    assert str(w).endswith("(fix: set context_size explicitly)")


def test_validate_context_exceeds_training(tmp_path: Path, models: Path) -> None:
    write_tiny_llama(models / "tiny.gguf", seed=1, context_length=1024)
    w = one(warnings_of(tmp_path, models, CLEAN), "context-exceeds-training")
    assert (w.field, w.line) == ("a.context_size", 2)
    assert w.message == ("context_size 2048 exceeds the model's trained context 1024: output "
                         "degrades past it")
    write_tiny_llama(models / "tiny.gguf", seed=1, context_length=2048)
    assert warnings_of(tmp_path, models, CLEAN) == []


def test_validate_context_too_small(tmp_path: Path, models: Path) -> None:
    text = CLEAN.replace("context_size: 2048", "context_size: 4095")
    ctx = LintContext(parallel=8)
    w = one(warnings_of(tmp_path, models, text, ctx), "context-too-small")
    assert (w.field, w.line) == ("a.context_size", 2)
    assert w.message.startswith("about 511 tokens per request split over 8 parallel slots")
    with_option = text + "  options: [\"parallel:2\"]\n"
    assert warnings_of(tmp_path, models, with_option, ctx) == []


def test_validate_parallel_overridden(tmp_path: Path, models: Path) -> None:
    text = CLEAN + "  options: [\"parallel:1\"]\n"
    found = warnings_of(tmp_path, models, text, LintContext(parallel=8))
    assert [w.code for w in found] == ["context-too-small", "parallel-overridden"]
    w = found[1]
    assert (w.field, w.line) == ("a.options", 7)
    assert warnings_of(tmp_path, models, text, LintContext(parallel=1)) == []


def test_validate_max_tokens_unset(tmp_path: Path, models: Path) -> None:
    w = one(warnings_of(tmp_path, models, CLEAN.replace("    max_tokens: 256\n", "")),
            "max-tokens-unset")
    assert (w.field, w.line) == ("a.parameters.max_tokens", 5)  # the parameters section


def test_validate_special_tokens(tmp_path: Path, models: Path) -> None:
    text = CLEAN.replace('  stopwords: ["</s>"]\n', "")
    w = one(warnings_of(tmp_path, models, text), "special-tokens")
    assert (w.field, w.line) == ("a.stopwords", 1)
    assert "'</s>'" in w.message
    assert warnings_of(tmp_path, models, text + "  template:\n    use_tokenizer_template: true\n"
                       ) == []
    assert warnings_of(tmp_path, models, text, LLAMA) == []
    # No template at all: v3.8.0+ uses the GGUF's own chat template; v3.7.x does not.
    assert warnings_of(tmp_path, models, text, on("v3.8.0")) == []
    assert [w.code for w in warnings_of(tmp_path, models, text, on("v3.7.9"))] == [
        "special-tokens"]


def test_validate_template_end_marker(tmp_path: Path, models: Path) -> None:
    text = CLEAN + "  template:\n    chat: |\n      {{.Input}}<|im_end|>\n"
    w = one(warnings_of(tmp_path, models, text), "template-end-marker")
    assert (w.field, w.line) == ("a.template.chat", 8)
    fixed = text.replace('["</s>"]', '["</s>", "<|im_end|>"]')
    assert warnings_of(tmp_path, models, fixed) == []


def test_validate_template_ignores_input(tmp_path: Path, models: Path) -> None:
    text = CLEAN + "  template:\n    chat: \"{{.System}}\"\n"
    w = one(warnings_of(tmp_path, models, text), "template-ignores-input")
    assert (w.field, w.line) == ("a.template.chat", 8)
    assert warnings_of(tmp_path, models, text.replace(".System", ".Input")) == []


def test_validate_tokenizer_template_missing(tmp_path: Path, models: Path) -> None:
    text = CLEAN + "  template:\n    use_tokenizer_template: true\n"
    assert warnings_of(tmp_path, models, text) == []
    write_tiny_llama(models / "tiny.gguf", seed=1, chat_template=None)
    w = one(warnings_of(tmp_path, models, text), "tokenizer-template-missing")
    assert (w.field, w.line) == ("a.template.use_tokenizer_template", 8)


@pytest.mark.parametrize(("layers", "warns"), [(4, True), (3, False), (0, False), (99, False)])
def test_validate_gpu_layers_exceed(tmp_path: Path, models: Path, layers: int,
                                    warns: bool) -> None:
    found = warnings_of(tmp_path, models, CLEAN + f"  gpu_layers: {layers}\n")
    assert [w.code for w in found] == (["gpu-layers-exceed"] if warns else [])
    if warns:
        assert (found[0].field, found[0].line) == ("a.gpu_layers", 7)


TWO_MODELS = CLEAN + CLEAN.replace("name: a", "name: b")


@pytest.mark.parametrize(
    ("ctx", "warns"),
    [
        (LintContext(single_active_backend=False, gpu_memory_bytes=100_000), True),
        (on("v3.9.0", single_active_backend=True, gpu_memory_bytes=100_000), False),
        (LintContext(single_active_backend=False, gpu_memory_bytes=None), False),
        (LintContext(single_active_backend=False, gpu_memory_bytes=10**9), False),
    ],
)
def test_validate_models_do_not_fit(tmp_path: Path, models: Path, ctx: LintContext,
                                    warns: bool) -> None:
    found = warnings_of(tmp_path, models, TWO_MODELS, ctx)
    assert [w.code for w in found] == (["models-do-not-fit"] if warns else [])
    if warns:
        w = found[0]
        assert (w.file, w.line, w.field, w.model) == (tmp_path / "config.yaml", None, None,
                                                      None)
        assert w.message.startswith("the 2 models need up to 0.0 GiB together")


def test_validate_models_do_not_fit_beside_a_busy_one(tmp_path: Path, models: Path) -> None:
    found = warnings_of(tmp_path, models, TWO_MODELS,
                        on(None, single_active_backend=True, gpu_memory_bytes=100_000))
    (w,) = found
    assert (w.code, w.line, w.field) == ("models-do-not-fit", None, None)
    assert w.message.startswith("models 'a' and 'b' need up to 0.0 GiB together")


# ---- trimsuffix-streamed ------------------------------------------------------------------


def test_trimsuffix_does_not_reach_streamed_answers() -> None:
    w = only(lint([facts(trimsuffix=("<|im_end|>",))], LOCALAI))
    assert (w.code, w.path) == ("trimsuffix-streamed", ("trimsuffix",))
    assert "only when they are not streamed" in w.message
    assert w.snippet == 'stopwords:\n- "</s>"\n- "<|im_end|>"\n'
    assert lint([facts(trimsuffix=("<|im_end|>",), stopwords=("</s>", "<|im_end|>"))],
                LOCALAI) == []
    assert lint([facts(trimsuffix=("<|im_end|>",))], LLAMA) == []


def test_f16_on_a_quantised_file_changes_nothing() -> None:
    w = only(lint([facts(f16=True, gguf=gguf(quantization="Q4_K"))], LOCALAI))
    assert (w.code, w.path) == ("f16-quantised", ("f16",)) and "Q4_K" in w.message
    assert lint([facts(f16=True)], LOCALAI) == []  # an F16 file
    assert lint([facts(f16=True, gguf=gguf(quantization="Q4_K"))], LLAMA) == []
