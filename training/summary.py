"""summary.json, the record of a finished run, and the numbers of it that Dagster shows.

summary.json is written last (its presence means the run finished); the same numbers go
to Dagster Pipes as the trained checkpoint's materialization metadata (pipes_metadata).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.atomic_io import atomic_write_bytes
from training.attention import PACKED_SDPA, head_dim, resolve_attn
from training.config import TrainConfig
from training.cpu.kernels import kernels_in_use
from training.data import LoaderState
from training.distributed import DistContext, unwrap
from training.loss import LossSettings, StepLoss
from training.metrics import Throughput, mfu_estimate
from training.state import TrainerState

SUMMARY = "summary.json"


@dataclass
class PackingTotals:
    """The data loaders' counts summed over ranks; the conversation counts include repeats across epochs."""

    rows: float
    tokens: float
    packed: float
    overlong_split: float
    overlong_dropped: float
    skipped_no_loss: float

    @classmethod
    def gather(cls, loader: LoaderState, ctx: DistContext) -> PackingTotals:
        """Collective: every rank calls it."""
        return cls(
            *ctx.all_reduce_sum(
                [
                    loader.rows_emitted,
                    loader.tokens_emitted,
                    loader.conversations_packed,
                    loader.overlong_split,
                    loader.overlong_dropped,
                    loader.skipped_no_loss,
                ]
            )
        )


@dataclass
class RunFacts:
    """What the recipe knows about its run beyond the trainer state, the throughput and the packing."""

    parameters: int  # of the base model
    trainable_parameters: int  # what the optimizer updated: the adapter's, or all parameters without one
    compiled: bool
    cpu_kernels: list[str]
    peak_flops: float
    peak_flops_source: str
    data_info: dict[str, Any]  # conversations, data (shard fingerprints), tokenizer_fingerprint
    loss: LossSettings = field(default_factory=LossSettings)
    experts: ExpertTotals | None = None  # MoE runs only
    attention_notes: list[str] = field(default_factory=list)  # layers off packed_sdpa's fast path (sliding, capped)


@dataclass
class ExpertTotals:
    """Top-k assignments of non-pad tokens to each expert of each MoE layer, summed over ranks and steps.

    Counted by this process since it started (`since_step`): a resumed run counts from its resume step,
    the counts are not part of the checkpoint.
    """

    since_step: int
    per_layer: list[list[int]] | None = None
    router_aux_last: float | None = None

    def record(self, step: StepLoss) -> None:
        if step.expert_tokens is None:
            return
        if self.per_layer is None:
            self.per_layer = [list(layer) for layer in step.expert_tokens]
        else:
            for totals, counts in zip(self.per_layer, step.expert_tokens, strict=True):
                totals[:] = [a + b for a, b in zip(totals, counts, strict=True)]
        self.router_aux_last = step.router_aux

    def to_summary(self, settings: LossSettings) -> dict[str, Any]:
        layers = self.per_layer or []
        per_expert = [sum(column) for column in zip(*layers, strict=True)] if layers else []
        total = sum(per_expert)
        return {
            "top_k": settings.router_top_k,
            "router_aux_loss_coef": settings.router_aux_coef,  # 0: the config does not ask for the aux loss
            "router_aux_loss_last": self.router_aux_last,
            "since_step": self.since_step,
            "expert_tokens": per_expert,
            "expert_tokens_per_layer": layers,
            "expert_load_max_over_mean": max(per_expert) * len(per_expert) / total if total else None,
        }


def loss_summary(settings: LossSettings) -> dict[str, Any]:
    """How the loss was computed: chunked head or full logits, and the vocabulary the softmax covered."""
    return {"chunked": settings.chunked, "real_vocab_size": settings.real_vocab_size}


def cpu_kernels_used(model: torch.nn.Module, cfg: TrainConfig, ctx: DistContext, dtype: torch.dtype) -> list[str]:
    """Which of our C kernels the steps called (training/cpu/kernels.py); none off CPU."""
    if ctx.device.type != "cpu":
        return []
    attention = resolve_attn(cfg, ctx) == PACKED_SDPA and dtype == torch.float32
    return kernels_in_use(head_dim(unwrap(model).config) if attention else None)


def build_summary(
    cfg: TrainConfig,
    ctx: DistContext,
    state: TrainerState,
    throughput: Throughput,
    packing: PackingTotals,
    facts: RunFacts,
    weights_sha256: str,
) -> dict[str, Any]:
    tokens_per_second = throughput.run_rate()
    conversations = facts.data_info["conversations"]
    return {
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "loss_tokens": state.loss_tokens,
        "final_loss": state.final_loss,
        "best_loss": state.best_loss,
        "tokens_per_second": tokens_per_second,
        "warmup_seconds": throughput.warmup_seconds,
        "compiled": facts.compiled,
        "attn_implementation": resolve_attn(cfg, ctx),
        "cpu_kernels": facts.cpu_kernels,
        "attention_notes": facts.attention_notes,
        "packing_efficiency": packing.tokens / (packing.rows * cfg.seq_len) if packing.rows else 0.0,
        "mfu_estimate": mfu_estimate(facts.parameters, tokens_per_second, facts.peak_flops, ctx.world_size),
        "peak_flops_per_device": facts.peak_flops,
        "peak_flops_source": facts.peak_flops_source,
        "parameters": facts.parameters,
        "trainable_parameters": facts.trainable_parameters,
        "adapter": cfg.adapter,
        "world_size": ctx.world_size,
        "conversations": {
            "total": conversations,
            "packed": int(packing.packed),
            "overlong_split": int(packing.overlong_split),
            "overlong_dropped": int(packing.overlong_dropped),
            "skipped_no_loss_tokens": int(packing.skipped_no_loss),
            "epochs": packing.packed / conversations,
        },
        "data": facts.data_info["data"],
        "tokenizer_fingerprint": facts.data_info["tokenizer_fingerprint"],
        "weights_sha256": weights_sha256,
        "resumed_from": state.resumed_from,
        "loss_curve": state.loss_curve,
        "loss": loss_summary(facts.loss),
        **({"moe": facts.experts.to_summary(facts.loss)} if facts.experts is not None else {}),
        "config": cfg.to_dict(),
    }


def write_summary(output_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_bytes(output_dir / SUMMARY, json.dumps(summary, indent=1, sort_keys=True).encode())


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
        "trainable_parameters",
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
    meta["loss_chunked"] = summary["loss"]["chunked"]
    if summary.get("adapter"):
        meta["adapter"] = {"raw_value": summary["adapter"], "type": "json"}
    if summary.get("attention_notes"):
        meta["attention_notes"] = {"raw_value": summary["attention_notes"], "type": "json"}
    if "moe" in summary:
        meta["expert_tokens"] = {"raw_value": summary["moe"], "type": "json"}
        balance = summary["moe"]["expert_load_max_over_mean"]
        if balance is not None:
            meta["expert_load_max_over_mean"] = balance
    return meta
