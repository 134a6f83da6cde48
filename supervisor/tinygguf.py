"""Tiny but real GGUF llama models, so tests and the demo run llama-server without downloads.

The model has a byte vocabulary and random weights: it loads, tokenizes and generates
(gibberish) exactly like a real one, in a file of a few hundred kilobytes.

Usage: python -m supervisor.tinygguf OUT.gguf [--seed N] [--context-length N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt

# ChatML-shaped, so llama-server's Jinja path is exercised the way real chat models use it.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)

# llama.cpp's SPM defaults: <unk>=0, <s>=1, </s>=2; the 256 byte tokens follow.
_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2


def _vocab() -> tuple[list[str], list[float], list[int]]:
    """Special tokens plus one token per byte: every text tokenizes, no merges needed."""
    tokens = list(_SPECIAL_TOKENS) + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(tokens)
    types = [int(gguf.TokenType.UNKNOWN), int(gguf.TokenType.CONTROL), int(gguf.TokenType.CONTROL)]
    types += [int(gguf.TokenType.BYTE)] * 256
    return tokens, scores, types


def write_tiny_llama(
    path: Path,
    *,
    seed: int = 0,
    context_length: int = 4096,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_ff: int = 128,
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    name: str = "tiny",
    architecture: str = "llama",
    wrong_shape: bool = False,
) -> Path:
    """Write a random-weight llama model to ``path``; different seeds give different files.

    For load failures: ``architecture`` names another one (an engine that does not know it
    refuses the file), ``wrong_shape`` gives one tensor a shape the architecture does not
    allow (a damaged file whose header still reads)."""
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> npt.NDArray[np.float16]:
        # Small weights keep activations finite through RMSNorm and SwiGLU; f16 halves the file.
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def ones(n: int) -> npt.NDArray[np.float32]:
        return np.ones(n, dtype=np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_name(name)
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    # numpy shape is (rows, cols) = ggml (ne1, ne0): weights are stored as (out, in).
    writer.add_tensor("token_embd.weight", matrix(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", ones(n_embd))
    writer.add_tensor("output.weight", matrix(n_vocab, n_embd))
    for i in range(n_layer):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", ones(n_embd))
        for proj in ("attn_q", "attn_k", "attn_v", "attn_output"):
            rows = n_embd + 8 if wrong_shape and i == 0 and proj == "attn_q" else n_embd
            writer.add_tensor(f"{blk}.{proj}.weight", matrix(rows, n_embd))
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones(n_embd))
        writer.add_tensor(f"{blk}.ffn_gate.weight", matrix(n_ff, n_embd))
        writer.add_tensor(f"{blk}.ffn_up.weight", matrix(n_ff, n_embd))
        writer.add_tensor(f"{blk}.ffn_down.weight", matrix(n_embd, n_ff))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_qwen14b_header(path: Path) -> None:
    """Header, metadata and tensor table of a 14B Q4_K_M model (152k-token vocabulary, 579
    tensors: 6.6 MB of header), with no tensor data; for benchmarks and loop-lag tests."""
    q4_k, q6_k, f32 = (gguf.GGMLQuantizationType[n] for n in ("Q4_K", "Q6_K", "F32"))
    n_vocab, n_embd, n_layer, n_ff, n_kv = 152064, 5120, 48, 13824, 1024
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_name("Qwen2.5 14B Instruct (bench)")
    writer.add_block_count(n_layer)
    writer.add_context_length(32768)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(40)
    writer.add_head_count_kv(8)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    tokens = [f"\u0120tok{i:06d}" for i in range(n_vocab)]
    tokens[151643], tokens[151645] = "<|endoftext|>", "<|im_end|>"
    writer.add_token_list(tokens)
    writer.add_token_types([1] * n_vocab)
    writer.add_token_merges([f"\u0120a{i} b{i}" for i in range(151387)])
    writer.add_eos_token_id(151645)
    writer.add_bos_token_id(151643)
    writer.add_chat_template(DEFAULT_CHAT_TEMPLATE * 8)

    def tensor(name: str, shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> None:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(shape)) // block * type_size
        writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)

    tensor("token_embd.weight", (n_vocab, n_embd), q4_k)
    for i in range(n_layer):
        heavy = q6_k if i % 2 == 0 else q4_k  # Q4_K_M keeps half of v/down at Q6_K
        tensor(f"blk.{i}.attn_norm.weight", (n_embd,), f32)
        tensor(f"blk.{i}.attn_q.weight", (n_embd, n_embd), q4_k)
        tensor(f"blk.{i}.attn_q.bias", (n_embd,), f32)
        tensor(f"blk.{i}.attn_k.weight", (n_kv, n_embd), q4_k)
        tensor(f"blk.{i}.attn_k.bias", (n_kv,), f32)
        tensor(f"blk.{i}.attn_v.weight", (n_kv, n_embd), heavy)
        tensor(f"blk.{i}.attn_v.bias", (n_kv,), f32)
        tensor(f"blk.{i}.attn_output.weight", (n_embd, n_embd), q4_k)
        tensor(f"blk.{i}.ffn_norm.weight", (n_embd,), f32)
        tensor(f"blk.{i}.ffn_gate.weight", (n_ff, n_embd), q4_k)
        tensor(f"blk.{i}.ffn_up.weight", (n_ff, n_embd), q4_k)
        tensor(f"blk.{i}.ffn_down.weight", (n_embd, n_ff), heavy)
    tensor("output_norm.weight", (n_embd,), f32)
    tensor("output.weight", (n_vocab, n_embd), q6_k)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random-weight llama GGUF model.")
    parser.add_argument("out", type=Path, help="output .gguf path")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default: 0)")
    parser.add_argument(
        "--context-length",
        type=int,
        default=4096,
        help="llama.context_length metadata, which caps llama-server's context (default: 4096)",
    )
    parser.add_argument("--name", default="tiny", help="general.name metadata (default: tiny)")
    args = parser.parse_args(argv)
    out = write_tiny_llama(
        args.out, seed=args.seed, context_length=args.context_length, name=args.name
    )
    print(out)


if __name__ == "__main__":
    main()
