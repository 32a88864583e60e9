"""Champion registry: append-only records, newest valid wins, promotion by margins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.champion import (
    ChampionChanged,
    ChampionRecord,
    PromotionConflict,
    current_champion,
    decide_promotion,
    new_record,
    promote,
    promote_if_better,
    promotion_metrics,
    read_champions,
)

CHAMP = {"validation_loss": 2.0, "hit@1": 0.10, "hit@5": 0.30}


def _record(
    version: str, loss: float = 2.0, hit5: float = 0.3, at: str | None = None, previous: str | None = None
) -> ChampionRecord:
    rec = new_record(
        checkpoint=f"/artifacts/trained_checkpoint/{version}",
        eval_version=version,
        metrics={"validation_loss": loss, "hit@5": hit5},
        previous=previous,
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
        promote(registry, _record("v2", loss=2.1, previous="v1"))
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
    promote(registry, _record("v2", loss=2.03, at="2026-01-02T00:00:00+00:00", previous="v1"))
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
    # No temp file left behind: the record and its claim (the commit point of the first promotion) only.
    assert sorted(str(p.relative_to(registry)) for p in registry.rglob("*") if p.is_file()) == [
        ".successors/_first",
        "v1.json",
    ]
    with pytest.raises(ValueError, match="file name"):
        promote(registry, ChampionRecord("../escape", "/ckpt", "e1", {}))
    with pytest.raises(ValueError, match="not a champion version"):  # the claim is named after it
        promote(registry, ChampionRecord("v2", "/ckpt", "e2", {}, previous="../../escape"))
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
    promote(registry, _record("a-new", at="2026-02-01T00:00:00+00:00", previous="b-old"))
    assert current_champion(registry).version == "a-new"  # type: ignore[union-attr]
    records, _ = read_champions(registry)
    assert [r.version for r in records] == ["b-old", "a-new"]


def test_promotion_metrics_come_from_the_report_contract() -> None:
    # The gate reads the validation split's ranking metrics; the top level (test) is not model selection's.
    validation = {"hit@1": 0.2, "hit@5": 0.4, "n": 50, "insufficient": []}
    test = {"hit@1": 0.9, "hit@5": 0.9, "n": 60, "insufficient": []}
    report = {
        "splits": {"validation": {"loss": 1.5}, "test": {"loss": 1.6}},
        "recommendation": {"model": {**test, "by_split": {"validation": validation, "test": test}}},
        "eval_set": "abc",
    }
    metrics = promotion_metrics(report)
    assert metrics == {
        "validation_loss": 1.5,
        "test_loss": 1.6,
        "hit@1": 0.2,
        "hit@5": 0.4,
        "hit@5_insufficient": False,
        "hit_n": 50,
        "eval_set": "abc",
    }
    other = {**metrics, "eval_set": "xyz"}
    decision = decide_promotion(metrics, other)
    assert decision.promoted and any("different held-out data" in r for r in decision.reasons)


def test_an_insufficient_hit_rate_is_not_decided_on() -> None:
    """Too few validation cases: hit@5 is None and marked insufficient; the gate decides on the loss alone."""
    champion = {"validation_loss": 1.5, "hit@5": 0.6, "hit@5_insufficient": False, "hit_n": 200}
    candidate = {"validation_loss": 1.49, "hit@5": None, "hit@5_insufficient": True, "hit_n": 4}
    decision = decide_promotion(candidate, champion)
    assert decision.promoted
    assert any("hit@5 not compared: too few held-out validation cases for the candidate" in r for r in decision.reasons)
    # Missing (not insufficient) is still a refusal: the candidate was not measured at all.
    assert not decide_promotion({**candidate, "hit@5_insufficient": False}, champion).promoted
    # An insufficient champion cannot block a candidate either.
    flipped = decide_promotion({**champion, "validation_loss": 1.49}, {**candidate, "validation_loss": 1.5})
    assert flipped.promoted and any("for the champion" in r for r in flipped.reasons)


# --------------------------------------------------------------------------------------
# Compare-and-swap promotion: the champion a candidate beat must still be the champion when it is recorded.

C0 = {"validation_loss": 2.0, "hit@5": 0.30}
WORSE = {"validation_loss": 1.95, "hit@5": 0.30}  # within the margins of C0, but 10% worse than BETTER
BETTER = {"validation_loss": 1.70, "hit@5": 0.40}


def _recorded_metrics(record: ChampionRecord) -> dict:
    """What eval_report re-measures for a champion; the tests reuse the numbers it was promoted with."""
    return dict(record.metrics)


def _gate(registry: Path, name: str, metrics: dict, champion: ChampionRecord | None, **kwargs):
    return promote_if_better(
        registry,
        candidate=metrics,
        checkpoint=f"/artifacts/trained_checkpoint/{name}",
        eval_version=name,
        champion=champion,
        champion_metrics=champion.metrics if champion else None,
        measure=_recorded_metrics,
        **kwargs,
    )


def _race_worker(registry: str, name: str, metrics: dict, barrier, out: str) -> None:
    """One eval_report process: read the champion, wait for the other, then both promote against the same one."""
    champion = current_champion(Path(registry))
    barrier.wait(timeout=120)
    outcome = _gate(Path(registry), name, metrics, champion)
    Path(out).write_text(
        json.dumps(
            {
                "compared_with": outcome.champion.version if outcome.champion else None,
                "promoted": outcome.record is not None,
                "superseded_by": list(outcome.superseded_by),
            }
        )
    )


def _assert_single_chain(registry: Path, start: str, end: str) -> list[ChampionRecord]:
    records, problems = read_champions(registry)
    assert problems == []
    previous = [r.previous for r in records]
    assert len(previous) == len(set(previous)), f"two records replaced the same champion: {previous}"
    by_previous = {r.previous: r for r in records}
    chain, version = [start], start
    while version in by_previous:
        version = by_previous[version].version
        chain.append(version)
    assert chain[-1] == end and len(chain) == len(records), chain
    assert current_champion(registry).version == end  # type: ignore[union-attr]
    return records


@pytest.mark.parametrize("round_", range(3))
def test_two_processes_racing_to_promote_leave_one_chain_with_the_better_on_top(tmp_path: Path, round_: int) -> None:
    import multiprocessing

    registry = tmp_path / "champion"
    promote(registry, _record("c0", loss=C0["validation_loss"], hit5=C0["hit@5"]))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = {
        name: ctx.Process(target=_race_worker, args=(str(registry), name, metrics, barrier, str(tmp_path / name)))
        for name, metrics in (("a-worse", WORSE), ("b-better", BETTER))
    }
    for proc in procs.values():
        proc.start()
    for proc in procs.values():
        proc.join(timeout=120)
        assert proc.exitcode == 0
    outcome = {name: json.loads((tmp_path / name).read_text()) for name in procs}
    assert outcome["b-better"]["promoted"]
    records = _assert_single_chain(registry, "c0", "b-better")
    if outcome["a-worse"]["promoted"]:  # A won the race: B then had to beat A, and names it as previous
        assert [(r.version, r.previous) for r in records] == [("c0", None), ("a-worse", "c0"), ("b-better", "a-worse")]
        assert outcome["b-better"]["compared_with"] == "a-worse" and outcome["b-better"]["superseded_by"] == ["a-worse"]
    else:  # B won: A was compared again, against B, and is not within B's margin
        assert [(r.version, r.previous) for r in records] == [("c0", None), ("b-better", "c0")]
        assert outcome["a-worse"]["compared_with"] == "b-better"


def test_a_stale_candidate_is_compared_again_with_the_new_champion(tmp_path: Path) -> None:
    registry = tmp_path / "champion"
    c0 = current_champion(promote(registry, _record("c0", loss=2.0, hit5=0.3)).parent)
    assert _gate(registry, "b-better", BETTER, c0).record is not None
    late = _gate(registry, "a-worse", WORSE, c0)  # decided against c0, which is no longer champion
    assert late.record is None and late.champion.version == "b-better"  # type: ignore[union-attr]
    assert late.superseded_by == ("b-better",) and not late.decision.promoted
    assert any("1.9500 is +14.7% vs champion 1.7000" in r for r in late.decision.reasons)
    _assert_single_chain(registry, "c0", "b-better")


def test_promote_refuses_a_record_whose_previous_is_not_the_champion(tmp_path: Path) -> None:
    registry = tmp_path / "champion"
    promote(registry, _record("c0"))
    promote(registry, _record("c1", previous="c0"))
    with pytest.raises(ChampionChanged, match=r"c1") as changed:
        promote(registry, _record("c2", previous="c0"))
    assert changed.value.current.version == "c1"  # type: ignore[union-attr]
    with pytest.raises(ChampionChanged):
        promote(registry, _record("c3"))  # "no champion yet" is stale too
    assert [r.version for r in read_champions(registry)[0]] == ["c0", "c1"]


def test_promotion_gives_up_after_bounded_attempts_when_the_champion_keeps_changing(tmp_path: Path) -> None:
    registry = tmp_path / "champion"
    c0 = current_champion(promote(registry, _record("c0", loss=2.0, hit5=0.3)).parent)
    promote(registry, _record("other-start", loss=1.9, hit5=0.3, previous="c0"))  # while b-better was evaluated
    counter = iter(range(100))
    measured: list[str] = []

    def measure_while_others_promote(record: ChampionRecord) -> dict:
        measured.append(record.version)
        promote(registry, _record(f"other{next(counter)}", loss=1.9, hit5=0.3, previous=record.version))
        return dict(record.metrics)

    with pytest.raises(PromotionConflict, match=r"champion changed 3 times while promoting b-better"):
        promote_if_better(
            registry,
            candidate=BETTER,
            checkpoint="/ckpt",
            eval_version="b-better",
            champion=c0,
            champion_metrics=dict(C0),
            measure=measure_while_others_promote,
            max_attempts=3,
        )
    assert all(r.version != "b-better" for r in read_champions(registry)[0])
    assert measured == ["other-start", "other0"]  # no model is measured for an attempt that will not be made


def test_a_promotion_interrupted_after_its_commit_point_is_still_the_champion(tmp_path: Path) -> None:
    """The successor claim is the commit: a crash before the <version>.json name appears loses nothing."""
    registry = tmp_path / "champion"
    promote(registry, _record("c0"))
    path = promote(registry, _record("c1", previous="c0"))
    path.unlink()  # as if the process died between the claim and the readable name
    assert current_champion(registry).version == "c1"  # type: ignore[union-attr]
    with pytest.raises(ChampionChanged):
        promote(registry, _record("c2", previous="c0"))
    promote(registry, _record("c2", previous="c1"))
    assert current_champion(registry).version == "c2"  # type: ignore[union-attr]


def test_a_registry_written_before_compare_and_swap_keeps_its_champion(tmp_path: Path) -> None:
    """Records without successor claims (older registries): newest by promotion time, as before."""
    registry = tmp_path / "champion"
    registry.mkdir()
    for version, at in (("old", "2026-01-01T00:00:00+00:00"), ("new", "2026-02-01T00:00:00+00:00")):
        (registry / f"{version}.json").write_text(json.dumps(_record(version, at=at).to_json()))
    assert current_champion(registry).version == "new"  # type: ignore[union-attr]
    promote(registry, _record("next", previous="new"))
    assert current_champion(registry).version == "next"  # type: ignore[union-attr]
