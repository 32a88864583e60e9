"""Ranking metrics on cases small enough to compute by hand."""

import math

import numpy as np
import pytest

from evaluation.ranking_metrics import beats, bootstrap_indices, estimate, per_case, rank_of, ranking_report


def test_rank_of_is_one_based_and_none_when_absent() -> None:
    assert rank_of("b", ["a", "b", "c"]) == 2
    assert rank_of("z", ["a", "b"]) is None


def test_per_case_values_by_hand() -> None:
    # ranks 1, 3, 12 and unranked
    values = per_case([1, 3, 12, None], ks=(1, 5, 10))
    assert values["hit@1"].tolist() == [1, 0, 0, 0]
    assert values["hit@5"].tolist() == [1, 1, 0, 0]
    assert values["hit@10"].tolist() == [1, 1, 0, 0]
    assert values["ndcg@10"].tolist() == pytest.approx([1.0, 1 / math.log2(4), 0.0, 0.0])
    assert values["mrr"].tolist() == pytest.approx([1.0, 1 / 3, 1 / 12, 0.0])


def test_a_report_over_enough_cases_has_values_and_intervals_that_contain_them() -> None:
    report = ranking_report([1, 3, 12, None], min_n=4, resamples=500, seed=1)
    assert report["hit@5"].value == 0.5 and report["hit@5"].n == 4 and not report["hit@5"].insufficient
    assert report["mrr"].value == pytest.approx((1 + 1 / 3 + 1 / 12) / 4)
    assert report["ndcg@10"].value == pytest.approx((1 + 1 / math.log2(4)) / 4)
    for est in report.values():
        assert est.ci_low is not None and est.ci_high is not None
        assert 0.0 <= est.ci_low <= est.value <= est.ci_high <= 1.0
    # The same cases and seed give the same intervals.
    again = ranking_report([1, 3, 12, None], min_n=4, resamples=500, seed=1)
    assert again == report


def test_too_few_cases_are_insufficient_not_zero() -> None:
    report = ranking_report([None, None], min_n=30)
    assert all(e.insufficient and e.value is None and e.n == 2 for e in report.values())
    empty = ranking_report([], min_n=1)
    assert all(e.insufficient and e.value is None and e.n == 0 for e in empty.values())


def test_a_constant_metric_has_a_zero_width_interval() -> None:
    est = estimate(np.ones(50), min_n=10, indices=bootstrap_indices(50, 200, seed=3))
    assert (est.value, est.ci_low, est.ci_high) == (1.0, 1.0, 1.0)


def test_paired_difference_beats_only_when_its_interval_is_above_zero() -> None:
    model = [1] * 40 + [None] * 10  # hit@5 0.8
    popularity = [1] * 10 + [None] * 40  # hit@5 0.2
    diff = beats(model, popularity, "hit@5", resamples=500)
    assert diff.value == pytest.approx(0.6) and diff.ci_low > 0
    tie = beats(model, model, "ndcg@10", resamples=200)
    assert (tie.value, tie.ci_low, tie.ci_high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same cases"):
        beats(model, popularity[:-1], "mrr")


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="1-based"):
        per_case([0])
    with pytest.raises(ValueError, match="cut-offs"):
        per_case([1], ks=(0,))
    with pytest.raises(ValueError, match="min_n"):
        estimate(np.ones(3), min_n=0)
