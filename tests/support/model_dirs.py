"""Tiny Hugging Face model directories of each supported architecture, built offline for the import tests.

The tokenizers are trained here (support.masking_fixtures), so every check runs on the same kind of files that
`hf download` leaves behind.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from support.masking_fixtures import tokenizer_for

# One layer, two heads: the smallest model of each architecture that still has every part.
TINY_SIZES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=128,
)


def tiny_model(kind: str, vocab_size: int, **config: Any) -> PreTrainedModel:
    """A tiny `kind` model (llama, qwen3, gemma3, qwen3_moe), seeded, with `config` added to its config."""
    common = dict(vocab_size=vocab_size, **TINY_SIZES, **config)
    torch.manual_seed(0)
    builders = {
        "llama": lambda: LlamaForCausalLM(LlamaConfig(**common)),
        "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common)),
        "gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(head_dim=16, sliding_window=16, **common)),
        "qwen3_moe": lambda: Qwen3MoeForCausalLM(
            Qwen3MoeConfig(head_dim=16, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, **common)
        ),
    }
    return builders[kind]()


def save_model_dir(
    out: Path, kind: str, template: str = "chatml", rows: int | None = None, tokenizer: Any = None
) -> Path:
    """A save_pretrained directory of a tiny `kind` model whose embedding has `rows` rows (default: the
    tokenizer's), with `tokenizer` or a copy of the `template` test tokenizer."""
    tokenizer = tokenizer if tokenizer is not None else copy.deepcopy(tokenizer_for(template))
    model = tiny_model(
        kind,
        rows or len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
