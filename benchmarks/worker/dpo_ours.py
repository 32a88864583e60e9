"""Our side of the DPO benchmark: training.dpo's own recipe (setup, reference, step), timed step by step.

The recipe is the one `python -m training.dpo` runs (DPORecipe.setup then DPORecipe.step per optimizer step);
only its checkpoints and final export are left out, as TRL's side saves nothing either.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import current_rss_mib


def lora_settings() -> dict[str, Any]:
    """The LoRA adapter both sides train with `--lora`: our config's defaults (r, alpha, dropout, target modules)."""
    from training.config import LORA_DEFAULTS

    return {"type": "lora", **LORA_DEFAULTS}


def dpo_config(args: argparse.Namespace, output_dir: Path) -> Any:
    """The DPOConfig both the benchmark and `python -m training.dpo --config` would run with."""
    from training.dpo_config import DPOConfig

    extra = {"adapter": lora_settings()} if args.lora else {}
    return DPOConfig(
        base_model_dir=args.model,
        shard_dirs=[args.shards],
        output_dir=str(output_dir),
        seq_len=args.seq_len,
        micro_batch_rows=args.rows,
        grad_accum_steps=1,
        max_steps=args.steps,
        lr=args.lr,
        min_lr_ratio=0.1,
        warmup_steps=0,  # TRL's warm-up starts at lr 0, ours at lr / warmup_steps: none on either side
        weight_decay=0.01,
        betas=[0.9, 0.95],
        grad_clip=1.0,
        seed=args.seed,
        checkpoint_every=10 * args.steps,
        device="cpu",
        dtype="fp32",
        cpu_threads=args.threads,
        beta=args.beta,
        loss_type="sigmoid",
        sft_weight=0.0,  # TRL's DPOTrainer adds no NLL term by default (rpo_alpha unset): the same loss on both
        reference=args.reference,
        **extra,
    )


def dpo_ours(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from training.distributed import init_distributed
    from training.dpo import DPORecipe
    from training.reporting import Reporter

    output_dir = Path(args.work) / f"ours-{args.reference}{'-lora' if args.lora else ''}"
    shutil.rmtree(output_dir, ignore_errors=True)  # a kept reference_logps/ would skip the precompute
    cfg = dpo_config(args, output_dir)
    ctx = init_distributed(cfg.device)
    rss_before = current_rss_mib()
    setup_started = time.perf_counter()
    recipe = DPORecipe(cfg, ctx, Reporter(False))
    recipe.setup(resume=False)
    setup_seconds = time.perf_counter() - setup_started
    steps: list[dict[str, Any]] = []
    profiler = None
    started = time.perf_counter()
    for index in range(cfg.max_steps):
        if args.profile and index == 2:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            profiler.__enter__()
        batch = recipe.loader.next_batch()
        loss, _, _ = recipe.step([batch])
        steps.append(
            {
                "t": time.perf_counter(),
                "pairs": len(batch["pair_index"]),
                "pair_tokens": int(batch["tokens"].sum()),  # prompt + chosen + rejected of the step's pairs
                "model_tokens": int(batch["tokens"].sum()),  # what the policy's forward ran on (prompt once)
                "slots": int(batch["input_ids"].numel()),
                "loss": loss.mean_loss,
            }
        )
    result: dict[str, Any] = {
        "side": "ours",
        "reference": cfg.reference,
        "steps": steps,
        "started": started,
        "setup_seconds": setup_seconds,
        "reference_seconds": recipe.reference_seconds if cfg.reference == "precomputed" else None,
        "rss_before_mib": rss_before,
        "parameters": recipe.parameters,
        "trainable_parameters": sum(p.numel() for p in recipe.model.parameters() if p.requires_grad),
        "adapter": cfg.to_dict().get("adapter"),
        "attn_implementation": cfg.attn_implementation,
        "config": {k: v for k, v in cfg.to_dict().items() if k not in ("base_model_dir", "shard_dirs", "output_dir")},
    }
    if recipe.reference is not None:
        path, ids = Path(args.work) / "ours-reference.npz", recipe.loader.corpus.pair_ids
        result["reference_logps"] = _save_reference(path, ids, recipe.reference.values)
    if profiler is not None:
        profiler.__exit__(None, None, None)
        result["profile"] = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return result


def _save_reference(path: Path, pair_ids: list[str], values: np.ndarray) -> str:
    """The precomputed reference log-probs by pair id, for the suite to compare with TRL's."""
    np.savez(path, pair_ids=np.asarray(pair_ids), values=np.asarray(values, dtype=np.float64))
    return str(path)
