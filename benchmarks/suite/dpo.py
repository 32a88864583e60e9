"""Benchmark 6, preference training: training.dpo vs TRL's DPOTrainer on the same pairs, model and loss, on CPU.

Inputs (benchmarks/workload.py: write_pair_inputs): behaviour pairs of the demo world, curated and tokenized as the
preference assets do, the tiny preset model with a tokenizer trained on their text. Ours and TRL's side, each run
in its own worker process, alternating, in each mode: the reference log-probs precomputed once before the first
step (ours `reference: precomputed`, TRL `precompute_ref_log_probs=True`); a reference model run next to the
policy on every step (ours `on_the_fly`, TRL's default); and, where our config has an `adapter` key, a LoRA
adapter (ours `adapter: {type: lora}`, TRL `peft_config=LoraConfig`) with the base as the precomputed reference.
Same sigmoid loss and beta, AdamW (lr, betas, weight decay, clipping, fused kernel), cosine schedule without
warm-up, fp32, no dropout, one torch thread, same steps; TRL gets as many pairs per step as our packed rows hold on
average.
"""

from __future__ import annotations

import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import fmt, markdown_table, median, ratio, run_alternating, run_worker
from benchmarks.suite.sizes import Sizes, status

# What each reference mode passes to both sides' workers; "lora" trains a LoRA adapter (our config's defaults; TRL
# through peft's LoraConfig), the reference being the base with the adapter off, precomputed on both sides.
MODES: dict[str, list[str]] = {
    "precomputed": ["--reference", "precomputed"],
    "on_the_fly": ["--reference", "on_the_fly"],
    "lora": ["--reference", "precomputed", "--lora"],
}
LABELS = {
    "ours_precomputed": "ours (training.dpo), reference precomputed",
    "trl_precomputed": "TRL DPOTrainer, precompute_ref_log_probs=True",
    "ours_on_the_fly": "ours (training.dpo), reference on the fly",
    "trl_on_the_fly": "TRL DPOTrainer, reference model (its default)",
    "ours_lora": "ours, LoRA adapter, reference precomputed (adapter off)",
    "trl_lora": "TRL DPOTrainer + peft LoraConfig, precompute_ref_log_probs=True",
}
MODE_TITLES = {
    "precomputed": "both with precomputed reference log-probs",
    "on_the_fly": "both with a reference model on every step",
    "lora": "both training a LoRA adapter, reference precomputed",
}
SPEED_TARGET = 2.0
LOSS_TOLERANCE = 1e-4
LN2 = math.log(2)
SEED = 0


def prepare_pairs(sizes: Sizes, work: Path) -> tuple[Path, dict[str, Any]]:
    """The pairs, model and shards (rebuilt when the size or the code that makes them changed); returns their folder
    and inputs.json."""
    from benchmarks.workload import kept_inputs, write_pair_inputs

    inputs = work / "inputs"
    info = kept_inputs(inputs, pairs=sizes.dpo_pairs)
    if info is None:
        shutil.rmtree(inputs, ignore_errors=True)
        started = time.perf_counter()
        info = write_pair_inputs(inputs, sizes.dpo_pairs)
        print(f"  pairs: {info['pairs']} ({info['train_pairs']} train) in {time.perf_counter() - started:.0f}s")
    return inputs, info


def our_pairs_per_step(inputs: Path, sizes: Sizes) -> float:
    """How many pairs our packed rows hold per step over the run (our loader, as training.dpo sets it up)."""
    from training.config import TrainConfig
    from training.data import rank_indices
    from training.pair_data import PairLoader, load_pairs

    corpus, _ = load_pairs([inputs / "shards"], "train")
    corpus = corpus.subset(rank_indices(len(corpus), 0, 1, SEED))
    loader = PairLoader(
        corpus,
        seq_len=sizes.dpo_seq_len,
        rows_per_batch=sizes.dpo_rows,
        buffer_pairs=TrainConfig.defaults()["pack_buffer_rows"],
        seed=SEED,
    )
    rows = [loader.next_row() for _ in range(sizes.dpo_steps * sizes.dpo_rows)]
    return sum(len(row) for row in rows) / sizes.dpo_steps


def reference_agreement(ours: str | None, theirs: str | None) -> dict[str, Any] | None:
    """Max and mean |ours - TRL| of the precomputed reference log-probs of the same pairs (summed over tokens)."""
    if not ours or not theirs:
        return None
    a, b = np.load(ours), np.load(theirs)
    where = {pid: i for i, pid in enumerate(a["pair_ids"].tolist())}
    if set(where) != set(b["pair_ids"].tolist()):
        return {"pairs": 0, "problem": "the two sides hold different pairs"}
    diff = np.abs(a["values"][[where[p] for p in b["pair_ids"].tolist()]] - b["values"])
    return {
        "pairs": len(b["pair_ids"]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "mean_abs_logp": float(np.abs(b["values"]).mean()),
    }


def bench_dpo(
    sizes: Sizes, work: Path, *, repeats: int | None = None, tokenization_check: bool = True
) -> tuple[dict[str, Any], str]:
    work.mkdir(parents=True, exist_ok=True)
    inputs, info = prepare_pairs(sizes, work)
    ours_per_step = our_pairs_per_step(inputs, sizes)
    trl_pairs = max(1, round(ours_per_step))
    base = [
        "--model",
        str(inputs / "model"),
        "--shards",
        str(inputs / "shards"),
        "--steps",
        str(sizes.dpo_steps),
        "--seq-len",
        str(sizes.dpo_seq_len),
        "--rows",
        str(sizes.dpo_rows),
        "--pairs",
        str(trl_pairs),
        "--threads",
        str(sizes.train_threads),
        "--seed",
        str(SEED),
    ]

    modes = [m for m in MODES if m != "lora" or lora_available()]
    sides = [f"{who}_{mode}" for mode in modes for who in ("ours", "trl")]

    def side(name: str) -> Any:
        who, mode = name.split("_", 1)
        command = ["dpo-ours" if who == "ours" else "dpo-trl", *base, *MODES[mode], "--work", str(work / name)]
        return lambda index: run_worker(command, timeout=3600)

    for name in sides:
        (work / name).mkdir(exist_ok=True)
    runs = run_alternating({name: side(name) for name in sides}, repeats or sizes.repeats)
    med = {name: side_medians(side_runs) for name, side_runs in runs.items()}
    step1: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    for mode in modes:
        ours, trl = med[f"ours_{mode}"], med[f"trl_{mode}"]
        worst = max(abs(a - b) for a in ours["first_losses"] for b in trl["first_losses"])
        step1[mode] = {
            "ours": ours["first_losses"][0],
            "trl": trl["first_losses"][0],
            "max_abs_diff": worst,
            "max_abs_diff_from_ln2": max(abs(x - LN2) for x in (*ours["first_losses"], *trl["first_losses"])),
            "status": status(LOSS_TOLERANCE, worst, higher_is_better=False),
        }
        ratios[mode] = ratio(ours["tokens_per_second"], trl["tokens_per_second"])
    worst_loss = max(s["max_abs_diff"] for s in step1.values())
    targets = {
        f"vs_trl_{mode}": {"target": SPEED_TARGET, "value": value, "status": status(SPEED_TARGET, value)}
        for mode, value in ratios.items()
    }
    targets["step1_loss"] = {
        "target": LOSS_TOLERANCE,
        "value": worst_loss,
        "status": status(LOSS_TOLERANCE, worst_loss, higher_is_better=False),
    }
    first = {name: side_runs[0] for name, side_runs in runs.items()}
    agreement = reference_agreement(
        first["ours_precomputed"].get("reference_logps"), first["trl_precomputed"].get("reference_logps")
    )
    for side_runs in runs.values():
        for run in side_runs:
            run.pop("reference_logps", None)  # a scratch file, compared above
    payload: dict[str, Any] = {
        "inputs": info,
        "steps": sizes.dpo_steps,
        "seq_len": sizes.dpo_seq_len,
        "packed_rows_per_step": sizes.dpo_rows,
        "trl_pairs_per_step": trl_pairs,
        "ours_planned_pairs_per_step": ours_per_step,
        "threads": sizes.train_threads,
        "beta": 0.1,
        "lr": 1e-4,
        "modes": modes,
        "lora": first["ours_lora"].get("adapter") if "lora" in modes else None,
        "runs": runs,
        "median": med,
        "ratios": ratios,
        "ratio_ours_precomputed_vs_trl_default": ratio(
            med["ours_precomputed"]["tokens_per_second"], med["trl_on_the_fly"]["tokens_per_second"]
        ),
        "step1_loss": step1,
        "reference_logps": agreement,
        "choice": reference_choice(med),
        "targets": targets,
    }
    if tokenization_check:
        payload["trl_tokenization"] = run_worker(
            [
                "dpo-trl-tokenize",
                "--pairs-parquet",
                str(inputs / "pairs.parquet"),
                "--shards",
                str(inputs / "shards"),
                "--model",
                str(inputs / "model"),
            ],
            timeout=3600,
        )
    return payload, dpo_markdown(payload)


def lora_available() -> bool:
    """Our DPOConfig takes an `adapter` (training/adapters.py) and peft is installed."""
    import dataclasses
    import importlib.util

    from training.dpo_config import DPOConfig

    has_key = "adapter" in {f.name for f in dataclasses.fields(DPOConfig)}
    return has_key and importlib.util.find_spec("peft") is not None


def side_medians(side_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over one side's runs, with its step-1 losses (every run's) and its reference mode."""
    keys = (
        "tokens_per_second",
        "model_tokens_per_second",
        "slots_per_second",
        "pairs_per_second",
        "non_pad_fraction",
        "pairs_per_step",
        "pair_tokens_per_step",
        "peak_rss_mib",
        "rss_before_mib",
        "setup_seconds",
        "warmup_seconds",
    )
    m: dict[str, Any] = {key: median([float(r[key]) for r in side_runs]) for key in keys}
    m["peak_growth_mib"] = median([r["peak_rss_mib"] - r["rss_before_mib"] for r in side_runs])
    refs = [r["reference_seconds"] for r in side_runs if r.get("reference_seconds") is not None]
    m["reference_seconds"] = statistics.median(refs) if refs else None
    m["first_losses"] = [r["first_loss"] for r in side_runs]
    m["final_loss"] = median([statistics.fmean(r["losses"][-3:]) for r in side_runs])
    m["reference"] = side_runs[0]["reference"]
    m["trainable_parameters"] = side_runs[0].get("trainable_parameters")
    return m


def reference_choice(med: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Precomputed vs on the fly for our trainer: per-step time saved, and after how many steps the pass pays off."""
    pre, fly = med["ours_precomputed"], med["ours_on_the_fly"]
    step_pre = pre["pair_tokens_per_step"] / pre["tokens_per_second"]
    step_fly = fly["pair_tokens_per_step"] / fly["tokens_per_second"]
    saved = step_fly - step_pre
    seconds = pre["reference_seconds"] or 0.0
    return {
        "step_seconds_precomputed": step_pre,
        "step_seconds_on_the_fly": step_fly,
        "reference_seconds": seconds,
        "break_even_steps": seconds / saved if saved > 0 else float("inf"),
        "peak_rss_saved_mib": fly["peak_rss_mib"] - pre["peak_rss_mib"],
    }


def dpo_markdown(payload: dict[str, Any]) -> str:
    med, info, targets = payload["median"], payload["inputs"], payload["targets"]
    table = markdown_table(
        [
            "side",
            "pair tokens/s",
            "model tokens/s",
            "non-pad fraction",
            "pairs/step",
            "reference pass s",
            "peak RSS MiB",
            "RSS growth MiB",
            "step-1 loss",
            "loss after",
        ],
        [
            [
                LABELS[name],
                m["tokens_per_second"],
                m["model_tokens_per_second"],
                m["non_pad_fraction"],
                m["pairs_per_step"],
                "-" if m["reference_seconds"] is None else fmt(m["reference_seconds"]),
                m["peak_rss_mib"],
                m["peak_growth_mib"],
                f"{m['first_losses'][0]:.7f}",
                f"{m['final_loss']:.4f}",
            ]
            for name, m in med.items()
        ],
    )
    mean = info["mean_tokens"]
    step1, choice = payload["step1_loss"], payload["choice"]
    lines = [
        f"## 6. Preference training (DPO) on CPU: ours vs TRL DPOTrainer ({info['parameters'] / 1e6:.2f}M-parameter "
        f"Llama, fp32, {payload['steps']} optimizer steps, {payload['threads']} torch thread per process)",
        "",
        table,
        "",
    ]
    for mode in payload["modes"]:
        t = targets[f"vs_trl_{mode}"]
        lines.append(
            f"- **ours / TRL, {MODE_TITLES[mode]}: {t['value']:.2f}x** (pair tokens/s; target >= {t['target']:g}x: "
            f"{t['status']})"
        )
    lines.append(
        f"- ours with the reference precomputed (our default) / TRL's default (a reference model on every step): "
        f"{payload['ratio_ours_precomputed_vs_trl_default']:.2f}x"
    )
    losses = "; ".join(
        f"{mode.replace('_', ' ')}: ours {step1[mode]['ours']:.9f}, TRL {step1[mode]['trl']:.9f}"
        for mode in payload["modes"]
    )
    lines.append(
        f"- **Step-1 loss** (policy = reference at step 1, so ln 2 = {LN2:.9f} on both): {losses}. Largest "
        f"|ours - TRL| over all runs {targets['step1_loss']['value']:.1e} (target <= {LOSS_TOLERANCE:g}: "
        f"{targets['step1_loss']['status']}). Ours takes the loss of fp32 log-probs in float64, TRL in float32."
    )
    if payload.get("lora"):
        lora = payload["lora"]
        lines.append(
            f"- LoRA: r {lora['r']}, alpha {lora['alpha']:g}, dropout {lora['dropout']:g} on "
            f"{', '.join(lora['target_modules'])} (our config's defaults; TRL gets the same as a peft LoraConfig); "
            f"trainable parameters ours {med['ours_lora']['trainable_parameters']:,}, TRL "
            f"{med['trl_lora']['trainable_parameters']:,}. Both use the base with the adapter off as the "
            "reference, precomputed before the first step."
        )
    ref = payload.get("reference_logps")
    if ref and ref.get("pairs"):
        lines.append(
            f"- The precomputed reference log-probs of all {ref['pairs']} train pairs agree: largest |ours - TRL| "
            f"{ref['max_abs_diff']:.1e} (mean {ref['mean_abs_diff']:.1e}) on sums of {ref['mean_abs_logp']:.0f} "
            "nats on average, so both sides score the same tokens of the same pairs with the same weights."
        )
    lines += [
        f"- Pairs: {info['train_pairs']} train pairs of {info['pairs']} demo behaviour pairs (core.preferences, "
        f"tokenized by tokenize_pairs; mean prompt {mean['prompt']:.0f}, chosen {mean['chosen']:.0f}, rejected "
        f"{mean['rejected']:.0f} tokens). Completions end at their last loss token (the template's end of turn "
        "after it, outside the loss, is dropped: TRL scores every completion token it is given), so both score the "
        "same tokens.",
        f"- Batches: ours packs whole pairs into {payload['packed_rows_per_step']} rows of {payload['seq_len']} "
        f"tokens per step, each prompt computed once for both completions; TRL gets {payload['trl_pairs_per_step']} "
        "pairs per step (our rows' average), padded, the prompt run twice (once before each completion). "
        "pair tokens/s = prompt + chosen + rejected tokens of the step's pairs per second of steps after the first "
        "two, the same count for both sides; model tokens/s = tokens the policy's forward ran on; the reference "
        "pass before the first step is not in either (its seconds are in their own column).",
        "- TRL 1.16's DPOTrainer tokenizes text itself; the benchmark hands it the pairs' token ids from our shards "
        "(its dataset preparation passes them through). Config: sigmoid loss, beta "
        f"{payload['beta']:g}, lr {payload['lr']:g} cosine to 10% without warm-up, AdamW (fused) betas (0.9, 0.95), "
        "weight decay 0.01 on matrices, grad clip 1.0, no gradient checkpointing (TRL's default is on), fp32, "
        "dropout off; attention: sdpa on TRL's padded pairs, our trainer's default pair_sdpa (each pair's blocks) "
        "on ours. Peak RSS = the worker process's high-water mark; RSS growth = peak minus "
        "RSS after imports (TRL's side also imports datasets and accelerate).",
        f"- Reference mode for our trainer: precomputed (the default) takes {choice['step_seconds_precomputed']:.2f} s "
        f"per step against {choice['step_seconds_on_the_fly']:.2f} s on the fly and holds one model, not two; its "
        f"one-off pass ({choice['reference_seconds']:.1f} s here, every train pair) pays for itself after "
        f"{choice['break_even_steps']:.0f} steps.",
    ]
    tok = payload.get("trl_tokenization")
    if tok:
        tails = ", ".join(f"{k} x{v}" for k, v in tok["trl_tail_after_ours"].items())
        lines.append(
            f"- TRL's own dataset preparation of the same pairs' text (not timed above, "
            f"{tok['trl_prepare_seconds']:.1f} s): {tok['same_prompt_ids']}/{tok['pairs']} prompts tokenize to "
            f"our prompt ids, {tok['completions_starting_with_ours']}/{tok['completions']} completions start with "
            f"ours; what it adds after ours: {tails}."
        )
    return "\n".join(lines) + "\n"
