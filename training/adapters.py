"""LoRA adapters through peft: wrap the loaded model, run it as its base, and export the merged result.

With `adapter` set (TrainConfig), the recipe wraps the freshly loaded model with peft before DDP/FSDP2 wrapping:
every base weight is frozen and only the low-rank A and B matrices train, so the optimizer (which takes the
parameters that require grad) holds state for those alone. Checkpoints keep the wrapped model's full state dict,
base and adapter alike, so resume restores exactly what trained. LoRA's B starts at zero: at step 0 the adapted
model computes what the base computes, and with the adapter disabled it always does, which is what preference
training uses as its reference instead of a second model.

peft is imported only here and only when an adapter is configured: full fine-tuning never pays for it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from training.config import ConfigError, LoraSettings, TrainConfig
from training.distributed import causal_lm, unwrap

ADAPTER_DIR = "adapter"  # output_dir/adapter/: the adapter alone, for PeftModel.from_pretrained onto the base


def has_adapter(model: torch.nn.Module) -> bool:
    """True when ``model`` (wrapped by DDP or not) is a peft model."""
    return causal_lm(model) is not unwrap(model)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct short names of the model's linear layers an adapter may target (the output head excluded)."""
    head = model.get_output_embeddings()
    return sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_linear(module) and module is not head}
    )


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear)


def check_target_modules(model: torch.nn.Module, targets: list[str]) -> None:
    """Every target must name at least one linear layer of this model, by peft's rule (the full name, or its
    ending after a dot). A name that matches nothing would otherwise train an adapter on fewer layers than asked
    (peft only fails when no name matches); the output head is refused because the chunked loss projects with its
    weight directly and, tied to the input embeddings, merging into it would change both."""
    linear = {name: module for name, module in model.named_modules() if _is_linear(module)}
    head = model.get_output_embeddings()
    for target in targets:
        matched = [module for name, module in linear.items() if name == target or name.endswith(f".{target}")]
        if not matched:
            raise ConfigError(
                f"adapter.target_modules: {target!r} matches no linear module of {type(model).__name__}; its linear "
                f"modules are {linear_module_names(model)}"
            )
        if any(module is head for module in matched):
            raise ConfigError(
                f"adapter.target_modules: {target!r} is the output head, which an adapter may not target; choose "
                f"among {linear_module_names(model)}"
            )


def lora_config(settings: LoraSettings) -> Any:
    """peft's LoraConfig for the validated settings (no bias training: the base stays exactly the base)."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_adapter(model: torch.nn.Module, settings: LoraSettings | None, seed: int) -> torch.nn.Module:
    """``model`` wrapped with a fresh LoRA adapter (base frozen), or ``model`` itself when ``settings`` is None.

    LoRA's A matrices start random. They are drawn from their own generator seeded with ``seed``, the same on every
    rank: the ranks' own generators are seeded per rank, and FSDP2, unlike DDP, does not broadcast rank 0's
    weights, so each rank would keep its shard of a different A. It also leaves the run's RNG streams as they were.
    """
    if settings is None:
        return model
    check_target_modules(model, settings.target_modules)
    from peft import get_peft_model

    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
        torch.manual_seed(seed)
        # peft asks transformers a deprecated question while wrapping; the warning says nothing about this run.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora_config(settings))


def trainable_parameters(model: torch.nn.Module) -> int:
    """Parameters the optimizer updates: the adapter's with one, every parameter without."""
    return sum(p.numel() for p in unwrap(model).parameters() if p.requires_grad)


@contextmanager
def as_base_model(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The peft model inside ``model`` running as its base (adapter layers pass their input through), in eval mode.

    Yields the unwrapped module: a forward through it is not seen by DDP, whose hooks expect one forward per
    backward. Training mode comes back on exit.
    """
    peft_model = unwrap(model)
    was_training = peft_model.training
    with peft_model.disable_adapter():
        peft_model.eval()
        try:
            yield peft_model
        finally:
            peft_model.train(was_training)


def save_merged_with_adapter(state: dict[str, torch.Tensor], config: Any, cfg: TrainConfig, directory: Path) -> None:
    """Write the adapter alone to directory/adapter/ and the base with the adapter merged in to directory.

    The trained model may be sharded (FSDP2) or compiled, so neither is merged in place: a CPU copy of the base
    (with the live model's config, so config.json reads as a full fine-tune's would) gets a fresh adapter, takes
    the full state dict, saves the adapter, then merges (W + B A * alpha / r) and saves as a plain HF model.
    """
    from transformers import AutoModelForCausalLM

    settings = cfg.lora
    assert settings is not None, "save_merged_with_adapter is for runs with an adapter"
    base = AutoModelForCausalLM.from_pretrained(
        cfg.base_model_dir, config=copy.deepcopy(config), dtype=torch.float32, local_files_only=True
    )
    peft_model = apply_adapter(base, settings, cfg.seed)  # its A is then overwritten by the trained one
    peft_model.load_state_dict(state, strict=True)
    peft_model.save_pretrained(directory / ADAPTER_DIR)
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(directory)
