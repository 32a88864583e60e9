"""A run of a tiny MoE model with a padded vocabulary: chunked loss, expert counts in summary.json and Pipes."""

import json
import math
from pathlib import Path

import pytest
import torch
from support.training_builders import config_dict, make_base_model, make_shards
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

from training.config import TrainConfig
from training.sft import train
from training.summary import pipes_metadata

pytestmark = pytest.mark.usefixtures("restore_torch_globals")


def _moe_base_model(out: Path) -> Path:
    """The preset's tokenizer and template, with a Qwen3-MoE body whose vocabulary is padded to a multiple of 64."""
    make_base_model(out)
    preset = AutoConfig.from_pretrained(out)
    real = len(AutoTokenizer.from_pretrained(out))
    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(
        vocab_size=math.ceil((real + 1) / 64) * 64, hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4,
        num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.01, max_position_embeddings=256,
        pad_token_id=preset.pad_token_id, bos_token_id=preset.bos_token_id, eos_token_id=preset.eos_token_id,
    )  # fmt: skip
    for stale in out.glob("*.safetensors"):
        stale.unlink()
    (out / "config.json").unlink()
    Qwen3MoeForCausalLM(cfg).save_pretrained(out)
    return out


def test_moe_run_reports_expert_counts_and_the_chunked_loss(tmp_path: Path) -> None:
    base = _moe_base_model(tmp_path / "base")
    real = len(AutoTokenizer.from_pretrained(base))
    shards = make_shards(tmp_path / "shards", base, n=24)
    out = tmp_path / "out"
    cfg = config_dict(base, [shards], out, max_steps=3, checkpoint_every=10, loss_chunking="on")
    summary = train(TrainConfig.from_dict(cfg))

    assert summary["loss"] == {"chunked": True, "real_vocab_size": real}
    moe = summary["moe"]
    assert moe["top_k"] == 2 and moe["router_aux_loss_coef"] == 0.01 and moe["since_step"] == 0
    assert len(moe["expert_tokens_per_layer"]) == 2 and len(moe["expert_tokens"]) == 4
    # Every non-pad token of every step is routed to top_k experts in each of the 2 layers.
    assert sum(moe["expert_tokens"]) == 2 * 2 * summary["tokens_seen"]
    assert moe["router_aux_loss_last"] > 0 and moe["expert_load_max_over_mean"] >= 1
    assert json.loads((out / "summary.json").read_text())["moe"] == moe
    meta = pipes_metadata(summary, out)
    assert meta["expert_tokens"]["raw_value"] == moe and meta["loss_chunked"] is True
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen3_moe"
