"""Each model family trains with our recipe, logs what its attention does off the fast path, and its saved
checkpoint loads with AutoModelForCausalLM and generates."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from support.training_builders import TEXTS, TINY, config_dict, make_shards
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.model_families import FAMILIES, GEMMA3_SLIDING_WINDOW, save_family_model
from training.config import TrainConfig
from training.family_verifier import verify
from training.sft import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_torch_globals")]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_trains_and_its_checkpoint_generates(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base"
    base.mkdir()
    save_family_model(base, TEXTS, TINY, name)
    # Conversations longer than Gemma3's window, so its sliding layers take the windowed path in training.
    shards = make_shards(tmp_path / "shards", base, n=24, min_len=8, max_len=2 * GEMMA3_SLIDING_WINDOW)
    out = tmp_path / "out"  # compiled layers are checked by test_family_verifier.py
    cfg = config_dict(base, [shards], out, max_steps=3, checkpoint_every=10)
    summary = train(TrainConfig.from_dict(cfg))
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])

    log = capsys.readouterr()
    said_window = f"use a {GEMMA3_SLIDING_WINDOW}-token sliding window" in log.out + log.err
    assert said_window == (name == "gemma3")
    # and the summary (the asset's metadata) says so too
    assert any("sliding window" in note for note in summary["attention_notes"]) == (name == "gemma3")

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(model) is FAMILIES[name].model_class
    assert "packed_sdpa" not in (out / "config.json").read_text()  # loads anywhere with stock attention
    tok = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "Member 3 watched"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    assert verify(out)["passed"]  # the trained weights still match transformers' forward
