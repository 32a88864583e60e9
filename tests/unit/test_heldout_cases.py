"""Held-out recommendation cases from events, and the candidates every system ranks for them."""

from datetime import UTC, date, datetime

import polars as pl
import pytest

from core.conversation_builder import DEFAULT_SYSTEM_PROMPT
from core.curation import CurationConfig
from core.schemas import INTERACTIONS_SCHEMA, conform
from evaluation.candidates import candidate_sets
from evaluation.heldout_cases import CaseOptions, heldout_cases, member_splits
from evaluation.recommendation import RecoCase
from evaluation.titles import TitleMatcher

CATALOG = pl.DataFrame(
    {
        "title_id": [f"t{i}" for i in range(1, 9)],
        "title": [f"Film {c}" for c in "ABCDEFGH"],
        "year": [2000 + i for i in range(1, 9)],
    }
)
MATCHER = TitleMatcher(CATALOG)


def _members_in(split: str, k: int) -> list[str]:
    """The first k member ids curation puts in `split` (splits are a salted hash of the id)."""
    ids = pl.Series([f"m{i}" for i in range(400)])
    frame = member_splits(ids, CurationConfig())
    return frame.filter(pl.col("split") == split)["member_id"].head(k).to_list()


def _events(rows: list[tuple[str, str, int, str, float | None]]) -> pl.DataFrame:
    """(member, title, day of January, event, value)."""
    frame = pl.DataFrame(
        {
            "member_id": [r[0] for r in rows],
            "title_id": [r[1] for r in rows],
            "ts": [datetime(2026, 1, r[2], 12, tzinfo=UTC) for r in rows],
            "event": [r[3] for r in rows],
            "value": [r[4] for r in rows],
            "day": [date(2026, 1, r[2]) for r in rows],
        }
    )
    return conform(frame, INTERACTIONS_SCHEMA)


def test_the_latest_positive_watch_is_the_target_across_days() -> None:
    (member,) = _members_in("test", 1)
    (trainee,) = _members_in("train", 1)
    events = _events(
        [
            (member, "t1", 1, "play", None),
            (member, "t2", 2, "play", None),
            (member, "t3", 3, "play", None),
            (member, "t4", 4, "play", None),
            (member, "t4", 4, "rate", 1.0),  # the newest watch was rated low: not a target, not history
            (member, "t5", 3, "search", None),
            (trainee, "t1", 1, "play", None),  # a training member never becomes a case
            (trainee, "t2", 2, "play", None),
        ]
    )
    cases, skipped = heldout_cases(events, MATCHER, CaseOptions(history_size=1))
    assert skipped == []
    (case,) = cases
    assert case.conversation_id == f"member:{member}" and case.split == "test"
    assert case.target_title_id == "t3" and case.target == "Film C (2003)"
    assert case.history_title_ids == ("t1", "t2")
    # The prompt names the last history_size titles, in the builder's request, after the system prompt.
    assert case.prompt_messages == (
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "I just watched Film B (2002). What should I watch next?"},
    )


def test_members_with_too_little_history_are_counted_not_dropped() -> None:
    one, none = _members_in("validation", 2)
    events = _events([(one, "t1", 1, "play", None), (none, "t2", 1, "rate", 0.5), (none, "t9", 1, "play", None)])
    cases, skipped = heldout_cases(events, MATCHER)
    assert cases == []
    assert sorted((s.key, s.reason) for s in skipped) == sorted(
        [(f"member:{one}", "too_little_history"), (f"member:{none}", "too_little_history")]
    )


def _case(cid: str, target: str, history: tuple[str, ...] = ()) -> RecoCase:
    return RecoCase(cid, "test", (), target, target, history)


def test_a_small_catalog_is_ranked_whole_without_the_history() -> None:
    ids = [f"t{i}" for i in range(1, 9)]
    (cands,) = candidate_sets([_case("c1", "t3", ("t1", "t2"))], ids, size=100)
    assert sorted(cands) == ["t3", "t4", "t5", "t6", "t7", "t8"]


def test_sampled_candidates_are_the_same_for_every_run_and_hold_the_target() -> None:
    ids = [f"t{i}" for i in range(1000)]
    cases = [_case(f"c{i}", f"t{i}", (f"t{i + 1}",)) for i in range(50)]
    first = candidate_sets(cases, ids, size=20, seed=3)
    assert first == candidate_sets(cases, ids, size=20, seed=3)
    assert first != candidate_sets(cases, ids, size=20, seed=4)
    for case, cands in zip(cases, first, strict=True):
        assert len(cands) == len(set(cands)) == 20 and case.target_title_id in cands
        assert case.history_title_ids[0] not in cands
    # The target's position is not fixed, so ties cannot favour it.
    assert len({cands.index(c.target_title_id) for c, cands in zip(cases, first, strict=True)}) > 5


def test_popularity_drawn_negatives_follow_the_weights() -> None:
    ids = [f"t{i}" for i in range(200)]
    weights = {t: (1000.0 if i < 10 else 0.001) for i, t in enumerate(ids)}
    cases = [_case(f"c{i}", "t199") for i in range(40)]
    drawn = [t for cands in candidate_sets(cases, ids, size=6, weights=weights) for t in cands if t != "t199"]
    assert sum(int(t[1:]) < 10 for t in drawn) / len(drawn) > 0.95


def test_a_target_outside_the_catalog_is_refused() -> None:
    with pytest.raises(ValueError, match="not in the catalog"):
        candidate_sets([_case("c1", "zz")], ["t1", "t2"], size=10)
