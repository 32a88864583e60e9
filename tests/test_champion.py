"""Champion registry: append-only records, newest valid wins, promotion by margins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.champion import (
    ChampionRecord,
    current_champion,
    decide_promotion,
    new_record,
    promote,
    promotion_metrics,
    read_champions,
)

CHAMP = {"validation_loss": 2.0, "hit@1": 0.10, "hit@5": 0.30}


def _record(version: str, loss: float = 2.0, hit5: float = 0.3, at: str | None = None) -> ChampionRecord:
    rec = new_record(
        checkpoint=f"/artifacts/trained_checkpoint/{version}",
        eval_version=version,
        metrics={"validation_loss": loss, "hit@5": hit5},
    )
    if at is not None:
        rec = ChampionRecord(**{**rec.to_json(), "reasons": (), "promoted_at": at})
    return rec


def test_first_checkpoint_is_promoted_and_becomes_champion(tmp_path: Path) -> None:
    assert current_champion(tmp_path / "champion") is None
    decision = decide_promotion({"validation_loss": 3.1, "hit@5": 0.0}, None)
    assert decision.promoted and "first" in decision.reasons[0]
    path = promote(tmp_path / "champion", _record("v1", loss=3.1, hit5=0.0))
    assert path == tmp_path / "champion" / "v1.json"
    champ = current_champion(tmp_path / "champion")
    assert champ is not None and champ.version == "v1" and champ.metrics["validation_loss"] == 3.1
    assert champ.checkpoint == "/artifacts/trained_checkpoint/v1"


def test_loss_regression_beyond_margin_is_blocked_and_champion_unchanged(tmp_path: Path) -> None:
    registry = tmp_path / "champion"
    promote(registry, _record("v1"))
    decision = decide_promotion({"validation_loss": 2.1, "hit@5": 0.35}, CHAMP, loss_margin=0.02)
    assert not decision.promoted
    assert any("validation_loss" in r and "worse than" in r for r in decision.reasons)
    assert decision.deltas["validation_loss"] == pytest.approx(0.1)
    assert decision.deltas["validation_loss_relative"] == pytest.approx(0.05)
    if decision.promoted:  # the asset promotes only on a positive decision
        promote(registry, _record("v2", loss=2.1))
    assert current_champion(registry).version == "v1"  # type: ignore[union-attr]


def test_hit_rate_regression_beyond_margin_is_blocked() -> None:
    decision = decide_promotion({"validation_loss": 1.9, "hit@5": 0.25}, CHAMP, hit_margin=0.02)
    assert not decision.promoted
    assert any("hit@5" in r and "below" in r for r in decision.reasons)
    assert decision.deltas["hit@5"] == pytest.approx(-0.05)


def test_within_margins_is_promoted(tmp_path: Path) -> None:
    registry = tmp_path / "champion"
    promote(registry, _record("v1", at="2026-01-01T00:00:00+00:00"))
    decision = decide_promotion(
        {"validation_loss": 2.03, "hit@1": 0.12, "hit@5": 0.285}, CHAMP, loss_margin=0.02, hit_margin=0.02
    )
    assert decision.promoted, decision.reasons
    assert decision.deltas["hit@1"] == pytest.approx(0.02)
    promote(registry, _record("v2", loss=2.03, at="2026-01-02T00:00:00+00:00"))
    assert current_champion(registry).version == "v2"  # type: ignore[union-attr]
    # Exactly at the margin still counts as "not worse by more than the margin".
    assert decide_promotion({"validation_loss": 2.04, "hit@5": 0.28}, CHAMP).promoted


def test_candidate_without_validation_loss_is_never_promoted() -> None:
    assert not decide_promotion({"validation_loss": None, "hit@5": 0.9}, None).promoted
    assert not decide_promotion({"validation_loss": float("nan"), "hit@5": 0.9}, CHAMP).promoted
    partial = decide_promotion({"validation_loss": 1.0, "hit@5": 0.1}, {"validation_loss": 1.0})
    assert partial.promoted and any("not compared" in r for r in partial.reasons)


def test_records_are_immutable(tmp_path: Path) -> None:
    registry = tmp_path / "champion"
    path = promote(registry, _record("v1", loss=2.0))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="immutable"):
        promote(registry, _record("v1", loss=1.0))
    assert path.read_bytes() == before
    assert sorted(p.name for p in registry.iterdir()) == ["v1.json"]  # no temp file left behind
    with pytest.raises(ValueError, match="file name"):
        promote(registry, ChampionRecord("../escape", "/ckpt", "e1", {}))
    # new_record never produces such a name: an unusable eval version gets a fresh sortable id.
    assert new_record(checkpoint="/ckpt", eval_version="a/b", metrics={}).version != "a/b"


def test_corrupt_and_foreign_records_are_skipped_and_reported(tmp_path: Path) -> None:
    registry = tmp_path / "champion"
    promote(registry, _record("v1", at="2026-01-01T00:00:00+00:00"))
    (registry / "v9.json").write_text("{ not json")
    (registry / "v8.json").write_text(json.dumps({"version": "v8"}))
    wrong = _record("other", at="2027-01-01T00:00:00+00:00").to_json()
    (registry / "v7.json").write_text(json.dumps(wrong))
    (registry / ".tmp-v6.json-abc").write_text("{}")
    (registry / "notes.txt").write_text("hello")
    champ = current_champion(registry)
    assert champ is not None and champ.version == "v1"
    records, problems = read_champions(registry)
    assert [r.version for r in records] == ["v1"]
    assert sorted(Path(p.path).name for p in problems) == ["v7.json", "v8.json", "v9.json"]
    assert any("lacks" in p.detail for p in problems)


def test_newest_by_promotion_time_not_by_name(tmp_path: Path) -> None:
    registry = tmp_path / "champion"
    promote(registry, _record("b-old", at="2026-01-01T00:00:00+00:00"))
    promote(registry, _record("a-new", at="2026-02-01T00:00:00+00:00"))
    assert current_champion(registry).version == "a-new"  # type: ignore[union-attr]
    records, _ = read_champions(registry)
    assert [r.version for r in records] == ["b-old", "a-new"]


def test_promotion_metrics_come_from_the_report_contract() -> None:
    report = {
        "splits": {"validation": {"loss": 1.5}, "test": {"loss": 1.6}},
        "recommendation": {"model": {"hit@1": 0.2, "hit@5": 0.4, "n": 50}},
        "eval_set": "abc",
    }
    metrics = promotion_metrics(report)
    assert metrics == {
        "validation_loss": 1.5,
        "test_loss": 1.6,
        "hit@1": 0.2,
        "hit@5": 0.4,
        "hit_n": 50,
        "eval_set": "abc",
    }
    other = {**metrics, "eval_set": "xyz"}
    decision = decide_promotion(metrics, other)
    assert decision.promoted and any("different held-out data" in r for r in decision.reasons)
