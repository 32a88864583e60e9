"""Eval report: the report.json contract, report.md for people, PNG plots."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from core.champion import decide_promotion, promotion_metrics
from core.eval_report import build_report_json, render_markdown, validate_report_json, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _split(loss: float | None, tokens: int, conversations: int = 10) -> dict[str, Any]:
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss is not None else None,
        "loss_tokens": tokens,
        "conversations": conversations,
    }


SPLITS = {"validation": _split(1.2345, 5000, 40), "test": _split(1.3456, 4800, 38)}
BY_KIND = {
    "validation": {"recommendation": _split(1.1, 3000), "title_qa": _split(1.4362, 2000)},
    "test": {"recommendation": _split(1.2, 2800), "title_qa": _split(1.55, 2000)},
}
RANKING = ("hit@1", "hit@5", "hit@10", "ndcg@10", "mrr")


def _system(values: tuple[float, ...], n: int = 40, **extra: Any) -> dict[str, Any]:
    """A system's ranking summary as run_suite gives it: the same numbers on both splits."""
    entry = {**dict(zip(RANKING, values, strict=True)), "n": n, "insufficient": []}
    entry["ci"] = {k: [max(0.0, v - 0.05), min(1.0, v + 0.05)] for k, v in zip(RANKING, values, strict=True)}
    return {**entry, "by_split": {"validation": dict(entry), "test": dict(entry)}, **extra}


RECOMMENDATION = {
    "model": _system((0.125, 0.375, 0.5, 0.3, 0.25), ranks=[1, 2, 3]),
    "base_model": _system((0.0, 0.025, 0.05, 0.02, 0.03)),
    "popularity": _system((0.05, 0.2, 0.3, 0.15, 0.12)),
    "cooccurrence": _system((0.075, 0.25, 0.35, 0.18, 0.14)),
}
COMPARISONS = {
    split: {
        "popularity": {
            k: {"difference": 0.1, "ci": [0.02, 0.18], "beats": True, "insufficient": False} for k in RANKING
        },
        "cooccurrence": {
            k: {"difference": 0.05, "ci": [-0.03, 0.12], "beats": False, "insufficient": False} for k in RANKING
        },
    }
    for split in ("validation", "test")
}
SAMPLES = [
    {
        "conversation_id": "c01",
        "prompt": "<|im_start|>user\nI just watched Up (2009).<|im_end|>\n<|im_start|>assistant\n",
        "generated": "Here are a few picks:\n1. Moonfall (2022)\n```not a fence```",
        "target": "Moonfall (2022)",
        "recommended": ["Moonfall (2022)"],
        "hit@1": True,
    }
]
CURVE = [{"step": s, "loss": 5.0 / (1 + s), "lr": 1e-3 * min(1, s / 3)} for s in range(1, 30)]


def _report(champion: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    candidate = promotion_metrics({"splits": SPLITS, "recommendation": RECOMMENDATION})
    decision = decide_promotion(candidate, champion)
    return build_report_json(
        checkpoint="/artifacts/trained_checkpoint/v2",
        splits=SPLITS,
        recommendation=RECOMMENDATION,
        champion="v1" if champion is not None else None,
        promoted=decision.promoted,
        by_kind=BY_KIND,
        decision=decision,
        champion_metrics=champion,
        samples=len(SAMPLES),
        comparisons=COMPARISONS,
        **kwargs,
    )


def test_report_json_follows_the_contract() -> None:
    report = _report()
    assert validate_report_json(report) == []
    assert report["checkpoint"] == "/artifacts/trained_checkpoint/v2"
    assert report["splits"]["validation"]["loss"] == 1.2345
    assert report["splits"]["test"]["perplexity"] == pytest.approx(math.exp(1.3456))
    assert report["splits"]["validation"]["loss_tokens"] == 5000
    assert {s: (v["hit@1"], v["hit@5"], v["ndcg@10"]) for s, v in report["recommendation"].items()} == {
        "model": (0.125, 0.375, 0.3),
        "base_model": (0.0, 0.025, 0.02),
        "popularity": (0.05, 0.2, 0.15),
        "cooccurrence": (0.075, 0.25, 0.18),
    }
    assert report["recommendation"]["model"]["ci"]["hit@5"] == [0.325, 0.425]
    assert report["recommendation"]["model"]["n"] == 40
    assert report["champion"] is None and report["promoted"] is True
    assert "ranks" not in report["recommendation"]["model"]  # bulky lists stay out of report.json
    assert report["by_kind"]["validation"]["title_qa"]["loss"] == 1.4362
    json.dumps(report, allow_nan=False)


def test_validation_names_each_contract_break() -> None:
    good = _report()
    cases = {
        "checkpoint": lambda r: r.pop("checkpoint"),
        "splits.test: missing": lambda r: r["splits"].pop("test"),
        "splits.validation.perplexity": lambda r: r["splits"]["validation"].update(perplexity=99.0),
        "splits.validation.loss_tokens": lambda r: r["splits"]["validation"].update(loss_tokens=-1),
        "recommendation.popularity: missing": lambda r: r["recommendation"].pop("popularity"),
        "recommendation.model.hit@5": lambda r: r["recommendation"]["model"].update({"hit@5": 1.5}),
        "do not rise with k": lambda r: r["recommendation"]["base_model"].update({"hit@1": 0.5}),
        "recommendation.cooccurrence: missing": lambda r: r["recommendation"].pop("cooccurrence"),
        "recommendation.model.mrr: null but not marked insufficient": lambda r: r["recommendation"]["model"].update(
            {"mrr": None}
        ),
        "although marked insufficient": lambda r: r["recommendation"]["model"].update({"insufficient": ["hit@1"]}),
        "promoted": lambda r: r.update(promoted="yes"),
        "champion: missing": lambda r: r.pop("champion"),
        "strict JSON": lambda r: r.update(extra_value=float("nan")),
    }
    for expected, breaks in cases.items():
        report = copy.deepcopy(good)
        breaks(report)
        problems = validate_report_json(report)
        assert any(expected in p for p in problems), (expected, problems)
    assert validate_report_json([]) == ["report must be a JSON object, got list"]


def test_empty_split_and_too_few_cases_are_valid_as_nulls_marked_insufficient() -> None:
    insufficient = {**dict.fromkeys(RANKING), "n": 3, "insufficient": list(RANKING)}
    report = build_report_json(
        checkpoint="/c",
        splits={"validation": _split(2.0, 10), "test": _split(None, 0, 0)},
        recommendation={s: dict(insufficient) for s in ("model", "base_model", "popularity", "cooccurrence")},
        champion=None,
        promoted=True,
    )
    assert validate_report_json(report) == []
    md = render_markdown(report)
    assert "0.000" not in md  # an insufficient metric never reads as zero
    report["splits"]["test"]["loss_tokens"] = 7
    assert any("null although loss_tokens" in p for p in validate_report_json(report))


def test_build_refuses_missing_systems_and_key_clashes() -> None:
    with pytest.raises(ValueError, match="base_model"):
        build_report_json(
            checkpoint="/c",
            splits=SPLITS,
            recommendation={"model": RECOMMENDATION["model"]},
            champion=None,
            promoted=True,
        )
    with pytest.raises(ValueError, match="would replace"):
        _report(extra={"promoted": False})


def test_write_report_files_plots_and_markdown(tmp_path: Path) -> None:
    champion = {"validation_loss": 1.1, "test_loss": 1.2, "hit@1": 0.2, "hit@5": 0.5}
    report = _report(champion)
    assert report["promoted"] is False  # loss 12% worse, hit@5 0.125 lower
    files = write_report(tmp_path, report, loss_curve=CURVE, samples=SAMPLES)
    names = sorted(p.name for p in files)
    assert names == ["loss_curve.png", "metrics_vs_champion.png", "report.json", "report.md", "samples.json"]
    for png in ("loss_curve.png", "metrics_vs_champion.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert json.loads((tmp_path / "report.json").read_text()) == report
    md = (tmp_path / "report.md").read_text()
    for needle in (
        "1.2345",
        "1.3456",
        "3.44",
        "5,000",
        "0.375",
        "0.025",
        "0.200",
        "title_qa",
        "1.4362",
        "| validation_loss | 1.2345 | 1.1000 | +0.1345 |",
        "| hit@5 (validation ranking) | 0.375 | 0.500 | -0.125 |",
        "0.375 [0.325, 0.425]",
        "| test | popularity | +0.100 [+0.020, +0.180] **beats**",
        "| test | cooccurrence | +0.050 [-0.030, +0.120] no clear difference",
        "not promoted",
        "worse than",
        "`v1`",
        "Moonfall (2022)",
        "![loss_curve](loss_curve.png)",
    ):
        assert needle in md, needle
    # The sample holds ``` itself: the fence around it must be longer.
    assert "````text\nHere are a few picks" in md


def test_first_checkpoint_report_without_curve(tmp_path: Path) -> None:
    report = _report()
    files = write_report(tmp_path, report)
    assert sorted(p.name for p in files) == ["metrics_vs_champion.png", "report.json", "report.md"]
    md = (tmp_path / "report.md").read_text()
    assert "No champion yet" in md and "**Decision: promoted.**" in md


def test_champion_report_can_be_a_full_report(tmp_path: Path) -> None:
    old = _report()
    old["splits"]["validation"] = _split(1.0, 100)
    md = render_markdown(_report(promotion_metrics(old)), champion_report=old)
    assert "| validation_loss | 1.2345 | 1.0000 | +0.2345 |" in md


def test_invalid_report_is_never_written(tmp_path: Path) -> None:
    report = _report()
    del report["recommendation"]["popularity"]
    with pytest.raises(ValueError, match=r"recommendation\.popularity"):
        write_report(tmp_path / "out", report)
    assert not (tmp_path / "out" / "report.json").exists()
