"""The model a training run measures, and the parameter counts its FLOPs accounting needs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def model_overrides(spec: str | None) -> dict[str, Any]:
    return json.loads(spec) if spec else {}


def prepare_model_dir(model_dir: Path, overrides: dict[str, Any], work: Path) -> Path:
    """The tiny model, or (for the GPU run) a bigger Llama built from `overrides` with the same tokenizer."""
    if not overrides:
        return model_dir
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:10]
    target = work / f"model_override_{digest}"
    if (target / "config.json").is_file():
        return target
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(target)
    for item in model_dir.iterdir():
        if item.is_file() and not item.name.endswith(".safetensors") and item.name != "config.json":
            shutil.copy2(item, target / item.name)
    return target


def flop_parameters(model: Any) -> dict[str, int]:
    """What the model-FLOPs accounting needs: body / LM-head parameters, layers, attention width.

    The input embedding is a lookup (no FLOPs); the LM head is a matmul over the vocabulary
    (with tied weights the same matrix, counted once, as the head).
    """
    from training.attention import head_dim
    from training.distributed import unwrap

    inner = unwrap(model)
    head = inner.get_output_embeddings().weight
    embed = inner.get_input_embeddings().weight
    skip = {id(head), id(embed)}
    config = inner.config
    width = head_dim(config)
    return {
        "body": sum(p.numel() for p in inner.parameters() if id(p) not in skip),
        "head": head.numel(),
        "layers": config.num_hidden_layers,
        "attention_width": config.num_attention_heads * width,
        "hidden": config.hidden_size,
        "heads": config.num_attention_heads,
        "head_dim": width,
        "intermediate": config.intermediate_size,
    }
