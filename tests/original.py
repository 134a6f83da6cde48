"""The original hand-run setup's models as tiny GGUFs: same file names, block counts and
trained contexts as the real files (vicuna-13b: a Llama-2 13B; karakuri-8x7b: a Mixtral;
karakuri-70b: a Llama-2 70B), no chat template, 64 wide so they stay a few MB."""

from __future__ import annotations

import os
import time
from pathlib import Path

from supervisor.tinygguf import write_tiny_llama

DATA = Path(__file__).resolve().parent / "data"
CONFIG = DATA / "original" / "config.yaml"
MODELS = {
    "vicuna-13b-v1.5.Q5_K_M.gguf": (40, 4096),
    "karakuri-lm-8x7b-instruct-v0.1.Q4_K_M.gguf": (32, 32768),
    "karakuri-lm-70b-chat-v0.1.Q4_K_M.gguf": (80, 4096),
}


def write_original(base: Path) -> tuple[Path, Path]:
    """(config.yaml, models dir) under ``base``; the files look finished (not being copied)."""
    models = base / "models"
    past = time.time() - 60
    for seed, (name, (blocks, context)) in enumerate(MODELS.items()):
        path = write_tiny_llama(models / name, seed=seed, name=name.split(".")[0],
                                n_layer=blocks, context_length=context, chat_template=None)
        os.utime(path, (past, past))
    config = base / "config.yaml"
    config.write_text(CONFIG.read_text())
    return config, models
