"""The four benchmarks. Each returns (payload for JSON, Markdown section).

1. data preparation: our tokenized_shards path vs TRL SFTTrainer's dataset preparation;
2. training throughput on CPU: ours packed vs TRL padded vs TRL packed (bfd, padding-free, sdpa);
3. scale: curation + tokenization of many generated conversations, partition by partition;
4. multi-process: `torchrun` 2 processes vs 1 process on the same training work.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    REPO,
    BenchmarkError,
    fmt,
    labels_to_mask,
    markdown_table,
    mask_mismatches,
    medians,
    ratio,
    run_alternating,
    run_worker,
)


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between `make bench` and `BENCH_QUICK=1 make bench`."""

    quick: bool
    repeats: int = 3
    prep_conversations: int = 20_000
    train_steps: int = 24
    train_rows: int = 8
    seq_len: int = 512
    scale_small: int = 100_000
    scale_large: int = 1_000_000
    scale_per_day: int = 50_000
    multi_steps: int = 20
    # torch intra-op threads per training process (CPU). One: on a shared 2-core machine OpenMP
    # threads that wait on each other turn other users' load into 2-10x swings; one thread per side
    # keeps the comparison about the code. Benchmark 4 compares 1 process x 2 threads with 2 x 1.
    train_threads: int = 1

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if quick:
            return cls(
                quick=True,
                prep_conversations=5_000,
                train_steps=6,
                train_rows=4,
                scale_small=20_000,
                scale_large=60_000,
                scale_per_day=20_000,
                multi_steps=8,
            )
        return cls(quick=False)


def _status(target: float, value: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "MISSED"


# ------------------------------------------------------------------------------ 1. data preparation


def _read_ours(shard_dir: Path) -> dict[str, tuple[list[int], list[int]]]:
    from core.schemas import SPLITS
    from core.shards import read_manifest, read_split

    manifest = read_manifest(shard_dir)
    rows: dict[str, tuple[list[int], list[int]]] = {}
    for split in SPLITS:
        frame = read_split(shard_dir, split, manifest)
        for cid, ids, mask in frame.select("conversation_id", "input_ids", "loss_mask").iter_rows():
            rows[cid] = (ids, mask)
    return rows


def _read_trl(path: Path) -> dict[str, tuple[list[int], list[int]]]:
    import polars as pl

    frame = pl.read_parquet(path)
    return {
        cid: (ids, labels_to_mask(labels))
        for cid, ids, labels in frame.select("conversation_id", "input_ids", "labels").iter_rows()
    }


def bench_data_prep(sizes: Sizes, inputs: Path, work: Path) -> tuple[dict[str, Any], str]:
    def side(command: str) -> Any:
        def call(index: int) -> dict[str, Any]:
            out = work / f"{command}-{index}"
            shutil.rmtree(out, ignore_errors=True)
            result = run_worker([command, "--inputs", str(inputs), "--out", str(out)])
            result["conversations_per_second"] = result["conversations"] / result["seconds"]
            result["tokens_per_second"] = result["tokens"] / result["seconds"]
            result["rss_growth_mib"] = result["peak_rss_mib"] - result["rss_before_mib"]
            result["conversations_per_cpu_second"] = result["conversations"] / result["cpu_seconds"]
            return result

        return call

    runs = run_alternating({"ours": side("prep-ours"), "trl": side("prep-trl")}, sizes.repeats)
    compared, problems = mask_mismatches(
        _read_ours(work / "prep-ours-0"), _read_trl(work / "prep-trl-0" / "trl_prepared.parquet")
    )
    keys = (
        "seconds",
        "cpu_seconds",
        "conversations_per_second",
        "conversations_per_cpu_second",
        "tokens_per_second",
        "peak_rss_mib",
        "rss_growth_mib",
    )
    med = {name: medians(r, keys) for name, r in runs.items()}
    med["ours"]["tokenizer_seconds"] = medians(runs["ours"], ["tokenizer_seconds"])["tokenizer_seconds"]
    speedup = ratio(med["ours"]["conversations_per_second"], med["trl"]["conversations_per_second"])
    cpu_speedup = ratio(med["ours"]["conversations_per_cpu_second"], med["trl"]["conversations_per_cpu_second"])
    first = runs["ours"][0]
    payload = {
        "conversations": first["conversations"],
        "tokens": first["tokens"],
        "loss_tokens": first["loss_tokens"],
        "runs": runs,
        "median": med,
        "ratio_conversations_per_second": speedup,
        "ratio_conversations_per_cpu_second": cpu_speedup,
        "target_ratio": 3.0,
        "target": _status(3.0, speedup),
        "masks": {"rows_compared": compared, "identical": not problems, "problems": problems},
    }
    table = markdown_table(
        ["side", "conversations/s", "tokens/s", "wall s", "CPU s", "peak RSS MiB", "RSS growth MiB"],
        [
            [
                label,
                med[name]["conversations_per_second"],
                med[name]["tokens_per_second"],
                med[name]["seconds"],
                med[name]["cpu_seconds"],
                med[name]["peak_rss_mib"],
                med[name]["rss_growth_mib"],
            ]
            for name, label in (
                ("ours", "ours: tokenize_conversations + write_shard_directory"),
                ("trl", "TRL SFTTrainer._prepare_dataset (assistant_only_loss=True)"),
            )
        ],
    )
    tok_seconds = med["ours"]["tokenizer_seconds"]
    md = (
        f"## 1. Data preparation ({first['conversations']:,} demo conversations, {first['tokens']:,} tokens)\n\n"
        f"{table}\n\n"
        f"- **ours / TRL conversations/s: {speedup:.2f}x** (target >= 3x: {payload['target']}); per CPU-second "
        f"(robust to other load on the machine): {cpu_speedup:.2f}x.\n"
        f"- Masks compared row by row on {compared:,} conversations: "
        f"{'identical' if not problems else 'DIFFERENT: ' + '; '.join(problems)}.\n"
        f"- Tokenizing the whole renderings with the Rust BPE tokenizer, as TRL does (one call per conversation), "
        f"takes {tok_seconds:.2f} s here ({tok_seconds / med['ours']['seconds']:.0%} of our wall time). "
        f"Ours tokenizes each distinct text piece between control tokens once (the tokenizer "
        f"encodes those pieces independently; system prompts and stock phrases repeat), checked once per tokenizer "
        f"against whole-rendering tokenization. Ours additionally renders every assistant turn's serving prompt to "
        f"prove the train/serve prefix, and writes the shard files (parquet + manifest with sha256); TRL's prepared "
        f"dataset stays in memory.\n"
    )
    if problems:
        raise BenchmarkError("loss masks differ between ours and TRL: " + "; ".join(problems))
    return payload, md


# ------------------------------------------------------------------------------ 2. training throughput


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
            "vs_trl_padded": {"target": 2.5, "value": vs_padded, "status": _status(2.5, vs_padded)},
            "vs_trl_packed": {"target": 1.0, "value": vs_packed, "status": _status(1.0, vs_packed)},
            "mfu": {"target": mfu_target, "value": mfu, "status": _status(mfu_target, mfu)},
        },
    }
    if device == "cpu":
        payload["width_sweep"] = _mfu_by_width(sizes, base, med["ours_packed"], params, flop_params, mean_context)
        payload["gemm_ceilings"] = _gemm_ceilings(sizes, model, threads)
        if not sizes.quick:  # where ours spends its time (torch profiler over steps 3..)
            payload["profile"] = run_worker(["train-ours", *base, "--profile"], timeout=3600).get("profile", "")
    payload["threads"] = threads
    return payload, training_markdown(payload)


# Wider Llamas with the same tokenizer, data and steps: how MFU depends on width on this CPU.
# head_dim 64 as in most released chat models; MLP ~2.7x hidden; GQA with 2 key/value heads.
WIDTH_SWEEP = (
    {"hidden_size": 256, "intermediate_size": 704, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64},
    {"hidden_size": 384, "intermediate_size": 1024, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 64},
)


def _mfu_by_width(
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


def profile_shares(table: str) -> dict[str, float]:
    """Self-CPU shares of matmuls, attention and everything else from a torch profiler table (top rows)."""
    shares = {"matmul": 0.0, "attention": 0.0, "compiled": 0.0, "other (top rows)": 0.0}
    for line in table.splitlines():
        cells = [c for c in line.strip().split("  ") if c.strip()]
        try:
            name, share = cells[0].strip(), float(cells[1].strip().rstrip("%")) / 100
        except (IndexError, ValueError):  # header, rule and total lines
            continue
        if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
            shares["matmul"] += share
        elif "scaled_dot_product" in name or "attention" in name:
            shares["attention"] += share
        elif "CompiledFxGraph" in name:
            shares["compiled"] += share
        else:
            shares["other (top rows)"] += share
    return shares


def _shape_label(flop: dict[str, int]) -> str:
    return (
        f"hidden {flop['hidden']}, {flop['heads']} heads x {flop['head_dim']}, MLP {flop['intermediate']}, "
        f"{flop['layers']} layers"
    )


def training_markdown(payload: dict[str, Any]) -> str:
    med, targets = payload["median"], payload["targets"]
    labels = {
        "ours_packed": "ours, packed (BFD rows, position_ids restarts)",
        "trl_padded": f"TRL SFTTrainer, padded ({payload['trl_padded_conversations_per_step']} conversations/step)",
        "trl_packed": "TRL SFTTrainer, packing_strategy=bfd + padding_free",
    }

    def attention(m: dict[str, Any]) -> str:
        kernels = m.get("cpu_kernels") or []
        ours = f", C kernels ({' + '.join(k.replace('_', '-') for k in kernels)})" if kernels else ""
        return f"{m.get('attn_implementation', 'sdpa')}{', compiled layers' if m.get('compiled') else ''}{ours}"

    table = markdown_table(
        [
            "side",
            "attention",
            "non-pad tokens/s",
            "loss tokens/s",
            "non-pad fraction",
            "tokens/step",
            "MFU",
            "6N MFU",
            "warm-up s",
            "loss first -> final",
        ],
        [
            [
                labels[name],
                attention(m),
                m["tokens_per_second"],
                m["loss_tokens_per_second"],
                m["non_pad_fraction"],
                m["tokens_per_step"],
                f"{m['mfu']:.1%}",
                f"{m.get('mfu_6n', m['mfu']):.1%}",
                m.get("warmup_seconds", float("nan")),
                f"{m['first_loss']:.3f} -> {m['final_loss']:.3f}",
            ]
            for name, m in med.items()
        ],
    )
    where = "GPU" if payload["device"] == "cuda" else "CPU"
    threads = payload.get("threads", 0)
    thread_note = f", {threads} torch thread per process" if threads else ""
    dtype, peak = payload["dtype"], payload["peak_flops"]
    flop = payload.get("flop_parameters")
    accounting = (
        f"MFU = model FLOPs per second / peak, the same accounting for every side: per non-pad token 6 x "
        f"{flop['body']:,} body parameters + causal attention within the conversation (12 x {flop['layers']} layers "
        f"x width {flop['attention_width']} x {payload['mean_attention_context']:.1f} keys on average), per "
        f"labelled token 6 x {flop['head']:,} LM-head parameters. 6N MFU = 6 x all {payload['parameters']:,} "
        f"parameters x non-pad tokens/s / peak, for comparison."
        if flop
        else "MFU = 6 x parameters x non-pad tokens/s / peak."
    )
    md = (
        f"## 2. Training throughput on {where} ({payload['parameters'] / 1e6:.1f}M-parameter Llama, {dtype}, "
        f"{payload['steps']} optimizer steps, ~{payload['packed_rows_per_step'] * payload['seq_len']:,} token slots "
        f"per step{thread_note})\n\n{table}\n\n"
        f"- **ours / TRL padded: {targets['vs_trl_padded']['value']:.2f}x** (target >= 2.5x: "
        f"{targets['vs_trl_padded']['status']})\n"
        f"- **ours / TRL packed: {targets['vs_trl_packed']['value']:.2f}x** (target >= 1.0x: "
        f"{targets['vs_trl_packed']['status']})\n"
        f"- **MFU (ours): {targets['mfu']['value']:.1%}** of the {dtype} matmul peak measured in each run's own "
        f"process just before and after its steps (median {peak / 1e9:,.0f} GFLOP/s; target >= 60%: "
        f"{targets['mfu']['status']}). {accounting}\n"
        f"- Throughput and MFU are over the steps after the first two; warm-up s = those first steps (ours: "
        f"torch.compile of the decoder layers, cached on disk after the first run on a machine).\n"
        f"- Final loss = mean of the last 5 steps' token-mean loss; same data, steps, LR schedule on every side.\n"
    )
    if payload.get("width_sweep"):
        sweep = payload["width_sweep"]
        table = markdown_table(
            ["model (ours, same data and steps)", "parameters", "non-pad tokens/s", "MFU", "6N MFU"],
            [
                [
                    _shape_label(row["flop_parameters"]) + ("" if row["overrides"] else " (the preset above)"),
                    f"{row['parameters'] / 1e6:.1f}M",
                    row["tokens_per_second"],
                    f"{row['mfu']:.1%}",
                    f"{row['mfu_6n']:.1%}",
                ]
                for row in sweep
            ],
        )
        md += f"\nMFU by model width on this CPU (ours only; medians of {len(sweep[1]['runs'])} runs):\n\n{table}\n\n"
    if "gemm_ceilings" in payload:
        ceil = payload["gemm_ceilings"]
        md += (
            f"- The model's own GEMM shapes reach {ceil['mlp_fraction_of_peak']:.0%} (MLP, {ceil['mlp_shape']}) and "
            f"{ceil['attn_fraction_of_peak']:.0%} (attention projections, {ceil['attn_shape']}) of the peak "
            f"measured beside them, in isolation.\n"
        )
    if payload.get("profile"):
        shares = profile_shares(payload["profile"])
        md += (
            "- Where ours spends its step time (torch profiler, self CPU time): "
            + ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
            + ". Attention = packed_sdpa, each conversation on its own (our C kernel where it was built, else "
            "ATen's CPU flash kernel); its share of the time is above its share of the FLOPs because with "
            "32-wide heads each score costs one exp() per 64 multiply-adds, and the score blocks are small. "
            "Compiled = inductor's fused elementwise kernels (norms, rotary, SiLU x up, residuals), "
            "bound by memory bandwidth at these tensor sizes.\n"
        )
    return md


def _gemm_ceilings(sizes: Sizes, model: Path, threads: int) -> dict[str, Any]:
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


# ------------------------------------------------------------------------------ 3. scale


def bench_scale(sizes: Sizes, model: Path, work: Path) -> tuple[dict[str, Any], str]:
    results = {}
    for n in (sizes.scale_small, sizes.scale_large):
        out = work / f"scale-{n}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        results[n] = run_worker(
            ["scale", "--n", str(n), "--per-day", str(sizes.scale_per_day), "--out", str(out), "--model", str(model)],
            timeout=3 * 3600,
        )
        print(f"    scale {n:,}: {time.perf_counter() - started:.0f}s")
        shutil.rmtree(out, ignore_errors=True)
    small, large = results[sizes.scale_small], results[sizes.scale_large]
    gib = large["peak_rss_mib"] / 1024
    minutes = large["data_half_seconds"] / 60
    payload = {
        "runs": {str(k): v for k, v in results.items()},
        "conversations_per_partition": sizes.scale_per_day,
        "targets": {
            "minutes": {"target": 15, "value": minutes, "status": _status(15, minutes, higher_is_better=False)},
            "peak_rss_gib": {"target": 4, "value": gib, "status": _status(4, gib, higher_is_better=False)},
            "rss_growth_large_vs_small": large["peak_rss_mib"] / small["peak_rss_mib"],
        },
    }
    table = markdown_table(
        [
            "conversations",
            "partitions",
            "curation s",
            "tokenize s",
            "write s",
            "data half s",
            "conv/s",
            "peak RSS MiB",
            "(generator s)",
        ],
        [
            [
                f"{r['conversations']:,}",
                r["days"],
                r["curate_seconds"],
                r["tokenize_seconds"],
                r["write_seconds"],
                r["data_half_seconds"],
                r["conversations_per_second"],
                r["peak_rss_mib"],
                r["generate_seconds"],
            ]
            for r in (small, large)
        ],
    )
    md = (
        f"## 3. Scale: curation + tokenization, {sizes.scale_per_day:,} conversations per daily partition\n\n"
        f"{table}\n\n"
        f"- **{large['conversations']:,} conversations: {minutes:.1f} min, peak RSS {gib:.2f} GiB** "
        f"(targets < 15 min: {payload['targets']['minutes']['status']}, < 4 GiB: "
        f"{payload['targets']['peak_rss_gib']['status']}).\n"
        f"- Memory is flat in the input size: peak RSS {small['peak_rss_mib']:,.0f} MiB at "
        f"{small['conversations']:,} vs {large['peak_rss_mib']:,.0f} MiB at {large['conversations']:,} "
        f"({payload['targets']['rss_growth_large_vs_small']:.2f}x for "
        f"{large['conversations'] / small['conversations']:.0f}x the data): each partition is curated "
        f"(deduplicated against earlier days' content hashes), tokenized and written before the next is read, "
        f"as the daily assets do.\n"
        f"- The synthetic generator's own time (events -> candidate conversations) is shown apart; it is not part of "
        f"the data half.\n"
    )
    return payload, md


# ------------------------------------------------------------------------------ 4. multi-process


def _multi_config(sizes: Sizes, model: Path, shards: Path, out: Path, procs: int) -> Path:
    rows_total = sizes.train_rows
    config = {
        "base_model_dir": str(model),
        "shard_dirs": [str(shards)],
        "output_dir": str(out),
        "seq_len": sizes.seq_len,
        "micro_batch_rows": rows_total // procs,
        "grad_accum_steps": 1,
        "max_steps": sizes.multi_steps,
        "lr": 1e-3,
        "warmup_steps": 5,
        "checkpoint_every": 10_000,
        "log_every": 10_000,
        "device": "cpu",
        "cpu_threads": 2 // procs,
        "peak_flops": 1.0,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(config))
    return path


def bench_multiprocess(sizes: Sizes, model: Path, shards: Path, work: Path) -> tuple[dict[str, Any], str]:
    def side(procs: int) -> Any:
        def call(index: int) -> dict[str, Any]:
            out = work / f"multi-{procs}-{index}"
            shutil.rmtree(out, ignore_errors=True)
            config = _multi_config(sizes, model, shards, out, procs)
            if procs == 1:
                cmd = [sys.executable, "-m", "training.sft", "--config", str(config)]
            else:
                cmd = [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc-per-node={procs}",
                    "-m",
                    "training.sft",
                    "--config",
                    str(config),
                ]
            started = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600, check=False)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise BenchmarkError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            summary = json.loads((out / "summary.json").read_text())
            shutil.rmtree(out, ignore_errors=True)
            return {
                "tokens_per_second": summary["tokens_per_second"],
                "final_loss": summary["final_loss"],
                "tokens_seen": summary["tokens_seen"],
                "wall_seconds": wall,
                "world_size": summary["world_size"],
            }

        return call

    runs = run_alternating({"1_process": side(1), "2_processes": side(2)}, sizes.repeats)
    med = {name: medians(r, ("tokens_per_second", "final_loss", "wall_seconds")) for name, r in runs.items()}
    speedup = ratio(med["2_processes"]["tokens_per_second"], med["1_process"]["tokens_per_second"])
    payload = {"runs": runs, "median": med, "ratio_2_vs_1": speedup, "steps": sizes.multi_steps}
    table = markdown_table(
        ["run", "tokens/s (steps only)", "final loss", "wall s (incl. start-up, checkpoint)"],
        [
            [
                "1 process x 2 threads (python -m training.sft)",
                med["1_process"]["tokens_per_second"],
                med["1_process"]["final_loss"],
                med["1_process"]["wall_seconds"],
            ],
            [
                "2 processes x 1 thread (torchrun, DDP gloo)",
                med["2_processes"]["tokens_per_second"],
                med["2_processes"]["final_loss"],
                med["2_processes"]["wall_seconds"],
            ],
        ],
    )
    if speedup >= 1.1:
        why = (
            "The two processes win although one process already uses both cores through torch's intra-op threads: "
            "at this model width the per-op threading overhead (and, on a busy machine, OpenMP threads waiting on "
            "each other) costs more than the gradient all-reduce of data parallelism."
        )
    elif speedup <= 0.9:
        why = (
            "One process with 2 intra-op threads already uses both cores; two DDP processes add a gradient "
            "all-reduce (gloo) per step and lose the shared-memory threading, so they are slower here."
        )
    else:
        why = (
            "About even: one process already uses both cores through intra-op threads, so two DDP processes only "
            "trade thread parallelism for process parallelism plus a gradient all-reduce per step."
        )
    md = (
        f"## 4. Multi-process: 2 processes vs 1 on the same work ({sizes.multi_steps} steps, same global batch)\n\n"
        f"{table}\n\n**2 processes / 1 process: {speedup:.2f}x** on this 2-core machine. {why} This is no "
        f"scaling result: there are no more cores to scale to.\n"
    )
    return payload, md


def summary_rows(results: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """The headline table: one row per comparison with its target and status."""
    rows: list[list[Any]] = []
    if "data_prep" in results:
        r = results["data_prep"]
        rows.append(
            [
                "1. data prep: ours / TRL conversations/s",
                f"{r['ratio_conversations_per_second']:.2f}x",
                ">= 3x",
                r["target"],
            ]
        )
    for key, title in (("training", "2. CPU training"), ("training_gpu", "2. GPU training")):
        if key in results:
            t = results[key]["targets"]
            rows.append(
                [
                    f"{title}: ours / TRL padded (non-pad tokens/s)",
                    f"{t['vs_trl_padded']['value']:.2f}x",
                    ">= 2.5x",
                    t["vs_trl_padded"]["status"],
                ]
            )
            rows.append(
                [
                    f"{title}: ours / TRL packed (non-pad tokens/s)",
                    f"{t['vs_trl_packed']['value']:.2f}x",
                    ">= 1.0x",
                    t["vs_trl_packed"]["status"],
                ]
            )
            if key == "training_gpu":  # the issue asks to report GPU MFU, its 60% target is for CPU
                rows.append([f"{title}: MFU (ours)", f"{t['mfu']['value']:.1%}", "reported", "-"])
                continue
            preset = f"{results[key]['parameters'] / 1e6:.1f}M preset"
            rows.append([f"{title}: MFU (ours, {preset})", f"{t['mfu']['value']:.1%}", ">= 60%", t["mfu"]["status"]])
            for row in results[key].get("width_sweep", [])[1:]:
                size = f"hidden {row['flop_parameters']['hidden']}, {row['parameters'] / 1e6:.1f}M"
                rows.append(
                    [
                        f"{title}: MFU (ours, {size})",
                        f"{row['mfu']:.1%}",
                        ">= 60%",
                        _status(0.6, row["mfu"]),
                    ]
                )
    if "scale" in results:
        t = results["scale"]["targets"]
        rows.append(
            ["3. scale: data half wall time", f"{t['minutes']['value']:.1f} min", "< 15 min", t["minutes"]["status"]]
        )
        rows.append(
            ["3. scale: peak RSS", f"{t['peak_rss_gib']['value']:.2f} GiB", "< 4 GiB", t["peak_rss_gib"]["status"]]
        )
    if "multiprocess" in results:
        r = results["multiprocess"]
        rows.append(["4. 2 processes / 1 process (tokens/s)", f"{r['ratio_2_vs_1']:.2f}x", "reported", "-"])
    return rows


__all__ = ["Sizes", "bench_data_prep", "bench_multiprocess", "bench_scale", "bench_training", "fmt", "summary_rows"]
