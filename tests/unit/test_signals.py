"""Ratings and watched fractions as signals: low ratings and abandons are negative, kept, and never watches."""

from datetime import UTC, date, datetime

import polars as pl
import pytest

from core.conversation_builder import BuilderConfig, build_conversations
from core.schemas import INTERACTIONS_SCHEMA, conform
from core.signals import SignalThresholds, drop_negative_watches, member_title_signals

DAY = date(2026, 1, 1)


def events(rows: list[tuple[str, str, int, str, float | None]]) -> pl.DataFrame:
    """(member, title, minute of the day, event, value) rows as raw.interactions."""
    frame = pl.DataFrame(
        {
            "member_id": [r[0] for r in rows],
            "title_id": [r[1] for r in rows],
            "ts": [datetime(2026, 1, 1, 0, r[2], tzinfo=UTC) for r in rows],
            "event": [r[3] for r in rows],
            "value": [r[4] for r in rows],
            "day": [DAY] * len(rows),
        }
    )
    return conform(frame, INTERACTIONS_SCHEMA)


def by_title(frame: pl.DataFrame) -> dict[tuple[str, str], dict]:
    return {(r["member_id"], r["title_id"]): r for r in frame.iter_rows(named=True)}


def test_signals_from_ratings_and_fractions() -> None:
    frame = events(
        [
            ("m1", "t1", 1, "play", None),
            ("m1", "t1", 50, "rate", 0.5),  # half a star: negative
            ("m1", "t2", 2, "play", None),
            ("m1", "t2", 40, "complete", 0.1),  # stopped a tenth in: abandoned
            ("m1", "t3", 3, "play", None),  # played only: a watch, not liked
            ("m1", "t4", 4, "complete", 0.95),  # finished: liked
            ("m1", "t5", 5, "rate", 5.0),
            ("m1", "t6", 6, "complete", 0.1),
            ("m1", "t6", 7, "rate", 4.5),  # a high rating overrides an early stop
            ("m2", "t1", 8, "rate", 1.0),
            ("m2", "t1", 9, "rate", 3.0),  # the latest rating counts: 3 is a plain watch
            ("m2", "t7", 10, "search", None),  # a search is no signal
        ]
    )
    got = by_title(member_title_signals(frame, SignalThresholds()))
    assert set(got) == {("m1", f"t{i}") for i in range(1, 7)} | {("m2", "t1")}
    expect = {
        ("m1", "t1"): ("negative", "low_rating", False),
        ("m1", "t2"): ("negative", "abandoned", False),
        ("m1", "t3"): ("watch", None, False),
        ("m1", "t4"): ("watch", None, True),
        ("m1", "t5"): ("watch", None, True),
        ("m1", "t6"): ("watch", None, True),
        ("m2", "t1"): ("watch", None, False),
    }
    assert {k: (v["signal"], v["reason"], v["liked"]) for k, v in got.items()} == expect
    assert got[("m2", "t1")]["rating"] == 3.0 and got[("m1", "t2")]["watched_fraction"] == 0.1


def test_thresholds_are_configurable() -> None:
    frame = events([("m1", "t1", 1, "rate", 3.0), ("m1", "t2", 2, "complete", 0.4)])
    strict = SignalThresholds(negative_rating_max=3.0, positive_rating_min=4.5, abandoned_below=0.5)
    got = by_title(member_title_signals(frame, strict))
    assert got[("m1", "t1")]["reason"] == "low_rating" and got[("m1", "t2")]["reason"] == "abandoned"
    got = by_title(member_title_signals(frame, SignalThresholds()))
    assert {v["signal"] for v in got.values()} == {"watch"}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"negative_rating_max": 4.0, "positive_rating_min": 4.0}, "below positive_rating_min"),
     ({"abandoned_below": 0.95}, "abandoned_below")],
)  # fmt: skip
def test_contradictory_thresholds_are_refused(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        SignalThresholds(**kwargs)


def test_negative_watches_are_dropped_and_searches_kept() -> None:
    frame = events(
        [
            ("m1", "t1", 1, "play", None),
            ("m1", "t1", 2, "rate", 1.0),
            ("m1", "t2", 3, "play", None),
            ("m1", "t3", 4, "search", None),
        ]
    )
    kept = drop_negative_watches(frame, SignalThresholds())
    assert kept.select("title_id", "event").rows() == [("t2", "play"), ("t3", "search")]


def test_a_low_rated_title_is_never_a_recommendation_target_or_history() -> None:
    catalog = pl.DataFrame(
        {
            "title_id": ["t1", "t2", "t3"],
            "title": ["Alpha", "Beta", "Gamma"],
            "genres": [["Drama"], ["Drama"], ["Comedy"]],
            "year": [2001, 2002, 2003],
            "synopsis": ["A story.", "Another story.", "A third story."],
            "kind": ["movie"] * 3,
            "language": ["en"] * 3,
            "maturity": ["PG"] * 3,
        }
    )
    frame = events(
        [
            ("m1", "t1", 1, "play", None),
            ("m1", "t2", 2, "play", None),
            ("m1", "t2", 3, "rate", 0.5),
            ("m1", "t3", 4, "play", None),
        ]
    )
    recs = build_conversations(catalog, frame, DAY, BuilderConfig()).filter(pl.col("kind") == "recommendation")
    assert recs.height == 1
    text = " ".join(m["content"] for m in recs["messages"][0] if m["role"] != "system")
    first_answer = next(m["content"] for m in recs["messages"][0] if m["role"] == "assistant")
    assert "Alpha (2001)" in text and "Gamma (2003)" in first_answer
    assert "Beta" not in text
