"""LoRA adapters (training/adapters.py): which layers they may target, what trains, the base they fall back to."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from training.adapters import apply_adapter, as_base_model, check_target_modules, has_adapter, trainable_parameters
from training.config import ConfigError, LoraSettings
from training.distributed import causal_lm
from training.loss import _accepts_logits_to_keep

LORA = LoraSettings(type="lora", r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
LINEAR = "['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']"


def _tiny(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def test_a_target_matching_no_linear_module_is_refused_with_the_models_linear_modules() -> None:
    with pytest.raises(ConfigError, match=rf"'query' matches no linear module of LlamaForCausalLM; .* are \{LINEAR}"):
        check_target_modules(_tiny(), ["q_proj", "query"])
    check_target_modules(_tiny(), ["self_attn.q_proj", "mlp.down_proj"])  # peft's rule: a dotted suffix matches


def test_the_output_head_is_refused() -> None:
    with pytest.raises(ConfigError, match="'lm_head' is the output head"):
        apply_adapter(_tiny(), LoraSettings("lora", 4, 8, 0.0, ["lm_head"]), seed=0)


def test_only_the_adapter_trains() -> None:
    model = apply_adapter(_tiny(), LORA, seed=0)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    # 2 layers x (q_proj 16 -> 16, v_proj 16 -> 8): A is r x in, B is out x r.
    assert trainable_parameters(model) == 2 * (4 * 16 + 16 * 4 + 4 * 16 + 8 * 4)
    assert has_adapter(model) and not has_adapter(_tiny())


def test_the_adapter_starts_the_same_whatever_the_process_rng_and_leaves_it_alone() -> None:
    """Ranks seed their generators per rank; FSDP2 keeps each rank's shard, so A must not depend on them."""
    adapters = []
    for process_seed in (1, 2):
        base = _tiny()
        torch.manual_seed(process_seed)
        before = torch.get_rng_state()
        model = apply_adapter(base, LORA, seed=7)
        assert torch.equal(torch.get_rng_state(), before)
        adapters.append({k: v for k, v in model.state_dict().items() if "lora_" in k})
    assert adapters[0].keys() == adapters[1].keys() and adapters[0]
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    other = {k: v for k, v in apply_adapter(_tiny(), LORA, seed=8).state_dict().items() if "lora_A" in k}
    assert not all(torch.equal(adapters[0][k], other[k]) for k in other)


def test_as_base_model_computes_the_base_and_then_the_adapter_is_back() -> None:
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_logits = _tiny()(input_ids=ids).logits
        model = apply_adapter(_tiny(), LORA, seed=0).train()
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # B starts at zero: make the adapter change something
        with as_base_model(model) as base:
            assert not base.training
            torch.testing.assert_close(base(input_ids=ids).logits, base_logits, rtol=0, atol=0)
        assert model.training
        assert (model(input_ids=ids).logits - base_logits).abs().max() > 1e-2


def test_the_loss_sees_the_transformers_model_through_peft() -> None:
    """peft's forward has no logits_to_keep parameter (it passes it on): the labelled-positions path must stay."""
    model = apply_adapter(_tiny(), LORA, seed=0)
    assert isinstance(causal_lm(model), LlamaForCausalLM)
    assert _accepts_logits_to_keep(model)
