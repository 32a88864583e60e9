"""Recommendation cases from held-out conversations, hit@k, and the popularity baseline."""

from __future__ import annotations

import polars as pl
import pytest
from support.evaluation_fixtures import CONVERSATIONS, MATCHER, reco_messages

from evaluation import (
    RecoCase,
    evaluate_popularity,
    hit_at_k,
    popularity_baseline,
    popularity_ranking,
    recommendation_prompts,
)


def test_hit_at_k_maths() -> None:
    recs = [["a", "b", "c"], ["x", "y"], [], ["b", "a"]]
    targets = ["b", "y", "z", "a"]
    assert hit_at_k(recs, targets, 1) == 0.0
    assert hit_at_k(recs, targets, 2) == 0.75
    assert hit_at_k(recs, targets, 5) == 0.75
    assert hit_at_k([], [], 5) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        hit_at_k(recs, targets, 0)
    with pytest.raises(ValueError, match="targets"):
        hit_at_k(recs, targets[:2], 1)


def test_popularity_baseline_excludes_history_and_counts_watch_events_only() -> None:
    events = pl.DataFrame(
        {
            "title_id": ["A", "A", "A", "B", "B", "C", "D", "D", "D", "D"],
            "event": ["play", "complete", "rate", "play", "play", "play", "search", "search", "search", "search"],
        }
    )
    ranking = popularity_ranking(events)
    assert ranking == ["A", "B", "C"]  # searches are not watches
    assert popularity_ranking({"x": 1, "y": 5, "w": 5}) == ["w", "y", "x"]  # ties by id
    assert popularity_baseline(ranking, 2) == ["A", "B"]
    assert popularity_baseline(ranking, 2, exclude=["A"]) == ["B", "C"]
    cases = [
        RecoCase("1", "validation", (), "B", "B", ("A",)),  # A excluded -> B first
        RecoCase("2", "test", (), "C", "C", ()),
    ]
    out = evaluate_popularity(cases, ranking)
    assert out["hit@1"] == 0.5 and out["hit@5"] == 1.0 and out["n"] == 2
    assert out["by_split"]["validation"]["hit@1"] == 1.0 and out["by_split"]["test"]["hit@1"] == 0.0


def test_recommendation_prompts_take_target_history_and_prompt_from_the_first_exchange() -> None:
    broken = CONVERSATIONS.head(1).with_columns(
        pl.lit("c99").alias("conversation_id"),
        pl.Series("messages", [reco_messages("Up (2009)", "1. Nothing We Know (1990)")]),
    )
    cases, skipped = recommendation_prompts(pl.concat([CONVERSATIONS, broken]), MATCHER)
    assert [c.conversation_id for c in cases] == ["c01", "c02", "c05"]  # held-out recommendations only
    first = cases[0]
    assert first.target_title_id == "T2" and first.target == "The Silent Harbor (2010)"
    assert first.history_title_ids == ("T4", "T5")
    assert [m["role"] for m in first.prompt_messages] == ["system", "user"]
    assert [m["role"] for m in cases[1].prompt_messages] == ["user"]
    assert cases[2].target_title_id == "T9" and cases[2].history_title_ids == ("T3", "T8")
    assert [(s.key, s.reason) for s in skipped] == [("c99", "no_target_title")]
