"""core/model_families.py: four tiny families from transformers' config classes, the preset's tokenizer for all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.training_builders import TEXTS, TINY
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.base_model import build_preset_model, build_preset_tokenizer, read_model_card, save_preset
from core.model_families import FAMILIES, GEMMA3_SLIDING_WINDOW, build_family_model, family, save_family_model


@pytest.fixture(scope="module")
def tokenizer():
    return build_preset_tokenizer(TEXTS, TINY)


def test_the_four_families() -> None:
    assert set(FAMILIES) == {"llama", "qwen3", "gemma3", "qwen3_moe"}
    for entry in FAMILIES.values():
        assert entry.features, entry.name
    with pytest.raises(ValueError, match="unknown model family 'mistral'"):
        family("mistral")


def test_llama_is_the_preset_byte_for_byte(tmp_path: Path, tokenizer) -> None:
    ours, preset = build_family_model(tokenizer, TINY, "llama"), build_preset_model(tokenizer, TINY)
    assert ours.state_dict().keys() == preset.state_dict().keys()
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in preset.state_dict().items())
    save_family_model(tmp_path / "a", TEXTS, TINY, "llama")
    save_preset(tmp_path / "b", TEXTS, TINY)
    files = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == files
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_each_family_has_its_features(tokenizer) -> None:
    qwen3 = build_family_model(tokenizer, TINY, "qwen3")
    assert hasattr(qwen3.model.layers[0].self_attn, "q_norm")
    gemma3 = build_family_model(tokenizer, TINY, "gemma3").config
    assert gemma3.layer_types == ["sliding_attention", "full_attention"]
    assert gemma3.sliding_window == GEMMA3_SLIDING_WINDOW and gemma3.final_logit_softcapping is not None
    moe = build_family_model(tokenizer, TINY, "qwen3_moe")
    assert moe.config.num_experts > moe.config.num_experts_per_tok > 1
    assert any("experts" in name for name, _ in moe.named_parameters())


def test_builds_are_deterministic_and_leave_the_global_generator_alone(tokenizer) -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = build_family_model(tokenizer, TINY, "gemma3").state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    second = build_family_model(tokenizer, TINY, "gemma3").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_saved_family_loads_and_generates(family_dirs: dict[str, Path], name: str) -> None:
    """The directory loads with AutoModelForCausalLM, chat template included, and generates greedily."""
    path = family_dirs[name]
    card = read_model_card(path)
    assert card["architecture"] == FAMILIES[name].model_class.__name__
    assert card.get("family", "llama") == name
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert type(model) is FAMILIES[name].model_class
    tok = AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": "Member 3 watched"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    n = prompt["input_ids"].shape[1]
    assert torch.equal(out[0, :n], prompt["input_ids"][0]) and n < out.shape[1] <= n + 5
