"""Loading a checkpoint for evaluation, and finding the device a model lives on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def load_for_eval(
    model_dir: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) from a Hugging Face model directory, in eval mode on ``device``.

    fp32 on CPU (bf16 matmuls are slow there); bf16 on a GPU unless ``dtype`` says otherwise.
    """
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} is not a Hugging Face model directory (no config.json); pass a trained_checkpoint "
            "or base_model version directory"
        )
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return model.to(device).eval(), tokenizer
