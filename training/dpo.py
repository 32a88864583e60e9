"""Preference training entry point: `python -m training.dpo --config F [--resume]`.

DPO (or IPO) on `preference_shards`, started from an SFT checkpoint (normally the champion), which is also the
reference. Runs alone or under torchrun like `training.sft`, with the same process setup, DDP/FSDP2 wrapping,
optimizer and schedule, atomic checkpoints with exact resume, and Pipes reporting. What differs:

- rows hold whole pairs with each prompt computed once (training/pair_data.py);
- the loss is per pair (training/dpo_loss.py), averaged over the pairs of the global batch;
- the reference's log-probabilities are either precomputed once per run, before the first step, from the
  reference model, then freed (``reference: precomputed``, the default: no second model in memory while
  training), or computed next to the policy on every micro-batch (``on_the_fly``). Precomputed values are kept in
  output_dir/reference_logps/, keyed by the shard manifests and the reference weights, so a resumed run reuses
  them. With a LoRA adapter (``adapter``) the reference is the policy with its adapter off (training/adapters.py),
  in both modes: the base model is already in memory, so no reference model is loaded.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import io
import json
import math
import os
import signal
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic_io import atomic_write_bytes, sha256_file
from core.preferences.batches import pair_logps
from core.tokenizer_training import tokenizer_fingerprint
from training.adapters import apply_adapter, as_base_model, has_adapter, trainable_parameters
from training.checkpoint import find_resume_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from training.config import ConfigError, load_config
from training.data import rank_indices
from training.distributed import DistContext, gradient_sync, wrap_model
from training.dpo_config import DPOConfig
from training.dpo_loss import preference_losses
from training.export import save_final_model
from training.loss import StepLoss
from training.metrics import Throughput
from training.pair_data import PairLoader, completion_logps, load_pairs
from training.reporting import Reporter
from training.sft import (
    build_optimizer,
    compute_dtype,
    load_model,
    lr_factor,
    run_recipe,
    setup_runtime,
    tokenizer_length,
)
from training.state import TrainerState

SUMMARY = "summary.json"
_BATCH_KEYS = ("input_ids", "position_ids", "attention_mask", "keep", "target_index", "target_id", "target_slot")


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if k in _BATCH_KEYS else v for k, v in batch.items()}


class ReferenceLogps:
    """The reference model's summed log-probs of each local pair's chosen and rejected completion."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values  # [local pairs, 2] float64

    def of(self, pair_index: torch.Tensor, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(self.values[pair_index.numpy()]).to(device)


def reference_key(cfg: DPOConfig, data: list[dict[str, Any]], ctx: DistContext) -> str:
    """What the precomputed values depend on: the data, the reference weights, the rank's share and the row size."""
    weights = sha256_file(Path(cfg.reference_dir) / "model.safetensors")
    text = json.dumps(
        {
            "manifests": [d["manifest_sha256"] for d in data],
            "weights": weights,
            "rank": ctx.rank,
            "world": ctx.world_size,
            "seed": cfg.seed,
            "split": cfg.split,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compute_reference(model: torch.nn.Module, loader: PairLoader, real_vocab: int, device: torch.device) -> np.ndarray:
    """Summed log-probs of every pair of the loader's corpus under ``model`` (packed like training rows)."""
    return pair_logps(
        model,
        loader.corpus,
        seq_len=loader.seq_len,
        rows_per_batch=loader.rows_per_batch,
        pad_id=loader.pad_id,
        real_vocab_size=real_vocab,
        device=device,
    )


class DPORecipe:
    """One rank's preference run. Every method is collective: all ranks call it, in the same order."""

    def __init__(self, cfg: DPOConfig, ctx: DistContext, reporter: Reporter) -> None:
        self.cfg, self.ctx, self.reporter = cfg, ctx, reporter
        self.output_dir = Path(cfg.output_dir)
        self.state = TrainerState()
        self.throughput = Throughput()
        self.reference: ReferenceLogps | None = None
        self.reference_model: torch.nn.Module | None = None
        self.reference_seconds = 0.0
        self.curve: list[dict[str, float]] = []

    def setup(self, resume: bool) -> None:
        cfg, ctx = self.cfg, self.ctx
        setup_runtime(cfg, ctx)
        if list_checkpoints(self.output_dir) and not resume:
            raise ConfigError(
                f"{self.output_dir} already holds checkpoints; pass --resume to continue that run or choose a new "
                "output_dir"
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        model = load_model(cfg, ctx)
        self.parameters = sum(p.numel() for p in model.parameters())  # the base's: what output_dir holds
        # Before DDP/FSDP2 wrapping; with an adapter the reference is then this model with the adapter off.
        model = apply_adapter(model, cfg.lora, cfg.seed)
        self.trainable_parameters = trainable_parameters(model)
        self.real_vocab = tokenizer_length(cfg)
        tok_fp = tokenizer_fingerprint(Path(cfg.base_model_dir))
        corpus, data = load_pairs(
            cfg.shard_dirs,
            cfg.split,
            tokenizer_fingerprint=tok_fp if cfg.check_tokenizer_fingerprint else None,
            vocab_size=model.config.vocab_size,
        )
        self.data_info = {"pairs": len(corpus), "data": data, "tokenizer_fingerprint": tok_fp}
        corpus = corpus.subset(rank_indices(len(corpus), ctx.rank, ctx.world_size, cfg.seed))
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        self.loader = PairLoader(
            corpus,
            seq_len=cfg.seq_len,
            rows_per_batch=cfg.micro_batch_rows,
            buffer_pairs=cfg.pack_buffer_rows,
            seed=cfg.seed,
            rank=ctx.rank,
            pad_id=pad,
        )
        self.dtype = compute_dtype(cfg, ctx)
        self._setup_reference(data, model)
        fsdp_mixed = cfg.distributed == "fsdp2" and self.dtype != torch.float32
        self.model = wrap_model(model, ctx, cfg.distributed, param_dtype=self.dtype if fsdp_mixed else None)
        mixed = self.dtype != torch.float32 and not fsdp_mixed
        self.autocast = torch.autocast(ctx.device.type, dtype=self.dtype) if mixed else None
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        if resume:
            self._resume()
        self.reporter.info(
            f"preference training ({cfg.loss_type}, beta {cfg.beta}, sft_weight {cfg.sft_weight}, "
            f"reference {cfg.reference}"
            f"{', the base with the adapter off' if cfg.adapter else ''}) of {self.trainable_parameters:,} of "
            f"{self.parameters:,} parameters on {ctx.world_size} process(es) ({ctx.device.type}, {self.dtype}); "
            f"{self.data_info['pairs']} pairs"
        )

    def _load_reference_model(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            self.cfg.reference_dir,
            dtype=torch.float32,
            attn_implementation=self.cfg.attn_implementation,
            local_files_only=True,
        )
        model.config.use_cache = False
        return model.to(self.ctx.device).eval().requires_grad_(False)

    def _setup_reference(self, data: list[dict[str, Any]], policy: torch.nn.Module) -> None:
        """The reference's log-probs, or the model computing them on every micro-batch.

        With an adapter the reference is the policy itself with the adapter off (`as_base_model`), so no second
        model is loaded: on the fly it runs each micro-batch that way, precomputed it runs once here, before any
        step (and before DDP/FSDP2 wrapping, so every rank may run its own number of batches).
        """
        adapted = has_adapter(policy)
        if self.cfg.reference == "on_the_fly":
            if not adapted:
                self.reference_model = self._load_reference_model()
            return
        path = self.output_dir / "reference_logps" / f"{reference_key(self.cfg, data, self.ctx)}.npy"
        if path.is_file():
            self.reference = ReferenceLogps(np.load(path))
            self.reporter.info(f"reference log-probs reused from {path.parent}")
            return
        started = time.perf_counter()
        if adapted:
            values = self._reference_of_base(policy)
        else:
            model = self._load_reference_model()
            with self.autocast_context():
                values = compute_reference(model, self.loader, self.real_vocab, self.ctx.device)
            del model
        self.reference_seconds = time.perf_counter() - started
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, values)
        atomic_write_bytes(path, buffer.getvalue())
        self.reference = ReferenceLogps(values)
        self.reporter.info(f"reference log-probs of {len(values)} pairs computed in {self.reference_seconds:.1f} s")

    def _reference_of_base(self, policy: torch.nn.Module) -> np.ndarray:
        """compute_reference of the policy with its adapter off. Under FSDP2 the unsharded policy is still on the
        CPU (load_model); it visits this rank's device for the pass, as a loaded reference model would."""
        home = next(policy.parameters()).device
        policy.to(self.ctx.device)
        try:
            with as_base_model(policy) as base, self.autocast_context():
                return compute_reference(base, self.loader, self.real_vocab, self.ctx.device)
        finally:
            policy.to(home)

    def autocast_context(self) -> Any:
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.dtype)

    def _resume(self) -> None:
        path = find_resume_checkpoint(self.ctx, self.output_dir)
        if path is None:
            self.reporter.info(f"no valid checkpoint under {self.output_dir}; starting from step 0")
            return
        loader_state, saved = load_checkpoint(self.ctx, path, self.model, self.optimizer, self.scheduler)
        self.state = TrainerState.from_checkpoint(saved, self.cfg, path)
        self.curve = saved.get("preference_curve", [])
        self.loader.load_state_dict(loader_state)
        self.reporter.info(f"resumed from {path} at step {self.state.step}")

    def reference_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.reference is not None:
            return self.reference.of(batch["pair_index"], self.ctx.device)
        on_device = _to_device(batch, self.ctx.device)
        # inference_mode, not no_grad: the reference's forward also skips autograd's version counting and views.
        with torch.inference_mode(), self.autocast_context():
            if self.reference_model is not None:
                sums, _ = completion_logps(self.reference_model, on_device, self.real_vocab)
            else:  # an adapter: the policy's base, past the DDP wrapper (as_base_model yields the inner module)
                with as_base_model(self.model) as base:
                    sums, _ = completion_logps(base, on_device, self.real_vocab)
        return sums.double().clone()  # a plain tensor again: the loss's autograd graph may not hold inference tensors

    def step(self, micro_batches: list[dict[str, torch.Tensor]]) -> tuple[StepLoss, dict[str, float], float]:
        """Forward/backward every micro-batch; the loss is the mean over the global batch's pairs."""
        cfg, ctx = self.cfg, self.ctx
        local_pairs = sum(len(b["pair_index"]) for b in micro_batches)
        local_tokens = sum(int(b["tokens"].sum()) for b in micro_batches)
        global_pairs, global_tokens = ctx.all_reduce_sum([local_pairs, local_tokens])
        scale = ctx.world_size / global_pairs
        totals = {"loss": 0.0, "correct": 0.0, "margin": 0.0, "chosen_nll": 0.0, "loss_tokens": 0.0}
        for index, batch in enumerate(micro_batches):
            reference = self.reference_of(batch)
            on_device = _to_device(batch, ctx.device)
            with gradient_sync(self.model, enabled=index == len(micro_batches) - 1):
                with self.autocast or nullcontext():
                    policy, counts = completion_logps(self.model, on_device, self.real_vocab)
                losses = preference_losses(
                    policy[:, 0].double(),
                    policy[:, 1].double(),
                    reference[:, 0],
                    reference[:, 1],
                    beta=cfg.beta,
                    loss_type=cfg.loss_type,
                    label_smoothing=cfg.label_smoothing,
                    sft_weight=cfg.sft_weight,
                    chosen_tokens=counts[:, 0].double(),
                    rejected_tokens=counts[:, 1].double(),
                )
                (losses.loss.sum() * scale).backward()
            totals["loss"] += float(losses.loss.detach().sum())
            totals["correct"] += float(losses.correct.sum())
            totals["margin"] += float(losses.margin.sum())
            totals["chosen_nll"] += float(losses.chosen_nll.sum())
            totals["loss_tokens"] += float(counts.sum())
        g = ctx.all_reduce_sum([totals[k] for k in ("loss", "correct", "margin", "chosen_nll", "loss_tokens")])
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        pairs = float(global_pairs)
        metrics = {"accuracy": g[1] / pairs, "reward_margin": g[2] / pairs, "chosen_nll": g[3] / pairs, "pairs": pairs}
        return StepLoss(g[0] / pairs, int(g[4]), int(global_tokens)), metrics, grad_norm

    def train(self) -> None:
        cfg = self.cfg
        while self.state.step < cfg.max_steps:
            started = time.perf_counter()
            lr = self.scheduler.get_last_lr()[0]
            micro_batches = [self.loader.next_batch() for _ in range(cfg.grad_accum_steps)]
            loss, metrics, grad_norm = self.step(micro_batches)
            seconds = time.perf_counter() - started
            if not math.isfinite(loss.mean_loss):
                raise FloatingPointError(f"loss became {loss.mean_loss} at step {self.state.step + 1}; lower lr")
            self.state.record(loss, lr)
            self.throughput.record(loss.tokens, seconds)
            self.curve.append({"step": self.state.step, **metrics})
            last = self.state.step == cfg.max_steps
            if self.state.step % cfg.log_every == 0 or last:
                self.reporter.progress(
                    {
                        "step": self.state.step,
                        "max_steps": cfg.max_steps,
                        "loss": loss.mean_loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens_per_second": self.throughput.take_window_rate(),
                        "tokens_seen": self.state.tokens_seen,
                        **metrics,
                    }
                )
            if self.state.step % cfg.checkpoint_every == 0 or last:
                trainer_state = {**self.state.to_checkpoint(cfg), "preference_curve": self.curve}
                save_checkpoint(
                    self.ctx,
                    self.output_dir,
                    self.state.step,
                    self.model,
                    self.optimizer,
                    self.scheduler,
                    self.loader.state_dict(),
                    trainer_state,
                    cfg.keep_checkpoints,
                )

    def finish(self) -> dict[str, Any] | None:
        save_final_model(self.ctx, self.model, self.cfg)
        too_long, packed = self.ctx.all_reduce_sum([self.loader.state.pairs_too_long, self.loader.state.pairs_packed])
        if not self.ctx.is_main:
            return None
        weights = sha256_file(self.output_dir / "model.safetensors")
        last = self.curve[-1] if self.curve else {}
        summary = {
            "kind": "preference",
            "loss_type": self.cfg.loss_type,
            "beta": self.cfg.beta,
            "sft_weight": self.cfg.sft_weight,
            "reference": self.cfg.reference,
            "reference_model_dir": self.cfg.reference_dir,
            "reference_seconds": self.reference_seconds,
            "steps": self.state.step,
            "tokens_seen": self.state.tokens_seen,
            "loss_tokens": self.state.loss_tokens,
            "final_loss": self.state.final_loss,
            "best_loss": self.state.best_loss,
            "final_accuracy": last.get("accuracy"),
            "final_reward_margin": last.get("reward_margin"),
            "final_chosen_nll": last.get("chosen_nll"),
            "tokens_per_second": self.throughput.run_rate(),
            "warmup_seconds": self.throughput.warmup_seconds,
            "packing_efficiency": self.loader.packing_efficiency,
            "pairs": {"total": self.data_info["pairs"], "packed": int(packed), "too_long": int(too_long)},
            "parameters": self.parameters,
            "trainable_parameters": self.trainable_parameters,
            "adapter": self.cfg.adapter,
            "world_size": self.ctx.world_size,
            "data": self.data_info["data"],
            "tokenizer_fingerprint": self.data_info["tokenizer_fingerprint"],
            "loss_curve": self.state.loss_curve,
            "preference_curve": self.curve,
            "resumed_from": self.state.resumed_from,
            "weights_sha256": weights,
            "config": self.cfg.to_dict(),
        }
        atomic_write_bytes(self.output_dir / SUMMARY, json.dumps(summary, indent=1, sort_keys=True).encode())
        scalar = [k for k, v in summary.items() if isinstance(v, int | float | str) and k != "reference_model_dir"]
        metadata = {k: summary[k] for k in scalar if summary[k] is not None}
        metadata["path"] = {"raw_value": str(self.output_dir), "type": "path"}
        metadata["preference_curve"] = {"raw_value": self.curve, "type": "json"}
        self.reporter.final(summary, metadata, data_version=weights[:16])
        return summary


def train(cfg: DPOConfig, resume: bool = False) -> dict[str, Any] | None:
    """Run (or resume) preference training; returns the summary on rank 0, None elsewhere."""
    return run_recipe(DPORecipe, cfg, resume)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="preference training config file (JSON, or YAML)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    args = parser.parse_args(argv)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # as training.sft: stacks of a rank that hangs
    try:
        cfg = load_config(args.config, DPOConfig)
        assert isinstance(cfg, DPOConfig)
        train(cfg, resume=args.resume)
    except BaseException:
        rank = os.environ.get("RANK", "0")
        print(f"[rank {rank}] preference training failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
