"""Per-step records of a training run summarized into throughput, losses and warm-up time."""

from __future__ import annotations

from typing import Any


def summarize_steps(result: dict[str, Any], warmup_steps: int) -> dict[str, Any]:
    """Throughput over the steps after the first `warmup_steps` (lazy init and first-touch costs excluded)."""
    steps = result["steps"]
    if len(steps) <= warmup_steps:
        raise ValueError(f"{len(steps)} steps recorded; need more than the {warmup_steps} warm-up steps")
    window = steps[warmup_steps:]
    seconds = window[-1]["t"] - steps[warmup_steps - 1]["t"] if warmup_steps else float("nan")
    tokens = sum(s["tokens"] for s in window)
    losses = [s["loss"] for s in steps if s["loss"] is not None]
    tail = losses[-5:]
    return {
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "loss_tokens_per_second": sum(s["loss_tokens"] for s in window) / seconds,
        "slots_per_second": sum(s["slots"] for s in window) / seconds,
        "non_pad_fraction": tokens / max(1, sum(s["slots"] for s in window)),
        "final_loss": sum(tail) / len(tail) if tail else float("nan"),
        "first_loss": losses[0] if losses else float("nan"),
        "tokens_total": sum(s["tokens"] for s in steps),
        "loss_tokens_total": sum(s["loss_tokens"] for s in steps),
        "steps": len(steps),
        "parameters": result["parameters"],
        "flop_parameters": result["flop_parameters"],
        "attn_implementation": result["attn_implementation"],
        "compiled": result["compiled"],
        "cpu_kernels": result.get("cpu_kernels", []),
        "warmup_seconds": steps[warmup_steps - 1]["t"] - result["started"] if warmup_steps else float("nan"),
        "peak_rss_mib": result.get("peak_rss_mib", float("nan")),
    }


def summarize_dpo_steps(result: dict[str, Any], warmup_steps: int) -> dict[str, Any]:
    """A preference run's throughput over the steps after the first `warmup_steps`, counted the same on both sides.

    tokens/s = prompt + chosen + rejected tokens of the pairs each step trained on (every pair's tokens once,
    whatever the trainer feeds its model), per second of optimizer steps; the one-off reference pass before the
    first step is not in it (reference_seconds). model tokens/s counts what the policy forward ran on (TRL: the
    prompt twice), slots the token positions including padding.
    """
    steps = result["steps"]
    if len(steps) <= warmup_steps or warmup_steps < 1:
        raise ValueError(f"{len(steps)} steps recorded; need warm-up steps >= 1 and more steps than that")
    window = steps[warmup_steps:]
    seconds = window[-1]["t"] - steps[warmup_steps - 1]["t"]
    total = {key: sum(s[key] for s in window) for key in ("pairs", "pair_tokens", "model_tokens", "slots")}
    summary = {k: v for k, v in result.items() if k not in ("steps", "started")}
    summary.update(
        seconds=seconds,
        tokens_per_second=total["pair_tokens"] / seconds,
        model_tokens_per_second=total["model_tokens"] / seconds,
        slots_per_second=total["slots"] / seconds,
        pairs_per_second=total["pairs"] / seconds,
        pairs_per_step=sum(s["pairs"] for s in steps) / len(steps),
        pair_tokens_per_step=sum(s["pair_tokens"] for s in steps) / len(steps),
        non_pad_fraction=total["model_tokens"] / max(1, total["slots"]),
        first_loss=steps[0]["loss"],
        losses=[s["loss"] for s in steps],
        steps=len(steps),
        warmup_seconds=steps[warmup_steps - 1]["t"] - result["started"],
    )
    return summary
