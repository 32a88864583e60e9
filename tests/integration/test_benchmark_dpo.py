"""Benchmark 6 (benchmarks/suite/dpo.py): our DPO vs TRL's DPOTrainer on the same pairs.

The quick mode runs every side once (needs the `bench` extra: trl); the rest checks the step accounting, the
pairs both sides read and the headline rows without running a trainer. No speed thresholds here.
"""

from __future__ import annotations

import math

import polars as pl
import pytest

from benchmarks.suite import Sizes, summary_rows
from benchmarks.worker.steps import summarize_dpo_steps
from benchmarks.workload import scored_completions
from core.preferences.tokenize import PAIR_SHARD_POLARS_SCHEMA


def _steps(times: list[float], pairs: int = 4, tokens: int = 100) -> list[dict]:
    return [
        {"t": t, "pairs": pairs, "pair_tokens": tokens, "model_tokens": tokens + 40, "slots": 200, "loss": 0.69}
        for t in times
    ]


def test_dpo_throughput_counts_pair_tokens_after_the_warmup_steps():
    raw = {"steps": _steps([10.0, 11.0, 11.5, 12.0]), "started": 5.0, "side": "ours", "peak_rss_mib": 1.0}
    out = summarize_dpo_steps(raw, warmup_steps=2)
    assert out["seconds"] == pytest.approx(1.0)  # steps 3 and 4, from the end of step 2
    assert out["tokens_per_second"] == pytest.approx(200.0)
    assert out["model_tokens_per_second"] == pytest.approx(280.0)
    assert out["non_pad_fraction"] == pytest.approx(140 / 200)
    assert out["warmup_seconds"] == pytest.approx(6.0)
    assert out["first_loss"] == 0.69 and out["steps"] == 4 and "started" not in out
    with pytest.raises(ValueError, match="warm-up"):
        summarize_dpo_steps(raw, warmup_steps=4)


def test_completions_are_cut_at_their_last_loss_token():
    rows = pl.DataFrame(
        {
            "split": ["train"],
            "pair_id": ["p"],
            "prompt_ids": [[1, 2]],
            "chosen_ids": [[3, 4, 5]],
            "chosen_mask": [[1, 1, 0]],
            "rejected_ids": [[6, 7]],
            "rejected_mask": [[1, 1]],
        },
        schema={"split": pl.String, **PAIR_SHARD_POLARS_SCHEMA},
    )
    out = scored_completions(rows).row(0, named=True)
    assert (out["chosen_ids"], out["chosen_mask"]) == ([3, 4], [1, 1])
    assert (out["rejected_ids"], out["prompt_ids"]) == ([6, 7], [1, 2])
    gap = rows.with_columns(pl.Series("chosen_mask", [[1, 0, 1]], dtype=pl.List(pl.UInt8)))
    with pytest.raises(ValueError, match="unscored token inside"):
        scored_completions(gap)


def test_headline_rows_name_both_reference_modes_and_the_loss_check():
    targets = {
        "vs_trl_precomputed": {"target": 2.0, "value": 2.4, "status": "met"},
        "vs_trl_on_the_fly": {"target": 2.0, "value": 1.8, "status": "MISSED"},
        "vs_trl_lora": {"target": 2.0, "value": 2.1, "status": "met"},
        "step1_loss": {"target": 1e-4, "value": 1.2e-7, "status": "met"},
    }
    rows = summary_rows({"dpo": {"targets": targets}})
    assert [r[1:] for r in rows] == [
        ["2.40x", ">= 2x", "met"],
        ["1.80x", ">= 2x", "MISSED"],
        ["2.10x", ">= 2x", "met"],
        ["1.2e-07", "<= 0.0001", "met"],
    ]


@pytest.mark.slow
def test_quick_dpo_benchmark_agrees_on_step_one_and_measures_every_side(tmp_path):
    pytest.importorskip("trl", reason="the bench extra (trl) is not installed")
    from benchmarks.suite import bench_dpo

    payload, markdown = bench_dpo(Sizes.for_mode(quick=True), tmp_path, repeats=1)
    assert {"precomputed", "on_the_fly"} <= set(payload["modes"])
    for mode in payload["modes"]:
        step1 = payload["step1_loss"][mode]
        assert abs(step1["ours"] - step1["trl"]) <= 1e-4, step1
        assert step1["ours"] == pytest.approx(math.log(2), abs=1e-4)
    for side, m in payload["median"].items():
        assert m["tokens_per_second"] > 0, side
        assert m["peak_rss_mib"] > 0, side
    assert payload["median"]["ours_precomputed"]["reference_seconds"] > 0
    assert payload["median"]["trl_precomputed"]["reference_seconds"] > 0
    reference = payload["reference_logps"]
    assert reference["pairs"] == payload["inputs"]["train_pairs"]
    assert reference["max_abs_diff"] < 1e-3  # the same tokens scored by the same weights (fp32 sums)
    tokenization = payload["trl_tokenization"]
    assert tokenization["same_prompt_ids"] == tokenization["pairs"]
    assert tokenization["completions_starting_with_ours"] == tokenization["completions"]
    assert markdown.startswith("## 6. Preference training (DPO)")
