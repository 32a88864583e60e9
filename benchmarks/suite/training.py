"""Benchmark 2, training throughput: ours packed vs TRL padded vs TRL packed (bfd, padding-free, sdpa).

The same tokens, steps and LR schedule on every side, each run in its own worker
process; the sides alternate so load from other users of the machine falls on all of them.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.harness import medians, ratio, run_alternating, run_worker
from benchmarks.suite.mfu import gemm_ceilings, mfu_by_width, run_mfu
from benchmarks.suite.sizes import Sizes, status
from benchmarks.suite.training_report import training_markdown


def _train_args(sizes: Sizes, model: Path, shards: Path, work: Path, steps: int) -> list[str]:
    return [
        "--model",
        str(model),
        "--shards",
        str(shards),
        "--work",
        str(work),
        "--steps",
        str(steps),
        "--seq-len",
        str(sizes.seq_len),
        "--rows",
        str(sizes.train_rows),
    ]


def _train_lengths(shards: Path) -> Any:
    """Token count of every train conversation in the shards (one read for all the figures below)."""
    import numpy as np

    from core.shards import read_split

    return read_split(shards, "train")["input_ids"].list.len().to_numpy().astype(np.int64)


def _mean_attention_context(lengths: Any, seq_len: int) -> float:
    """Mean number of keys a token attends to (causal, within its conversation, pieces of <= seq_len)."""
    import numpy as np

    full, rest = np.divmod(lengths, seq_len)
    keys = full * seq_len * (seq_len + 1) / 2 + rest * (rest + 1) / 2
    return float(keys.sum() / lengths.sum())


def bench_training(
    sizes: Sizes,
    model: Path,
    shards: Path,
    work: Path,
    *,
    device: str = "cpu",
    model_overrides: str = "",
    extra: list[str] | None = None,
) -> tuple[dict[str, Any], str]:
    steps = sizes.train_steps
    threads = sizes.train_threads if device == "cpu" else 0
    base = [*_train_args(sizes, model, shards, work, steps), "--device", device, "--threads", str(threads)]
    base += extra or []
    if model_overrides:
        base += ["--model-overrides", model_overrides]
    lengths = _train_lengths(shards)
    mean_len = float(lengths.mean())
    # Same effective batch: TRL padded gets as many conversations per step as the packed rows hold on average.
    batch = max(1, round(sizes.train_rows * sizes.seq_len * 0.98 / mean_len))
    dtype = "bf16" if device == "cuda" else "fp32"

    def side(command: str, *more: str) -> Any:
        return lambda index: run_worker([command, *base, *more], timeout=7200)

    runs = run_alternating(
        {
            "ours_packed": side("train-ours"),
            "trl_padded": side("train-trl", "--mode", "padded", "--batch", str(batch)),
            "trl_packed": side("train-trl", "--mode", "packed"),
        },
        sizes.repeats,
    )
    keys = (
        "tokens_per_second",
        "loss_tokens_per_second",
        "slots_per_second",
        "non_pad_fraction",
        "final_loss",
        "first_loss",
        "peak_rss_mib",
    )
    med = {name: medians(r, keys) for name, r in runs.items()}
    params = runs["ours_packed"][0]["parameters"]
    flop_params = runs["ours_packed"][0]["flop_parameters"]
    mean_context = _mean_attention_context(lengths, sizes.seq_len)
    for name in med:
        med[name].update(run_mfu(runs[name], params, flop_params, mean_context))
        med[name]["warmup_seconds"] = statistics.median(r["warmup_seconds"] for r in runs[name])
        med[name]["attn_implementation"] = runs[name][0]["attn_implementation"]
        med[name]["compiled"] = runs[name][0]["compiled"]
        med[name]["cpu_kernels"] = runs[name][0].get("cpu_kernels", [])
        med[name]["tokens_per_step"] = runs[name][0]["tokens_total"] / runs[name][0]["steps"]
    vs_padded = ratio(med["ours_packed"]["tokens_per_second"], med["trl_padded"]["tokens_per_second"])
    vs_packed = ratio(med["ours_packed"]["tokens_per_second"], med["trl_packed"]["tokens_per_second"])
    mfu = med["ours_packed"]["mfu"]
    peak = med["ours_packed"]["peak_flops"]  # the MFU denominator: ours' own runs (each side uses its own)
    mfu_target = 0.6
    payload: dict[str, Any] = {
        "device": device,
        "dtype": dtype,
        "parameters": params,
        "flop_parameters": flop_params,
        "mean_attention_context": mean_context,
        "steps": steps,
        "seq_len": sizes.seq_len,
        "packed_rows_per_step": sizes.train_rows,
        "trl_padded_conversations_per_step": batch,
        "mean_conversation_tokens": mean_len,
        "peak_flops": peak,
        "runs": runs,
        "median": med,
        "ratio_vs_trl_padded": vs_padded,
        "ratio_vs_trl_packed": vs_packed,
        "targets": {
            "vs_trl_padded": {"target": 2.5, "value": vs_padded, "status": status(2.5, vs_padded)},
            "vs_trl_packed": {"target": 1.0, "value": vs_packed, "status": status(1.0, vs_packed)},
            "mfu": {"target": mfu_target, "value": mfu, "status": status(mfu_target, mfu)},
        },
    }
    if device == "cpu":
        payload["width_sweep"] = mfu_by_width(sizes, base, med["ours_packed"], params, flop_params, mean_context)
        payload["gemm_ceilings"] = gemm_ceilings(sizes, model, threads)
        if not sizes.quick:  # where ours spends its time (torch profiler over steps 3..)
            payload["profile"] = run_worker(["train-ours", *base, "--profile"], timeout=3600).get("profile", "")
    payload["threads"] = threads
    return payload, training_markdown(payload)
