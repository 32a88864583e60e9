"""Systems ranking the same candidates: ranks, baselines, and the summary with n, intervals and comparisons."""

import math

import pytest

from evaluation.cooccurrence import CoOccurrence
from evaluation.ranking import cooccurrence_ranks, popularity_ranks, ranking_summary, target_rank
from evaluation.recommendation import RecoCase


def _case(cid: str, target: str, history: tuple[str, ...] = (), split: str = "test") -> RecoCase:
    return RecoCase(cid, split, (), target, target, history)


def test_rank_is_by_key_with_ties_in_candidate_order() -> None:
    assert target_rank([0.1, 0.9, 0.5], ["a", "b", "c"], "c") == 2
    assert target_rank([1, 1, 1], ["a", "b", "c"], "b") == 2  # a tie never lifts the target above earlier ones
    assert target_rank([(0.0, 5), (0.0, 9), (1.0, 0)], ["a", "b", "c"], "b") == 2  # tuples: similarity, then pop


def test_popularity_and_cooccurrence_rank_the_given_candidates() -> None:
    cases = [_case("c1", "x", ("h",)), _case("c2", "y", ("h",))]
    candidates = [["x", "y", "z"], ["z", "x", "y"]]
    assert popularity_ranks(cases, candidates, {"x": 5, "y": 1, "z": 3}) == [1, 3]
    model = CoOccurrence(neighbours={"h": {"y": 0.5, "z": 0.2}}, popularity=("x", "z", "y"))
    # c1: y 0.5, z 0.2, x 0.0 -> x third; c2: y first.
    assert cooccurrence_ranks(cases, candidates, model, history_size=5) == [3, 1]
    # The baseline sees only the history the prompt shows: with none of it, popularity decides.
    assert cooccurrence_ranks([_case("c3", "y", ("h", "q"))], [["x", "y", "z"]], model, history_size=1) == [3]


def test_summary_has_n_intervals_and_marks_too_few_cases_insufficient() -> None:
    cases = [_case(f"v{i}", "t", split="validation") for i in range(2)]
    cases += [_case(f"t{i}", "t", split="test") for i in range(4)]
    ranks = {"model": [1, 3, 1, 2, 1, 20], "popularity": [2, 2, 5, 5, 5, 5]}
    systems, comparisons = ranking_summary(
        cases, ranks, splits=("validation", "test"), headline_split="test", min_n=3, resamples=200
    )
    model = systems["model"]
    # Test split: ranks 1, 2, 1, 20.
    assert model["n"] == 4 and model["hit@1"] == pytest.approx(0.5) and model["hit@5"] == pytest.approx(0.75)
    assert model["hit@10"] == pytest.approx(0.75)
    assert model["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1) / 4)
    assert model["mrr"] == pytest.approx((1 + 0.5 + 1 + 0.05) / 4)
    low, high = model["ci"]["hit@1"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0
    # Validation has 2 cases, below min_n = 3: every metric is None (never 0.0) and listed insufficient.
    validation = model["by_split"]["validation"]
    assert validation["n"] == 2 and validation["insufficient"] == ["hit@1", "hit@5", "hit@10", "ndcg@10", "mrr"]
    assert all(validation[k] is None for k in validation["insufficient"])
    assert comparisons["validation"]["popularity"]["hit@5"]["insufficient"] is True
    diff = comparisons["test"]["popularity"]["hit@1"]
    assert diff["difference"] == pytest.approx(0.5) and diff["insufficient"] is False
    assert diff["beats"] == (diff["ci"][0] > 0)
