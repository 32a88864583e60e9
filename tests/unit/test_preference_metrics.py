"""Held-out pair metrics on hand-computed log-probs, the report contract for them, and the gate's use of them."""

import numpy as np
import pytest

from core.champion import PREFERENCE_KEY, decide_promotion, promotion_metrics
from core.eval_report import preference_entry, render_markdown, validate_report_json
from evaluation.preference import PreferenceSettings, preference_estimates

POLICY = np.array([[-10.0, -12.0], [-8.0, -7.0], [-5.0, -9.0], [-6.0, -6.5]])
REFERENCE = np.array([[-11.0, -11.0], [-8.0, -8.0], [-6.0, -6.0], [-6.0, -6.0]])


def test_accuracy_margin_and_likelihood_accuracy_on_hand_values() -> None:
    # log-ratio margins: (1 - (-1)) = 2, (0 - 1) = -1, (1 - (-3)) = 4, (0 - (-0.5)) = 0.5
    est = preference_estimates(POLICY, REFERENCE, PreferenceSettings(beta=0.5, min_n=1, resamples=200))
    assert est["accuracy"].value == pytest.approx(3 / 4)
    assert est["reward_margin"].value == pytest.approx(0.5 * (2 - 1 + 4 + 0.5) / 4)
    assert est["likelihood_accuracy"].value == pytest.approx(3 / 4)  # pair 2 prefers rejected (-8 < -7)
    low, high = est["accuracy"].ci_low, est["accuracy"].ci_high
    assert low is not None and high is not None and low <= 0.75 <= high
    assert all(e.n == 4 for e in est.values())


def test_too_few_pairs_is_insufficient_not_zero_and_long_pairs_are_left_out() -> None:
    est = preference_estimates(POLICY, REFERENCE, PreferenceSettings(min_n=5))
    assert all(e.insufficient and e.value is None for e in est.values())
    nan = np.vstack([POLICY, [[np.nan, np.nan]]])
    est = preference_estimates(nan, np.vstack([REFERENCE, [[0.0, 0.0]]]), PreferenceSettings(min_n=1))
    assert est["accuracy"].n == 4


def _by_split(accuracy: float | None, n: int) -> dict:
    insufficient = [] if accuracy is not None else ["accuracy", "reward_margin", "likelihood_accuracy"]
    return {
        "n": n,
        "accuracy": accuracy,
        "reward_margin": None if accuracy is None else 0.1,
        "likelihood_accuracy": accuracy,
        "ci": {},
        "insufficient": insufficient,
    }


def test_the_report_entry_heads_with_the_test_split_and_validates() -> None:
    entry = preference_entry({"validation": _by_split(0.6, 40), "test": _by_split(None, 12)}, "/ref", 0.1)
    assert entry["accuracy"] is None and entry["n"] == 12 and "accuracy" in entry["insufficient"]
    report = {"checkpoint": "/c", "preference": entry}
    assert not [p for p in validate_report_json(report) if p.startswith("preference")]
    broken = {**entry, "by_split": {"validation": {**_by_split(0.6, 40), "accuracy": 1.5}}}
    assert any("[0, 1]" in p for p in validate_report_json({"preference": broken}))
    zero_for_none = {**entry, "accuracy": 0.0}
    assert any("null exactly when" in p for p in validate_report_json({"preference": zero_for_none}))


def _metrics(loss: float, pref: float | None, n: int = 50) -> dict:
    report = {
        "splits": {"validation": {"loss": loss}},
        "recommendation": {"model": {"hit@5": 0.2, "n": 100, "insufficient": []}},
        "preference": {"by_split": {"validation": _by_split(pref, n)}},
    }
    return promotion_metrics(report)


def test_the_gate_refuses_a_preference_regression_and_skips_it_with_too_few_pairs() -> None:
    champion = _metrics(1.0, 0.70)
    worse = decide_promotion(_metrics(1.0, 0.60), champion)
    assert not worse.promoted and any(PREFERENCE_KEY in r and "below" in r for r in worse.reasons)
    assert worse.deltas[PREFERENCE_KEY] == pytest.approx(-0.10)
    assert decide_promotion(_metrics(1.0, 0.69), champion).promoted  # within the 0.02 margin
    short = decide_promotion(_metrics(1.0, None, n=5), champion)
    assert short.promoted and any("too few held-out validation pairs" in r for r in short.reasons)
    no_pairs = {k: v for k, v in champion.items() if not k.startswith("preference")}
    assert decide_promotion(_metrics(1.0, 0.1), no_pairs).promoted  # the champion was never scored on pairs


def test_report_md_has_a_preference_table() -> None:
    from core.eval_report import build_report_json

    splits = {s: {"loss": 1.0, "perplexity": 2.718281828459045, "loss_tokens": 10} for s in ("validation", "test")}
    ranking = {"hit@1": 0.1, "hit@5": 0.2, "hit@10": 0.3, "ndcg@10": 0.2, "mrr": 0.2, "n": 40, "ci": {}}
    rec = {s: {**ranking, "insufficient": []} for s in ("model", "base_model", "popularity", "cooccurrence")}
    report = build_report_json(
        checkpoint="/c",
        splits=splits,
        recommendation=rec,
        champion=None,
        promoted=True,
        preference={
            "by_split": {"validation": _by_split(0.6, 40), "test": _by_split(0.7, 41)},
            "reference": "/r",
            "beta": 0.1,
        },
    )
    assert validate_report_json(report) == []
    md = render_markdown(report)
    assert "## Preference pairs (held out)" in md and "| test | 0.700 | 0.100 | 0.700 | 41 |" in md
