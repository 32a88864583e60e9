"""Supervised fine-tuning entry point: `python -m training.sft --config F [--resume]`.

Runs alone or under torchrun (any nodes x processes). One optimizer step =
`grad_accum_steps` packed micro-batches per rank; the loss is the mean over the
loss tokens of the whole global batch (training/loss.py). Output in output_dir:
the final HF model (weights + tokenizer from base_model_dir), summary.json
(written last: its presence means the run finished), and checkpoints/.

Top to bottom: the pieces of a run (schedule, optimizer, process setup, model, data,
one optimizer step), then `SFTRecipe`, whose setup() -> train() -> finish() is the run.
The benchmarks (benchmarks/worker/) time the same pieces in the same order.
"""

from __future__ import annotations

import argparse
import faulthandler
import math
import os
import random
import signal
import sys
import time
import traceback
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic_io import sha256_file
from core.tokenizer_training import tokenizer_fingerprint
from training.adapters import apply_adapter, trainable_parameters
from training.artifact_sync import ArtifactSync
from training.attention import attention_notes, resolve_attn
from training.checkpoint import find_resume_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from training.config import ConfigError, TrainConfig, load_config
from training.data import PackedLoader, load_corpus, rank_indices
from training.distributed import DistContext, init_distributed, shutdown, wrap_model
from training.export import save_final_model
from training.loss import LossSettings, StepLoss, accumulate_gradients, loss_settings
from training.metrics import Throughput, peak_flops
from training.reporting import Reporter
from training.state import TrainerState
from training.summary import (
    ExpertTotals,
    PackingTotals,
    RunFacts,
    build_summary,
    cpu_kernels_used,
    pipes_metadata,
    write_summary,
)


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
    # ~10 small ops per parameter, which dominates the optimizer step of a small model.
    fused = _fused_adamw_supported(params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **({"fused": True} if fused else {}))


def _fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """Plain (not DTensor/FSDP2-sharded) floating-point tensors on CPU or CUDA."""
    from torch.distributed.tensor import DTensor

    return bool(params) and all(
        not isinstance(p, DTensor) and p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
    )


def setup_runtime(cfg: TrainConfig, ctx: DistContext) -> None:
    """Process-wide settings, before anything is built: CPU threads and allocator, determinism, per-rank seeds."""
    from training.cpu import tune_process

    tune_process(cfg.cpu_threads, ctx.device)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    random.seed(cfg.seed + ctx.rank)
    np.random.seed(cfg.seed + ctx.rank)
    torch.manual_seed(cfg.seed + ctx.rank)


def compute_dtype(cfg: TrainConfig, ctx: DistContext) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    return torch.bfloat16 if cfg.dtype == "bf16" else torch.float32


def load_model(cfg: TrainConfig, ctx: DistContext) -> torch.nn.Module:
    """The base model in fp32 (master weights), in training mode, on this rank's device (FSDP2: still on CPU)."""
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


def tokenizer_length(cfg: TrainConfig) -> int:
    """len(tokenizer): the real vocabulary; embedding rows past it are padding (training/loss.py)."""
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(cfg.base_model_dir, local_files_only=True))


def load_data(cfg: TrainConfig, ctx: DistContext, model_config: Any) -> tuple[PackedLoader, dict[str, Any]]:
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


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    micro_batches: list[dict[str, torch.Tensor]],
    ctx: DistContext,
    autocast: AbstractContextManager | None,
    cfg: TrainConfig,
    settings: LossSettings | None = None,
) -> tuple[StepLoss, float, float]:
    """One optimizer step over the micro-batches; returns (loss, pre-clip grad norm, lr used)."""
    step_loss = accumulate_gradients(model, micro_batches, ctx, autocast, settings)
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm, lr


class SFTRecipe:
    """One rank's run. Every method is collective: all ranks call it, in the same order."""

    # Built by setup():
    parameters: int  # of the base model
    trainable_parameters: int  # the adapter's with one, else all of them
    loader: PackedLoader
    data_info: dict[str, Any]  # what summary.json records about the data
    dtype: torch.dtype  # compute dtype; the weights stay fp32
    model: torch.nn.Module  # wrapped (DDP/FSDP2), compiled where chosen
    autocast: torch.autocast | None
    compiled: bool
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_settings: LossSettings  # chunked head, vocabulary padding, MoE aux loss
    experts: ExpertTotals | None  # MoE runs only

    def __init__(self, cfg: TrainConfig, ctx: DistContext, reporter: Reporter) -> None:
        self.cfg, self.ctx, self.reporter = cfg, ctx, reporter
        self.output_dir = Path(cfg.output_dir)
        self.state = TrainerState()
        self.throughput = Throughput()
        self.attention_notes: list[str] = []
        # Pods without a shared volume publish checkpoints and the result to the object store (rank 0).
        self.sync = ArtifactSync.from_env() if ctx.is_main else None

    def setup(self, resume: bool) -> None:
        """Model, data, optimizer and schedule; with `resume`, restored from the newest valid checkpoint."""
        from transformers.utils import logging as hf_logging

        cfg, ctx = self.cfg, self.ctx
        hf_logging.disable_progress_bar()  # per-rank progress bars would flood torchrun's output
        setup_runtime(cfg, ctx)
        if list_checkpoints(self.output_dir) and not resume:
            raise ConfigError(
                f"{self.output_dir} already holds checkpoints; pass --resume to continue that run or choose a new "
                "output_dir"
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)

        model = load_model(cfg, ctx)  # first: its vocabulary and pad id validate the data
        self.parameters = sum(p.numel() for p in model.parameters())  # the base's: what output_dir holds
        model = apply_adapter(model, cfg.lora, cfg.seed)  # before DDP/FSDP2, which must see only the adapter trainable
        self.trainable_parameters = trainable_parameters(model)
        self.attention_notes = attention_notes(model.config, resolve_attn(cfg, ctx))  # off packed_sdpa's fast path
        for note in self.attention_notes:
            self.reporter.info(note)
        self.loader, self.data_info = load_data(cfg, ctx, model.config)
        fsdp = cfg.distributed == "fsdp2"
        self.loss_settings = loss_settings(cfg.loss_chunking, model.config, tokenizer_length(cfg), fsdp=fsdp)
        self.dtype = compute_dtype(cfg, ctx)
        fsdp_mixed = cfg.distributed == "fsdp2" and self.dtype != torch.float32  # FSDP2 casts params itself
        self.model = wrap_model(model, ctx, cfg.distributed, param_dtype=self.dtype if fsdp_mixed else None)
        mixed = self.dtype != torch.float32 and not fsdp_mixed
        self.autocast = torch.autocast(ctx.device.type, dtype=self.dtype) if mixed else None
        self.compiled = self._compile()
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        if resume:
            self._resume()
        self.experts = ExpertTotals(since_step=self.state.step) if self.loss_settings.router_top_k else None

        self.reporter.info(
            f"training {self.trainable_parameters:,} of {self.parameters:,} parameters"
            f"{' (LoRA adapter)' if cfg.adapter else ''} on {ctx.world_size} process(es) ({ctx.device.type}, "
            f"{self.dtype}, {cfg.distributed}); {self.data_info['conversations']} conversations; global batch "
            f"{cfg.micro_batch_rows * cfg.grad_accum_steps * ctx.world_size} rows x {cfg.seq_len} tokens"
        )

    def _compile(self) -> bool:
        """Regional torch.compile where training/cpu/compilation.py decides so (by default: on CPU)."""
        from training.cpu import maybe_compile

        compiled, why = maybe_compile(self.model, self.cfg, self.ctx)
        self.reporter.info(why)
        return compiled

    def _resume(self) -> None:
        path = find_resume_checkpoint(self.ctx, self.output_dir)
        if path is None:
            self.reporter.info(f"no valid checkpoint under {self.output_dir}; starting from step 0")
            return
        loader_state, saved = load_checkpoint(self.ctx, path, self.model, self.optimizer, self.scheduler)
        self.state = TrainerState.from_checkpoint(saved, self.cfg, path)
        self.loader.load_state_dict(loader_state)
        self.reporter.info(f"resumed from {path} at step {self.state.step}")

    def train(self) -> None:
        """Optimizer steps up to max_steps, logging every log_every and checkpointing every checkpoint_every."""
        cfg = self.cfg
        while self.state.step < cfg.max_steps:
            started = time.perf_counter()
            micro_batches = [self.loader.next_batch() for _ in range(cfg.grad_accum_steps)]
            loss, grad_norm, lr = optimizer_step(
                self.model,
                self.optimizer,
                self.scheduler,
                micro_batches,
                self.ctx,
                self.autocast,
                cfg,
                self.loss_settings,
            )
            seconds = time.perf_counter() - started
            if not math.isfinite(loss.mean_loss):
                raise FloatingPointError(f"loss became {loss.mean_loss} at step {self.state.step + 1}; lower lr")
            self.state.record(loss, lr)
            self.throughput.record(loss.tokens, seconds)
            if self.experts is not None:
                self.experts.record(loss)

            last = self.state.step == cfg.max_steps
            if self.state.step % cfg.log_every == 0 or last:
                self._report_progress(loss, grad_norm, lr)
            if self.state.step % cfg.checkpoint_every == 0 or last:
                self.save_checkpoint()

    def _report_progress(self, loss: StepLoss, grad_norm: float, lr: float) -> None:
        self.reporter.progress(
            {
                "step": self.state.step,
                "max_steps": self.cfg.max_steps,
                "loss": loss.mean_loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_second": self.throughput.take_window_rate(),
                "tokens_seen": self.state.tokens_seen,
            }
        )

    def save_checkpoint(self) -> None:
        saved = save_checkpoint(
            self.ctx,
            self.output_dir,
            self.state.step,
            self.model,
            self.optimizer,
            self.scheduler,
            self.loader.state_dict(),
            self.state.to_checkpoint(self.cfg),
            self.cfg.keep_checkpoints,
        )
        if self.sync is not None:
            self.sync.push_checkpoint(saved)

    def finish(self) -> dict[str, Any] | None:
        """Write the final model, then (rank 0) summary.json and its report; returns the summary on rank 0."""
        save_final_model(self.ctx, self.model, self.cfg)
        packing = PackingTotals.gather(self.loader.state, self.ctx)
        if not self.ctx.is_main:
            return None
        peak, peak_source = peak_flops(self.cfg, self.ctx.device, self.dtype)
        facts = RunFacts(
            parameters=self.parameters,
            trainable_parameters=self.trainable_parameters,
            compiled=self.compiled,
            cpu_kernels=cpu_kernels_used(self.model, self.cfg, self.ctx, self.dtype),
            peak_flops=peak,
            peak_flops_source=peak_source,
            data_info=self.data_info,
            loss=self.loss_settings,
            experts=self.experts,
            attention_notes=self.attention_notes,
        )
        weights = sha256_file(self.output_dir / "model.safetensors")
        summary = build_summary(self.cfg, self.ctx, self.state, self.throughput, packing, facts, weights)
        write_summary(self.output_dir, summary)
        if self.sync is not None and self.sync.publish_result:
            self.sync.push_result(self.output_dir)
        self.reporter.final(summary, pipes_metadata(summary, self.output_dir), data_version=weights[:16])
        return summary


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any] | None:
    """Run (or resume) training; returns the summary on rank 0, None elsewhere."""
    return run_recipe(SFTRecipe, cfg, resume)


def run_recipe(recipe_class: Any, cfg: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """setup -> train -> finish of one rank's recipe (SFT or preference), with Pipes closed on any outcome."""
    ctx = init_distributed(cfg.device)
    reporter = Reporter(ctx.is_main)
    try:
        recipe = recipe_class(cfg, ctx, reporter)
        recipe.setup(resume)
        recipe.train()
        summary = recipe.finish()
    except BaseException as exc:
        reporter.close(exc)
        raise
    reporter.close()
    del recipe  # the DDP reducer goes before the process group: see shutdown()
    shutdown(ctx)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training config file (JSON, or YAML with PyYAML)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    args = parser.parse_args(argv)
    if hasattr(signal, "SIGUSR1"):
        # `kill -USR1 <rank pid>` prints every thread's stack to stderr (the run log) without stopping the rank:
        # how to see where a rank that looks stuck is waiting.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
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
