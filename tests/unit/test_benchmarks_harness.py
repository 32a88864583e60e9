"""Harness logic of benchmarks/ (no timing, no trl): medians, ratios, run order, mask comparison, step summaries,
when kept inputs are reused."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest

from benchmarks.harness import (
    alternation_order,
    labels_to_mask,
    markdown_table,
    mask_mismatches,
    median,
    medians,
    ratio,
    run_alternating,
    write_result,
)
from benchmarks.suite import Sizes, model_flops_per_second, run_mfu, summary_rows
from benchmarks.worker import summarize_steps
from core.fingerprints import sources_fingerprint


def test_median_of_odd_and_even_runs():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_median_refuses_no_runs():
    with pytest.raises(ValueError, match="no runs"):
        median([])


def test_ratio_is_ours_over_theirs():
    assert ratio(300.0, 100.0) == 3.0
    assert ratio(50.0, 100.0) == 0.5
    assert ratio(1.0, 0.0) == math.inf
    assert math.isnan(ratio(0.0, 0.0))


def test_sides_alternate_and_reverse_every_other_round():
    assert alternation_order(["a", "b"], 3) == ["a", "b", "b", "a", "a", "b"]
    assert alternation_order(["a", "b", "c"], 2) == ["a", "b", "c", "c", "b", "a"]
    with pytest.raises(ValueError):
        alternation_order(["a"], 0)


def test_run_alternating_calls_each_side_repeats_times_with_its_run_index():
    calls = []

    def side(name):
        def call(index):
            calls.append((name, index))
            return {"value": index}

        return call

    runs = run_alternating({"ours": side("ours"), "trl": side("trl")}, 3, log=lambda _: None)
    assert calls == [("ours", 0), ("trl", 0), ("trl", 1), ("ours", 1), ("ours", 2), ("trl", 2)]
    assert [r["value"] for r in runs["ours"]] == [0, 1, 2]
    assert medians(runs["trl"], ["value"]) == {"value": 1.0}


def test_labels_to_mask():
    assert labels_to_mask([-100, -100, 5, 7, -100, 9]) == [0, 0, 1, 1, 0, 1]


def test_identical_masks_pass():
    rows = {"c1": ([1, 2, 3], [0, 1, 1]), "c2": ([4, 5], [0, 1])}
    compared, problems = mask_mismatches(rows, dict(rows))
    assert compared == 2
    assert problems == []


def test_mask_and_id_differences_are_named():
    ours = {"c1": ([1, 2, 3], [0, 1, 1]), "c2": ([4, 5], [0, 1]), "c3": ([6], [1])}
    theirs = {"c1": ([1, 2, 3], [0, 0, 1]), "c2": ([4, 6], [0, 1]), "c4": ([6], [1])}
    compared, problems = mask_mismatches(ours, theirs)
    assert compared == 2
    text = "\n".join(problems)
    assert "c1: loss masks differ first at token 1" in text
    assert "c2: token ids differ" in text
    assert "only in ours" in text and "c3" in text
    assert "only in TRL's" in text and "c4" in text


def test_mask_values_compare_as_booleans():
    compared, problems = mask_mismatches({"c": ([1, 2], [0, 1])}, {"c": ([1, 2], [False, True])})
    assert (compared, problems) == (1, [])


def _steps(times, tokens, losses):
    return {
        "parameters": 10,
        "flop_parameters": {"body": 8, "head": 2, "layers": 1, "attention_width": 4},
        "attn_implementation": "packed_sdpa",
        "compiled": True,
        "started": 7.5,
        "steps": [
            {"t": t, "tokens": n, "loss_tokens": n // 2, "slots": 100, "loss": loss}
            for t, n, loss in zip(times, tokens, losses, strict=True)
        ],
    }


def test_summarize_steps_excludes_warmup_steps_from_throughput():
    raw = _steps([10.0, 11.0, 13.0, 15.0], [100, 100, 80, 60], [5.0, 4.0, 3.0, 2.0])
    out = summarize_steps(raw, warmup_steps=1)
    # window = steps 2..4: 240 tokens over 15 - 10 = 5 s
    assert out["tokens_per_second"] == pytest.approx(48.0)
    assert out["loss_tokens_per_second"] == pytest.approx((50 + 40 + 30) / 5)
    assert out["non_pad_fraction"] == pytest.approx(240 / 300)
    assert out["final_loss"] == pytest.approx((5 + 4 + 3 + 2) / 4)
    assert out["first_loss"] == 5.0
    assert out["tokens_total"] == 340
    assert out["warmup_seconds"] == pytest.approx(10.0 - 7.5)  # start to the end of the warm-up step


def test_model_flops_credit_attention_within_conversations_and_the_head_on_labelled_tokens_only():
    params = {"body": 1000, "head": 300, "layers": 2, "attention_width": 8}
    median = {"tokens_per_second": 10.0, "loss_tokens_per_second": 4.0}
    # per token 6 x 1000 + 12 x 2 x 8 x 5 keys; per labelled token 6 x 300
    assert model_flops_per_second(median, params, mean_context=5.0) == pytest.approx(10 * (6000 + 960) + 4 * 1800)


def test_each_run_is_judged_against_the_peak_of_its_own_process():
    params = {"body": 100, "head": 0, "layers": 1, "attention_width": 0}
    # The second run met a machine twice as busy: half the throughput, half the peak, the same MFU.
    runs = [
        {"tokens_per_second": 10.0, "loss_tokens_per_second": 0.0, "peak_flops": 12_000.0},
        {"tokens_per_second": 5.0, "loss_tokens_per_second": 0.0, "peak_flops": 6_000.0},
        {"tokens_per_second": 10.0, "loss_tokens_per_second": 0.0, "peak_flops": 10_000.0},
    ]
    out = run_mfu(runs, params=100, flop_params=params, mean_context=0.0)
    assert out["mfu"] == pytest.approx(0.5) and out["mfu_6n"] == pytest.approx(0.5)
    assert out["peak_flops"] == 10_000.0


def test_summarize_steps_needs_more_steps_than_warmup():
    with pytest.raises(ValueError, match="warm-up"):
        summarize_steps(_steps([1.0, 2.0], [1, 1], [1.0, 1.0]), warmup_steps=2)


def test_quick_sizes_are_smaller_but_keep_three_repeats():
    full, quick = Sizes.for_mode(False), Sizes.for_mode(True)
    assert quick.repeats == full.repeats == 3
    assert quick.prep_conversations < full.prep_conversations
    assert quick.scale_large < full.scale_large
    assert quick.train_steps < full.train_steps
    assert full.scale_large == 1_000_000 and full.prep_conversations == 20_000


def test_summary_rows_report_every_target():
    results = {
        "data_prep": {"ratio_conversations_per_second": 3.2, "target": "met"},
        "training": {
            "parameters": 1_900_000,
            "targets": {
                "vs_trl_padded": {"value": 2.0, "status": "MISSED"},
                "vs_trl_packed": {"value": 1.5, "status": "met"},
                "mfu": {"value": 0.3, "status": "MISSED"},
            },
            "width_sweep": [
                {"mfu": 0.3, "parameters": 1_900_000, "flop_parameters": {"hidden": 192}},
                {"mfu": 0.65, "parameters": 6_900_000, "flop_parameters": {"hidden": 384}},
            ],
        },
        "training_gpu": {
            "parameters": 106_000_000,
            "targets": {
                "vs_trl_padded": {"value": 3.0, "status": "met"},
                "vs_trl_packed": {"value": 5.0, "status": "met"},
                "mfu": {"value": 0.15, "status": "MISSED"},
            },
        },
        "scale": {
            "targets": {"minutes": {"value": 9.0, "status": "met"}, "peak_rss_gib": {"value": 1.2, "status": "met"}}
        },
        "multiprocess": {"ratio_2_vs_1": 0.8},
    }
    rows = summary_rows(results)
    assert len(rows) == 11
    assert rows[0][1:] == ["3.20x", ">= 3x", "met"]
    assert rows[1][1:] == ["2.00x", ">= 2.5x", "MISSED"]
    assert rows[3] == ["2. CPU training: MFU (ours, 1.9M preset)", "30.0%", ">= 60%", "MISSED"]
    assert rows[4] == ["2. CPU training: MFU (ours, hidden 384, 6.9M)", "65.0%", ">= 60%", "met"]
    assert rows[7] == ["2. GPU training: MFU (ours)", "15.0%", "reported", "-"]  # the 60% target is for CPU


def test_results_are_written_as_json_and_markdown(tmp_path):
    md = markdown_table(["side", "value"], [["ours", 1234.5], ["trl", 0.25]])
    assert md.splitlines()[0] == "| side | value |"
    assert "| ours | 1,234 |" in md or "| ours | 1,235 |" in md
    write_result(tmp_path, "demo", {"x": 1.5}, md)
    assert json.loads((tmp_path / "demo.json").read_text()) == {"x": 1.5}
    assert (tmp_path / "demo.md").read_text().startswith("| side | value |")


def test_the_platform_never_imports_trl():
    """trl is a benchmark-only extra: no platform package may import it (CI does not even install it)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    pattern = re.compile(r"^\s*(import trl\b|from trl\b)", re.MULTILINE)
    offenders = [
        str(path.relative_to(root))
        for package in ("core", "training", "assets", "resources", "dagster_project")
        for path in sorted((root / package).rglob("*.py"))
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_a_rewritten_results_page_keeps_the_notes_kept_by_hand(tmp_path):
    from benchmarks.run import NOTES_HEADING, write_report

    (tmp_path / "RESULTS.md").write_text(f"# old generated part\n\n{NOTES_HEADING}\n\n- run 3: 4.2x, by hand\n")
    write_report(tmp_path, Sizes.for_mode(quick=True))
    page = (tmp_path / "RESULTS.md").read_text()
    assert "old generated part" not in page
    assert page.endswith(f"{NOTES_HEADING}\n\n- run 3: 4.2x, by hand\n")


def test_kept_inputs_are_reused_only_for_the_same_sizes_and_unchanged_code(tmp_path: Path, monkeypatch) -> None:
    """Runs 3 and 4 of the DPO benchmark measured pairs kept from before the pair tokenization changed: inputs are
    now rebuilt when the code that makes them changed, not only when the size did."""
    import benchmarks.workload as workload

    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "tokenize.py").write_text("END_OF_TURN_IN_LOSS = True\n")
    monkeypatch.setattr(workload, "INPUT_SOURCES", ("pkg",))
    monkeypatch.setattr(workload, "sources_fingerprint", functools.partial(sources_fingerprint, root=code))
    inputs = tmp_path / "inputs"
    inputs.mkdir()

    assert workload.kept_inputs(inputs, pairs=160) is None  # nothing built yet
    info = workload._write_info(inputs, {"pairs": 160, "train_pairs": 146})
    assert workload.kept_inputs(inputs, pairs=160) == info
    assert workload.kept_inputs(inputs, pairs=40) is None  # another size

    (code / "pkg" / "tokenize.py").write_text("END_OF_TURN_IN_LOSS = False\n")
    assert workload.kept_inputs(inputs, pairs=160) is None  # the code changed

    (inputs / "inputs.json").write_text('{"pairs": 16')  # cut short
    assert workload.kept_inputs(inputs, pairs=160) is None


def test_a_result_re_run_on_another_machine_names_its_machine(tmp_path: Path) -> None:
    """`--only NAME` into a results folder keeps the page's machine.json; the re-run result's section must say
    which machine measured it, or its figures read as the page machine's."""
    from benchmarks.run import write_report

    def machine(cpu: str) -> dict:
        return {
            "cpu_model": cpu,
            "usable_cpus": 2,
            "ram_gib": 23.5,
            "versions": {"torch": "2.13.0+cpu"},
            "load_average_at_start": [1.0, 1.0, 1.0],
            "load_average_at_end": [1.0, 1.0, 1.0],
        }

    (tmp_path / "machine.json").write_text(json.dumps(machine("Intel Xeon")))
    write_result(tmp_path, "multiprocess", {"ratio_2_vs_1": 1.05}, "## 4. kept section\n")
    rerun_payload = {"ducklake_over_file_wall": 1.1, "two_writers_speedup": 1.5, "machine": machine("AMD EPYC")}
    write_result(tmp_path, "warehouse", rerun_payload, "## 5. re-run section\n")
    write_report(tmp_path, Sizes.for_mode(quick=False))
    page = (tmp_path / "RESULTS.md").read_text()
    assert "- CPU machine: Intel Xeon" in page
    rerun = page[page.index("## 5. re-run section") :]
    kept = page[page.index("## 4. kept section") : page.index("## 5. re-run section")]
    assert "Measured on its own run, not on the machine above: AMD EPYC" in rerun
    assert "AMD EPYC" not in kept
