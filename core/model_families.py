"""Tiny base models of the open-weight families users bring, built offline from transformers' config classes.

The platform is exercised on one Llama-style preset; users fine-tune Qwen, Gemma and mixture-of-experts
models whose layers differ in ways a trainer can get silently wrong (per-head q/k norms, sliding-window
layers next to global ones, logit soft-capping, routed experts). Each family here is the preset's sizes
(`core.base_model.TinyModelPreset`) poured into that family's own config class, plus the few knobs that
switch its distinguishing features on, so every feature is present at a size that trains in seconds.
The tokenizer and chat template are the preset's for every family: only the network changes.

"llama" is the preset itself (`build_preset_model` / `save_preset`), byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.base_model import (
    MODEL_CARD,
    TinyModelPreset,
    build_preset_model,
    build_preset_tokenizer,
    count_parameters,
    save_preset,
)
from core.tokenizer_training import tokenizer_fingerprint

# The Dagster code location imports this module for the family names: torch and transformers' model classes
# are imported only when a model is built.
if TYPE_CHECKING:
    from transformers import (
        Gemma3TextConfig,
        PretrainedConfig,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        Qwen3Config,
        Qwen3MoeConfig,
    )

DEFAULT_FAMILY = "llama"
# Gemma3's sliding layers see this many tokens back (itself included); short enough that chat rows of the
# tiny preset exceed it, so a trainer that ignores the window computes different logits.
GEMMA3_SLIDING_WINDOW = 32
GEMMA3_GLOBAL_EVERY = 2  # every second layer is global (real checkpoints: every sixth)
GEMMA3_FINAL_LOGIT_SOFTCAP = 30.0
MOE_EXPERTS = 4
MOE_EXPERTS_PER_TOKEN = 2


@dataclass(frozen=True)
class ModelFamily:
    """One family: the transformers model class it is built as and what it exercises beyond the Llama preset."""

    name: str
    architecture: str  # the transformers model class, as config.json's "architectures" names it
    features: tuple[str, ...]
    # None: the preset's own builder (core.base_model.build_preset_model), so "llama" stays byte-identical.
    build_config: Callable[[PreTrainedTokenizerBase, TinyModelPreset], PretrainedConfig] | None

    @property
    def model_class(self) -> type[PreTrainedModel]:
        import transformers

        return getattr(transformers, self.architecture)


def _head_dim(preset: TinyModelPreset) -> int:
    return preset.hidden_size // preset.num_attention_heads


def _common(tokenizer: PreTrainedTokenizerBase, preset: TinyModelPreset) -> dict[str, Any]:
    """The knobs every family takes from the preset and the tokenizer."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": preset.hidden_size,
        "num_hidden_layers": preset.num_hidden_layers,
        "num_attention_heads": preset.num_attention_heads,
        "num_key_value_heads": preset.num_key_value_heads,
        "head_dim": _head_dim(preset),
        "max_position_embeddings": preset.max_position_embeddings,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "use_cache": False,
    }


def _qwen3_config(tokenizer: PreTrainedTokenizerBase, preset: TinyModelPreset) -> Qwen3Config:
    from transformers import Qwen3Config

    return Qwen3Config(
        **_common(tokenizer, preset),
        intermediate_size=preset.intermediate_size,
        rope_parameters={"rope_type": "default", "rope_theta": preset.rope_theta},
    )


def _gemma3_config(tokenizer: PreTrainedTokenizerBase, preset: TinyModelPreset) -> Gemma3TextConfig:
    from transformers import Gemma3TextConfig

    layer_types = [
        "full_attention" if (i + 1) % GEMMA3_GLOBAL_EVERY == 0 else "sliding_attention"
        for i in range(preset.num_hidden_layers)
    ]
    return Gemma3TextConfig(
        **_common(tokenizer, preset),
        intermediate_size=preset.intermediate_size,
        query_pre_attn_scalar=_head_dim(preset),
        sliding_window=GEMMA3_SLIDING_WINDOW,
        layer_types=layer_types,
        final_logit_softcapping=GEMMA3_FINAL_LOGIT_SOFTCAP,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": preset.rope_theta},
        },
    )


def _qwen3_moe_config(tokenizer: PreTrainedTokenizerBase, preset: TinyModelPreset) -> Qwen3MoeConfig:
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        **_common(tokenizer, preset),
        intermediate_size=preset.intermediate_size,
        moe_intermediate_size=preset.intermediate_size // MOE_EXPERTS_PER_TOKEN,
        num_experts=MOE_EXPERTS,
        num_experts_per_tok=MOE_EXPERTS_PER_TOKEN,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        rope_parameters={"rope_type": "default", "rope_theta": preset.rope_theta},
    )


FAMILIES: dict[str, ModelFamily] = {
    entry.name: entry
    for entry in (
        ModelFamily("llama", "LlamaForCausalLM", ("the built-in preset (GQA, RoPE, SiLU MLP)",), None),
        ModelFamily(
            "qwen3",
            "Qwen3ForCausalLM",
            ("per-head RMSNorm of queries and keys (q_norm, k_norm)",),
            _qwen3_config,
        ),
        ModelFamily(
            "gemma3",
            "Gemma3ForCausalLM",
            (
                f"sliding-window layers ({GEMMA3_SLIDING_WINDOW} tokens) between global layers "
                f"(one layer in {GEMMA3_GLOBAL_EVERY} global)",
                "(1 + weight) RMSNorms before and after attention and MLP, q/k norms",
                "embeddings scaled by sqrt(hidden_size), GELU-tanh MLP, query_pre_attn_scalar",
                f"final logit soft-capping at {GEMMA3_FINAL_LOGIT_SOFTCAP}",
            ),
            _gemma3_config,
        ),
        ModelFamily(
            "qwen3_moe",
            "Qwen3MoeForCausalLM",
            (
                f"a routed mixture of {MOE_EXPERTS} experts, top-{MOE_EXPERTS_PER_TOKEN} per token, in every layer",
                "per-head RMSNorm of queries and keys",
            ),
            _qwen3_moe_config,
        ),
    )
}


def family(name: str) -> ModelFamily:
    """The family called `name`, or a ValueError naming the choices (the Launchpad form passes free text)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def build_family_model(tokenizer: PreTrainedTokenizerBase, preset: TinyModelPreset, name: str) -> PreTrainedModel:
    """Initialise a tiny model of family `name` deterministically from `preset.seed`, in eval mode."""
    chosen = family(name)
    if chosen.build_config is None:
        return build_preset_model(tokenizer, preset)
    import torch

    config = chosen.build_config(tokenizer, preset)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(preset.seed)
        model = chosen.model_class(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def save_family_model(out_dir: Path, texts: Iterable[str], preset: TinyModelPreset, name: str) -> dict:
    """Train the preset's tokenizer, build a model of family `name` and save both; returns the model card.

    "llama" is `save_preset` unchanged (same files, same card); other families add `family` to the card.
    """
    chosen = family(name)
    if chosen.build_config is None:
        return save_preset(out_dir, texts, preset)
    from transformers.utils import logging as hf_logging

    tokenizer = build_preset_tokenizer(texts, preset)
    model = build_family_model(tokenizer, preset, name)
    hf_logging.disable_progress_bar()  # keep Dagster's run logs free of progress bars
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    card = {
        "source": "preset",
        "family": name,
        "preset": asdict(preset),
        "parameters": count_parameters(model),
        "vocab_size": len(tokenizer),
        "architecture": chosen.architecture,
        "tokenizer_fingerprint": tokenizer_fingerprint(out_dir),
    }
    (out_dir / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True))
    return card
