"""LoRA adapters end to end: `python -m training.sft` and `python -m training.dpo` with `adapter` set."""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from support.training_builders import (
    REPO,
    config_dict,
    make_base_model,
    make_pair_shards,
    make_shards,
    run_torchrun,
    subprocess_env,
    write_config,
)
from transformers import AutoModelForCausalLM

from training.adapters import apply_adapter
from training.checkpoint import MARKER, checkpoint_dir
from training.config import ConfigError, LoraSettings, TrainConfig
from training.dpo import DPORecipe
from training.dpo import train as train_dpo
from training.dpo_config import DPOConfig
from training.sft import train as train_sft
from training.summary import pipes_metadata

pytestmark = pytest.mark.usefixtures("restore_torch_globals")

LORA = {
    "type": "lora",
    "r": 4,
    "alpha": 8,
    "dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "down_proj"],
}


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def shards(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards") / "v1", base_model, n=60)


@pytest.fixture(scope="module")
def pairs(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pair_shards(tmp_path_factory.mktemp("pairs") / "v1", base_model, n=48, separable=True)


def _sft_config(base_model: Path, shards: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    return config_dict(base_model, [shards], out, lr=1e-2, checkpoint_every=3, adapter=LORA, **overrides)


@pytest.fixture(scope="module")
def lora_sft(base_model: Path, shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """6 steps of SFT with LoRA and regional compile ("auto": on for this CPU run); checkpoints at steps 3 and 6."""
    out = tmp_path_factory.mktemp("lora") / "out"
    summary = train_sft(TrainConfig.from_dict(_sft_config(base_model, shards, out, compile="auto")))
    torch.use_deterministic_algorithms(False)
    return out, summary


def _checkpoint_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    """A checkpoint's model state as the training run held it (tied tensors restored from their aliases)."""
    path = checkpoint_dir(out, step)
    weights = load_file(str(path / "model.safetensors"))
    for alias, name in json.loads((path / MARKER).read_text())["aliases"].items():
        weights[alias] = weights[name]
    return weights


def _load(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.slow
def test_merged_output_and_adapter_dir_compute_what_the_trained_adapter_model_computes(
    base_model: Path, lora_sft: tuple[Path, dict]
) -> None:
    out, _ = lora_sft
    trained = apply_adapter(_load(base_model), LoraSettings.from_mapping(LORA), seed=0)
    trained.load_state_dict(_checkpoint_weights(out, 6), strict=True)  # the final checkpoint is the final model
    expected = _logits(trained.eval())
    assert (expected - _logits(_load(base_model))).abs().max() > 1e-3, "the adapter did not change the model"

    merged = _load(out)  # a plain HF model directory
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert merged.lm_head.weight is merged.model.embed_tokens.weight  # still tied
    torch.testing.assert_close(_logits(merged), expected, rtol=0, atol=1e-5)

    adapter_dir = out / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter_dir.iterdir()}
    reloaded = PeftModel.from_pretrained(_load(base_model), adapter_dir).eval()
    torch.testing.assert_close(_logits(reloaded), _logits(merged), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_only_the_adapter_weights_change(base_model: Path, lora_sft: tuple[Path, dict]) -> None:
    out, _ = lora_sft
    base = _load(base_model).state_dict()
    at_3, at_6 = _checkpoint_weights(out, 3), _checkpoint_weights(out, 6)
    assert at_3.keys() == at_6.keys()
    adapter = {k for k in at_6 if ".lora_A." in k or ".lora_B." in k}
    assert len(adapter) == 2 * 2 * len(LORA["target_modules"])  # A and B of each target in both layers
    for name in sorted(set(at_6) - adapter):
        base_name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert torch.equal(at_3[name], base[base_name]) and torch.equal(at_6[name], base[base_name]), name
    for name in sorted(adapter):
        assert not torch.equal(at_3[name], at_6[name]), name
        if ".lora_B." in name:
            assert at_3[name].abs().max() > 0, f"{name} still holds its zero init"


@pytest.mark.slow
def test_trainable_parameters_are_the_adapters_in_the_summary_and_the_dagster_metadata(
    base_model: Path, lora_sft: tuple[Path, dict]
) -> None:
    out, summary = lora_sft
    lora = sum(t.numel() for k, t in _checkpoint_weights(out, 6).items() if ".lora_" in k)
    assert summary["trainable_parameters"] == lora > 0
    assert summary["parameters"] == sum(p.numel() for p in _load(base_model).parameters())  # the base's
    assert summary["adapter"] == LORA and json.loads((out / "summary.json").read_text())["adapter"] == LORA
    meta = pipes_metadata(summary, out)
    assert meta["trainable_parameters"] == lora and meta["adapter"] == {"raw_value": LORA, "type": "json"}
    assert summary["compiled"] is True  # regional compile copes with peft's layers


@pytest.mark.slow
def test_compiled_lora_layers_train_as_eager_ones(
    base_model: Path, shards: Path, lora_sft: tuple[Path, dict], tmp_path: Path
) -> None:
    _, compiled = lora_sft
    eager = train_sft(TrainConfig.from_dict(_sft_config(base_model, shards, tmp_path / "eager")))
    assert eager["compiled"] is False
    for a, b in zip(compiled["loss_curve"], eager["loss_curve"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_full_fine_tuning_trains_every_parameter(base_model: Path, shards: Path, tmp_path: Path) -> None:
    summary = train_sft(TrainConfig.from_dict(config_dict(base_model, [shards], tmp_path / "o", max_steps=1)))
    assert summary["adapter"] is None and summary["trainable_parameters"] == summary["parameters"]
    assert not (tmp_path / "o" / "adapter").exists()
    assert pipes_metadata(summary, tmp_path / "o")["trainable_parameters"] == summary["parameters"]


def _dpo_config(base_model: Path, pairs: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    cfg = config_dict(base_model, [pairs], out, seq_len=96, grad_accum_steps=1, attn_implementation="sdpa")
    cfg.update({"beta": 0.5, "lr": 5e-3, "sft_weight": 0.0, "adapter": {"type": "lora"}, **overrides})  # plain DPO
    return cfg


def _no_reference_model(self: DPORecipe) -> torch.nn.Module:
    raise AssertionError("with an adapter the reference is the policy with its adapter off; no model is loaded")


@pytest.mark.slow
def test_dpo_with_lora_starts_at_ln2_against_the_base_and_raises_the_reward_margin(
    base_model: Path, pairs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DPORecipe, "_load_reference_model", _no_reference_model)
    runs = {}
    for reference in ("precomputed", "on_the_fly"):
        out = tmp_path / reference
        runs[reference] = train_dpo(DPOConfig.from_dict(_dpo_config(base_model, pairs, out, max_steps=12)))
        summary = runs[reference]
        # LoRA's B starts at zero: the policy at step 1 is the base, which is the reference.
        assert summary["loss_curve"][0]["loss"] == pytest.approx(math.log(2), abs=1e-6), reference
        assert summary["preference_curve"][0]["reward_margin"] == pytest.approx(0.0, abs=1e-6), reference
        assert summary["final_reward_margin"] > 0.2 and summary["final_accuracy"] > 0.5, summary["preference_curve"]
        assert summary["loss_curve"][-1]["loss"] < math.log(2) - 0.1
        assert 0 < summary["trainable_parameters"] < summary["parameters"] / 10
        assert summary["adapter"]["type"] == "lora" and (out / "adapter" / "adapter_model.safetensors").is_file()
        _load(out)  # the merged output is a plain HF model directory
    assert (tmp_path / "precomputed" / "reference_logps").is_dir()
    for a, b in zip(runs["precomputed"]["loss_curve"], runs["on_the_fly"]["loss_curve"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def test_dpo_with_an_adapter_refuses_another_reference_model(base_model: Path, pairs: Path, tmp_path: Path) -> None:
    cfg = _dpo_config(base_model, pairs, tmp_path / "o", reference_model_dir=str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="reference_model_dir must be empty with an adapter"):
        DPOConfig.from_dict(cfg)
    DPOConfig.from_dict({**cfg, "reference_model_dir": str(base_model)})  # naming the base itself is the same


@pytest.mark.slow
def test_lora_under_fsdp2_trains_as_under_ddp(base_model: Path, shards: Path, tmp_path: Path) -> None:
    """FSDP2 keeps each rank's own shard of a fresh adapter (no broadcast as in DDP): the ranks' A must agree."""
    curves = {}
    for strategy in ("ddp", "fsdp2"):
        cfg = _sft_config(base_model, shards, tmp_path / strategy, distributed=strategy, max_steps=4)
        proc = run_torchrun(
            2,
            "--config",
            str(write_config(tmp_path / f"{strategy}.json", cfg)),
            cwd=REPO,
            env=subprocess_env(),
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        curves[strategy] = json.loads((tmp_path / strategy / "summary.json").read_text())["loss_curve"]
        assert (tmp_path / strategy / "adapter" / "adapter_model.safetensors").is_file()
    for a, b in zip(curves["ddp"], curves["fsdp2"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)


@pytest.mark.slow
def test_dpo_with_lora_on_the_fly_under_ddp(base_model: Path, pairs: Path, tmp_path: Path) -> None:
    """The reference forward (adapter off) runs past the DDP wrapper, between accumulated micro-batches."""
    out = tmp_path / "out"
    cfg = _dpo_config(base_model, pairs, out, reference="on_the_fly", grad_accum_steps=2, max_steps=4)
    config = write_config(tmp_path / "cfg.json", cfg)
    proc = run_torchrun(2, "--config", str(config), cwd=REPO, env=subprocess_env(), timeout=300, module="training.dpo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the base with the adapter off" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert summary["loss_curve"][0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
