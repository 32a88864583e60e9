"""Model FLOPs utilisation: the FLOPs accounting, MFU by model width and the GEMM ceilings of the model's shapes."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.harness import medians, run_alternating, run_worker
from benchmarks.suite.sizes import Sizes


def run_mfu(
    runs: list[dict[str, Any]], params: int, flop_params: dict[str, int], mean_context: float
) -> dict[str, float]:
    """Medians over runs of each run's MFU against the peak measured in that run's own process."""
    return {
        "mfu": statistics.median(model_flops_per_second(r, flop_params, mean_context) / r["peak_flops"] for r in runs),
        "mfu_6n": statistics.median(6 * params * r["tokens_per_second"] / r["peak_flops"] for r in runs),
        "peak_flops": statistics.median(r["peak_flops"] for r in runs),
    }


def model_flops_per_second(median: dict[str, float], params: dict[str, int], mean_context: float) -> float:
    """FLOPs the step needs per second (PaLM-style model FLOPs, forward + backward = 3 x forward).

    - every non-pad token: 6 x body parameters (the transformer blocks' matmuls) plus causal
      attention within its conversation, 12 x layers x attention width x keys attended;
    - every labelled token: 6 x LM-head parameters (positions without a label need no logits).
    The same accounting for every side; what a side computes beyond it (padding, the score grid
    of other conversations, unneeded logits) is not credited.
    """
    per_token = 6 * params["body"] + 12 * params["layers"] * params["attention_width"] * mean_context
    return median["tokens_per_second"] * per_token + median["loss_tokens_per_second"] * 6 * params["head"]


# Wider Llamas with the same tokenizer, data and steps: how MFU depends on width on this CPU.
# head_dim 64 as in most released chat models; MLP ~2.7x hidden; GQA with 2 key/value heads.
WIDTH_SWEEP = (
    {"hidden_size": 256, "intermediate_size": 704, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64},
    {"hidden_size": 384, "intermediate_size": 1024, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 64},
)


def mfu_by_width(
    sizes: Sizes,
    base: list[str],
    preset: dict[str, Any],
    params: int,
    flop_params: dict[str, int],
    mean_context: float,
) -> list[dict[str, Any]]:
    """Ours only (the TRL sides are compared on the preset above): MFU of the same training at larger widths."""
    sides = {
        f"hidden {spec['hidden_size']}": (
            lambda index, spec=spec: run_worker(
                ["train-ours", *base, "--model-overrides", json.dumps(spec)], timeout=7200
            )
        )
        for spec in WIDTH_SWEEP
    }
    runs = run_alternating(sides, sizes.repeats)
    rows = [{"overrides": {}, "parameters": params, "flop_parameters": flop_params, **preset}]
    for spec, side_runs in zip(WIDTH_SWEEP, runs.values(), strict=True):
        med = medians(side_runs, ("tokens_per_second", "loss_tokens_per_second"))
        flop = side_runs[0]["flop_parameters"]
        rows.append(
            {
                "overrides": spec,
                "parameters": side_runs[0]["parameters"],
                "flop_parameters": flop,
                **med,
                **run_mfu(side_runs, side_runs[0]["parameters"], flop, mean_context),
                "runs": side_runs,
            }
        )
    return rows


def gemm_ceilings(sizes: Sizes, model: Path, threads: int) -> dict[str, Any]:
    """The model's own GEMM shapes alone, each against the peak measured in the same process."""
    config = json.loads((model / "config.json").read_text())
    tokens = sizes.train_rows * sizes.seq_len
    hidden, inter = config["hidden_size"], config["intermediate_size"]

    def gemm(m: int, k: int, n: int) -> dict[str, float]:
        return run_worker(["gemm", "--shape", f"{m},{k},{n}", "--threads", str(threads)])

    mlp = gemm(tokens, hidden, inter)
    attn = gemm(tokens, hidden, hidden)
    return {
        "mlp_shape": f"{tokens}x{hidden} @ {hidden}x{inter}",
        "mlp_flops": mlp["flops"],
        "mlp_fraction_of_peak": mlp["flops"] / mlp["peak_flops"],
        "attn_shape": f"{tokens}x{hidden} @ {hidden}x{hidden}",
        "attn_flops": attn["flops"],
        "attn_fraction_of_peak": attn["flops"] / attn["peak_flops"],
    }
