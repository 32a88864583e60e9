"""Supervised fine-tuning entry point: `python -m training.sft --config F [--resume]`.

Runs alone or under torchrun (any nodes x processes). One optimizer step =
`grad_accum_steps` packed micro-batches per rank; the loss is the mean over the
loss tokens of the whole global batch (training/loss.py). Output in output_dir:
the final HF model (weights + tokenizer from base_model_dir), summary.json
(written last: its presence means the run finished), and checkpoints/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic_io import TMP_PREFIX, atomic_write_bytes, fsync_dir, fsync_tree, sha256_file
from core.tokenizer_training import tokenizer_fingerprint
from training import allocator, cpu_kernels
from training.attention import PACKED_SDPA, head_dim
from training.checkpoint import find_resume_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from training.compilation import maybe_compile
from training.config import ConfigError, TrainConfig, load_config
from training.data import PackedLoader, load_corpus, rank_indices
from training.distributed import DistContext, full_model_state, init_distributed, shutdown, unwrap, wrap_model
from training.flops import matmul_flops
from training.loss import StepLoss, accumulate_gradients
from training.reporting import Reporter

SUMMARY = "summary.json"
# Files of the base model directory that are weights/config (written fresh), not tokenizer.
_NOT_TOKENIZER = (".safetensors", ".bin", ".pt", ".pth", ".index.json")
_NOT_TOKENIZER_NAMES = {"config.json", "generation_config.json", "base_model.json", SUMMARY}


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr for optimizer step `step` (0-based): linear warmup, then cosine to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm gains and biases are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates every tensor in one call; torch's default on CPU is a Python loop of
    # ~10 small ops per parameter, which dominated optimizer steps of small models (benchmarks/).
    fused = _fused_adamw_supported(params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **({"fused": True} if fused else {}))


def _fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """Plain (not DTensor/FSDP2-sharded) floating-point tensors on CPU or CUDA."""
    from torch.distributed.tensor import DTensor

    return bool(params) and all(
        not isinstance(p, DTensor) and p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
    )


def measure_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Sustained matmul FLOP/s of a short probe (~0.15 s): a lower bound on the device's real peak."""
    n = 4096 if device.type == "cuda" else 1024
    return matmul_flops(n, n, n, device, dtype, seconds=0.15, warmup=3)


def _setup_runtime(cfg: TrainConfig, ctx: DistContext) -> None:
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    if ctx.device.type == "cpu":
        allocator.keep_freed_memory()
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    random.seed(cfg.seed + ctx.rank)
    np.random.seed(cfg.seed + ctx.rank)
    torch.manual_seed(cfg.seed + ctx.rank)


def _compute_dtype(cfg: TrainConfig, ctx: DistContext) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    return torch.bfloat16 if cfg.dtype == "bf16" else torch.float32


def _cpu_kernels_used(model: torch.nn.Module, cfg: TrainConfig, ctx: DistContext, dtype: torch.dtype) -> list[str]:
    """Which of our C kernels the steps called (training/cpu_kernels.py); none off CPU."""
    if ctx.device.type != "cpu":
        return []
    attention = resolve_attn(cfg, ctx) == PACKED_SDPA and dtype == torch.float32
    return cpu_kernels.in_use(head_dim(unwrap(model).config) if attention else None)


def save_final_model(ctx: DistContext, model: torch.nn.Module, cfg: TrainConfig) -> Path:
    """Write the HF model dir into output_dir: weights/config via a temp dir, then the tokenizer files."""
    out = Path(cfg.output_dir)
    state = full_model_state(model)  # collective
    if ctx.is_main:
        tmp = out / f"{TMP_PREFIX}final"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrap(model).save_pretrained(tmp, state_dict=state)
        for src in sorted(Path(cfg.base_model_dir).iterdir()):
            if src.is_file() and not src.name.endswith(_NOT_TOKENIZER) and src.name not in _NOT_TOKENIZER_NAMES:
                shutil.copy2(src, tmp / src.name)
        fsync_tree(tmp)
        for item in sorted(tmp.iterdir()):
            os.replace(item, out / item.name)
        tmp.rmdir()
        fsync_dir(out)
    ctx.barrier()
    return out


def _optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    micro_batches: list[dict[str, torch.Tensor]],
    ctx: DistContext,
    autocast: Any,
    cfg: TrainConfig,
) -> tuple[StepLoss, float, float]:
    """One optimizer step over the micro-batches; returns (loss, pre-clip grad norm, lr used)."""
    step_loss = accumulate_gradients(model, micro_batches, ctx, autocast)
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm, lr


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any] | None:
    """Run (or resume) training; returns the summary on rank 0, None elsewhere."""
    ctx = init_distributed(cfg.device)
    reporter = Reporter(ctx.is_main)
    try:
        summary = _train(cfg, resume, ctx, reporter)
    except BaseException as exc:
        reporter.close(exc)
        raise
    reporter.close()
    shutdown(ctx)
    return summary


# Keys that fix the data stream; resuming with different values would not continue the same run.
RESUME_LOCKED_KEYS = (
    "shard_dirs",
    "split",
    "seq_len",
    "micro_batch_rows",
    "grad_accum_steps",
    "pack_buffer_rows",
    "overlong",
    "seed",
)


def _load_model(cfg: TrainConfig, ctx: DistContext) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        cfg.base_model_dir, dtype=torch.float32, attn_implementation=resolve_attn(cfg, ctx), local_files_only=True
    )
    model.config.use_cache = False
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.distributed == "fsdp2" and ctx.initialized:
        return model.train()  # fully_shard moves only this rank's shard to the device
    return model.to(ctx.device).train()


def resolve_attn(cfg: TrainConfig, ctx: DistContext) -> str:
    """ "auto": per-conversation attention on CPU; on GPU stock sdpa, the path verified on H100 so far."""
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    return "sdpa" if ctx.device.type == "cuda" else PACKED_SDPA


def _load_data(cfg: TrainConfig, ctx: DistContext, model_config: Any) -> tuple[PackedLoader, dict[str, Any]]:
    """This rank's packed loader, plus what summary.json records about the data."""
    tok_fp = tokenizer_fingerprint(Path(cfg.base_model_dir))
    corpus, fingerprints = load_corpus(
        cfg.shard_dirs,
        cfg.split,
        tokenizer_fingerprint=tok_fp if cfg.check_tokenizer_fingerprint else None,
        vocab_size=model_config.vocab_size,
    )
    info = {"conversations": len(corpus), "data": fingerprints, "tokenizer_fingerprint": tok_fp}
    corpus = corpus.subset(rank_indices(len(corpus), ctx.rank, ctx.world_size, cfg.seed))
    loader = PackedLoader(
        corpus,
        seq_len=cfg.seq_len,
        rows_per_batch=cfg.micro_batch_rows,
        buffer_conversations=cfg.pack_buffer_rows,
        overlong=cfg.overlong,
        seed=cfg.seed,
        rank=ctx.rank,
        pad_id=model_config.pad_token_id if model_config.pad_token_id is not None else 0,
    )
    return loader, info


def _train(cfg: TrainConfig, resume: bool, ctx: DistContext, reporter: Reporter) -> dict[str, Any] | None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-rank progress bars would flood torchrun's output
    _setup_runtime(cfg, ctx)
    output_dir = Path(cfg.output_dir)
    if list_checkpoints(output_dir) and not resume:
        raise ConfigError(
            f"{output_dir} already holds checkpoints; pass --resume to continue that run or choose a new output_dir"
        )
    output_dir.mkdir(parents=True, exist_ok=True)

    model = _load_model(cfg, ctx)  # first: its vocabulary and pad id validate the data
    n_params = sum(p.numel() for p in model.parameters())
    loader, data_info = _load_data(cfg, ctx, model.config)
    dtype = _compute_dtype(cfg, ctx)
    fsdp_mixed = cfg.distributed == "fsdp2" and dtype != torch.float32  # FSDP2 casts params itself
    model = wrap_model(model, ctx, cfg.distributed, param_dtype=dtype if fsdp_mixed else None)
    autocast = torch.autocast(ctx.device.type, dtype=dtype) if dtype != torch.float32 and not fsdp_mixed else None
    compile_on, compile_reason = maybe_compile(model, cfg, ctx)
    reporter.info(compile_reason)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))

    state: dict[str, Any] = {"step": 0, "loss_curve": [], "tokens_seen": 0, "loss_tokens": 0, "best_loss": None}
    state["resumed_from"] = []
    path = find_resume_checkpoint(ctx, output_dir) if resume else None
    if path is not None:
        loader_state, state = load_checkpoint(ctx, path, model, optimizer, scheduler)
        saved_config = state.pop("config")
        changed = [k for k in RESUME_LOCKED_KEYS if saved_config.get(k) != getattr(cfg, k)]
        if changed:
            raise ConfigError(f"cannot resume {path}: config keys {changed} differ from the run that wrote it")
        loader.load_state_dict(loader_state)
        state["resumed_from"] = [*state["resumed_from"], str(path)]
        reporter.info(f"resumed from {path} at step {state['step']}")
    elif resume:
        reporter.info(f"no valid checkpoint under {output_dir}; starting from step 0")

    reporter.info(
        f"training {n_params:,} parameters on {ctx.world_size} process(es) ({ctx.device.type}, {dtype}, "
        f"{cfg.distributed}); {data_info['conversations']} conversations; global batch "
        f"{cfg.micro_batch_rows * cfg.grad_accum_steps * ctx.world_size} rows x {cfg.seq_len} tokens"
    )
    # Throughput counts only time spent in steps (data, forward/backward, optimizer), not checkpoints, and not
    # the first step after this process started or resumed (compilation, lazy init), reported as warmup_seconds.
    session_tokens, session_seconds, log_tokens, log_seconds = 0, 0.0, 0, 0.0
    warmup: tuple[int, float] | None = None
    while state["step"] < cfg.max_steps:
        started = time.perf_counter()
        micro_batches = [loader.next_batch() for _ in range(cfg.grad_accum_steps)]
        step_loss, grad_norm, lr = _optimizer_step(model, optimizer, scheduler, micro_batches, ctx, autocast, cfg)
        seconds = time.perf_counter() - started
        if not math.isfinite(step_loss.mean_loss):
            raise FloatingPointError(f"loss became {step_loss.mean_loss} at step {state['step'] + 1}; lower lr")

        state["step"] += 1
        state["tokens_seen"] += step_loss.tokens
        state["loss_tokens"] += step_loss.loss_tokens
        state["loss_curve"].append({"step": state["step"], "loss": step_loss.mean_loss, "lr": lr})
        if state["best_loss"] is None or step_loss.mean_loss < state["best_loss"]:
            state["best_loss"] = step_loss.mean_loss
        if warmup is None:
            warmup = (step_loss.tokens, seconds)
        else:
            session_tokens, session_seconds = session_tokens + step_loss.tokens, session_seconds + seconds
        log_tokens, log_seconds = log_tokens + step_loss.tokens, log_seconds + seconds

        last = state["step"] == cfg.max_steps
        if state["step"] % cfg.log_every == 0 or last:
            reporter.progress(
                {
                    "step": state["step"],
                    "max_steps": cfg.max_steps,
                    "loss": step_loss.mean_loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_second": log_tokens / log_seconds,
                    "tokens_seen": state["tokens_seen"],
                }
            )
            log_tokens, log_seconds = 0, 0.0
        if state["step"] % cfg.checkpoint_every == 0 or last:
            snapshot = {**state, "config": cfg.to_dict()}
            save_checkpoint(
                ctx,
                output_dir,
                state["step"],
                model,
                optimizer,
                scheduler,
                loader.state_dict(),
                snapshot,
                cfg.keep_checkpoints,
            )

    save_final_model(ctx, model, cfg)
    ls = loader.state
    rows, tokens, packed, split, dropped, no_loss = ctx.all_reduce_sum(
        [
            ls.rows_emitted,
            ls.tokens_emitted,
            ls.conversations_packed,
            ls.overlong_split,
            ls.overlong_dropped,
            ls.skipped_no_loss,
        ]
    )
    if not ctx.is_main:
        return None
    if not session_tokens and warmup is not None:  # a one-step session: nothing but the first step to go by
        session_tokens, session_seconds = warmup
    tokens_per_second = session_tokens / session_seconds if session_tokens else 0.0
    peak = cfg.peak_flops or measure_peak_flops(ctx.device, dtype)
    summary = {
        "steps": state["step"],
        "tokens_seen": state["tokens_seen"],
        "loss_tokens": state["loss_tokens"],
        "final_loss": state["loss_curve"][-1]["loss"] if state["loss_curve"] else None,
        "best_loss": state["best_loss"],
        "tokens_per_second": tokens_per_second,
        "warmup_seconds": warmup[1] if warmup else None,
        "compiled": compile_on,
        "attn_implementation": resolve_attn(cfg, ctx),
        "cpu_kernels": _cpu_kernels_used(model, cfg, ctx, dtype),
        "packing_efficiency": tokens / (rows * cfg.seq_len) if rows else 0.0,
        "mfu_estimate": 6 * n_params * tokens_per_second / (peak * ctx.world_size),
        "peak_flops_per_device": peak,
        "peak_flops_source": "config" if cfg.peak_flops else "matmul_probe",
        "parameters": n_params,
        "world_size": ctx.world_size,
        "conversations": {
            "total": data_info["conversations"],
            "packed": int(packed),
            "overlong_split": int(split),
            "overlong_dropped": int(dropped),
            "skipped_no_loss_tokens": int(no_loss),
            "epochs": packed / data_info["conversations"],  # counts above include repeats across epochs
        },
        "data": data_info["data"],
        "tokenizer_fingerprint": data_info["tokenizer_fingerprint"],
        "weights_sha256": sha256_file(output_dir / "model.safetensors"),
        "resumed_from": state["resumed_from"],
        "loss_curve": state["loss_curve"],
        "config": cfg.to_dict(),
    }
    atomic_write_bytes(output_dir / SUMMARY, json.dumps(summary, indent=1, sort_keys=True).encode())
    reporter.final(summary, pipes_metadata(summary, output_dir), data_version=summary["weights_sha256"][:16])
    return summary


def pipes_metadata(summary: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """The numbers a user looks at in the Dagster UI for a trained checkpoint."""
    scalar = (
        "steps",
        "tokens_seen",
        "loss_tokens",
        "final_loss",
        "best_loss",
        "tokens_per_second",
        "warmup_seconds",
        "compiled",
        "attn_implementation",
        "packing_efficiency",
        "mfu_estimate",
        "parameters",
        "world_size",
        "tokenizer_fingerprint",
        "weights_sha256",
    )
    meta: dict[str, Any] = {key: summary[key] for key in scalar if summary[key] is not None}
    meta["cpu_kernels"] = ", ".join(summary.get("cpu_kernels") or []) or "none"
    meta["path"] = {"raw_value": str(output_dir), "type": "path"}
    meta["loss_curve"] = {"raw_value": summary["loss_curve"], "type": "json"}
    meta["data"] = {"raw_value": summary["data"], "type": "json"}
    meta["conversations"] = {"raw_value": summary["conversations"], "type": "json"}
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training config file (JSON, or YAML with PyYAML)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    args = parser.parse_args(argv)
    try:
        train(load_config(args.config), resume=args.resume)
    except BaseException:
        # Non-zero exit with the traceback on stderr: torchrun then stops the other ranks and fails.
        rank = os.environ.get("RANK", "0")
        print(f"[rank {rank}] training failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
