"""The trained model as an HF model directory in output_dir: fresh weights and config, the base model's tokenizer.

With an adapter the weights are the base with the adapter merged in, so every reader of output_dir (evaluation,
serving, the next run's base) loads a plain model; the adapter alone goes to output_dir/adapter/ as well.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from core.atomic_io import TMP_PREFIX, fsync_dir, fsync_tree
from training.adapters import save_merged_with_adapter
from training.config import TrainConfig
from training.distributed import DistContext, causal_lm, full_model_state, unwrap
from training.summary import SUMMARY

# Files of the base model directory that are weights/config (written fresh), or the base run's own record (a
# checkpoint as the base, e.g. the SFT champion preference training starts from, carries its run's files).
_NOT_TOKENIZER = (".safetensors", ".bin", ".pt", ".pth", ".index.json", ".png")
_NOT_TOKENIZER_NAMES = {
    "config.json",
    "generation_config.json",
    "base_model.json",
    SUMMARY,
    "train_config.json",
    "lineage.json",
}


def save_final_model(ctx: DistContext, model: torch.nn.Module, cfg: TrainConfig) -> Path:
    """Collective. Files are written and fsynced in a temp dir, then renamed into output_dir: each lands whole."""
    out = Path(cfg.output_dir)
    state = full_model_state(model)  # collective
    if ctx.is_main:
        tmp = out / f"{TMP_PREFIX}final"
        shutil.rmtree(tmp, ignore_errors=True)
        _write_weights(model, state, cfg, tmp)
        for src in sorted(Path(cfg.base_model_dir).iterdir()):
            if src.is_file() and not src.name.endswith(_NOT_TOKENIZER) and src.name not in _NOT_TOKENIZER_NAMES:
                shutil.copy2(src, tmp / src.name)
        fsync_tree(tmp)
        for item in sorted(tmp.iterdir()):
            _replace(item, out / item.name)
        tmp.rmdir()
        fsync_dir(out)
    ctx.barrier()
    return out


def _write_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], cfg: TrainConfig, directory: Path) -> None:
    if cfg.adapter is None:
        unwrap(model).save_pretrained(directory, state_dict=state)
    else:
        save_merged_with_adapter(state, causal_lm(model).config, cfg, directory)


def _replace(src: Path, dst: Path) -> None:
    """os.replace, except that a directory (adapter/) written by an earlier finish of the same run, which died
    before its summary, is removed first: rename cannot replace a non-empty directory."""
    if src.is_dir() and dst.is_dir():
        shutil.rmtree(dst)
    os.replace(src, dst)
