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
