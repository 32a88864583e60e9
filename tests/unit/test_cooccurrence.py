"""The item-to-item co-occurrence baseline on a world small enough to compute by hand."""

import math

import polars as pl
import pytest

from evaluation.cooccurrence import build_cooccurrence


def _events(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["member_id", "title_id", "event"], orient="row")


# Watchers: A {m1, m2, m3}, B {m1, m2}, C {m3, m4}, D {m4}; m5 only browsed E (not a watch).
EVENTS = _events(
    [
        ("m1", "A", "play"), ("m1", "B", "play"),
        ("m2", "A", "play"), ("m2", "B", "complete"),
        ("m3", "A", "play"), ("m3", "C", "play"),
        ("m4", "C", "play"), ("m4", "D", "play"),
        ("m5", "E", "search"),
    ]
)  # fmt: skip


def test_similarity_is_the_cosine_of_the_watcher_sets() -> None:
    model = build_cooccurrence(EVENTS)
    assert model.neighbours["A"]["B"] == pytest.approx(2 / math.sqrt(3 * 2))
    assert model.neighbours["A"]["C"] == pytest.approx(1 / math.sqrt(3 * 2))
    assert model.neighbours["C"]["D"] == pytest.approx(1 / math.sqrt(2 * 1))
    assert "D" not in model.neighbours["A"]  # nobody watched both
    assert "E" not in model.neighbours and "E" not in model.popularity  # a search is no watch
    assert model.popularity == ("A", "B", "C", "D")  # by watchers, ties by title id


def test_recommendations_sum_similarity_over_history_and_never_repeat_it() -> None:
    model = build_cooccurrence(EVENTS)
    # History {C}: A (1/sqrt 6 = 0.41) vs D (1/sqrt 2 = 0.71) -> D first, then A, then B by popularity.
    assert model.recommend(["C"], k=3) == ["D", "A", "B"]
    # History {A, D}: B = 0.82, C = 0.41 + 0.71 = 1.12 -> C first.
    assert model.recommend(["A", "D"], k=2) == ["C", "B"]
    assert model.recommend(["A"], k=3, exclude=["B"]) == ["C", "D"]  # runs out: nothing else unseen


def test_a_member_without_history_gets_popularity() -> None:
    model = build_cooccurrence(EVENTS)
    assert model.recommend([], k=2) == ["A", "B"]
    assert model.recommend(["unknown-title"], k=2) == ["A", "B"]


def test_bad_input_names_the_missing_columns() -> None:
    with pytest.raises(ValueError, match="member_id"):
        build_cooccurrence(pl.DataFrame({"title_id": ["A"]}))
    with pytest.raises(ValueError, match="k must be"):
        build_cooccurrence(EVENTS).recommend(["A"], k=0)


def test_candidate_similarity_sums_over_history_and_is_zero_for_strangers() -> None:
    model = build_cooccurrence(EVENTS)
    got = model.similarity(["A", "C"], ["B", "D", "E"])
    assert got == pytest.approx([2 / math.sqrt(6), 1 / math.sqrt(2), 0.0])
