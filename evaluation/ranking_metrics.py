"""Ranking metrics of held-out recommendation cases, each with its n and a bootstrap confidence interval.

Every case has one relevant title (what the member watched next), so for a case whose target sits at 1-based
rank r of a system's ranking (None when the system did not rank it):

- hit@k = 1 if r <= k;
- NDCG@k = 1 / log2(r + 1) if r <= k (the ideal DCG of one relevant item is 1);
- MRR = 1 / r (0 when unranked).

A metric over fewer cases than the configured minimum is *insufficient*: its value is None, never 0.0, so a
report cannot read "0.0" as "the model is bad" when it means "there was nothing to judge", and the champion gate
can refuse to decide on it. Intervals are percentile bootstraps over cases with a fixed seed, so the same cases
give the same interval, and two systems scored on the same cases are resampled with the same case indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_KS = (1, 5, 10)
NDCG_K = 10


def rank_of(target: str, ranked: Sequence[str]) -> int | None:
    """1-based position of `target` in `ranked`, or None if it is not there."""
    try:
        return list(ranked).index(target) + 1
    except ValueError:
        return None


def per_case(
    ranks: Sequence[int | None], ks: Sequence[int] = DEFAULT_KS, ndcg_k: int = NDCG_K
) -> dict[str, np.ndarray]:
    """Each metric's value per case (arrays aligned with `ranks`)."""
    if any(k < 1 for k in ks) or ndcg_k < 1:
        raise ValueError(f"cut-offs must be >= 1, got ks={list(ks)}, ndcg_k={ndcg_k}")
    r = np.array([math.inf if x is None else float(x) for x in ranks], dtype=np.float64)
    if np.any(r < 1):
        raise ValueError(f"ranks are 1-based; got {sorted(set(x for x in ranks if x is not None and x < 1))}")
    out = {f"hit@{k}": (r <= k).astype(np.float64) for k in ks}
    out[f"ndcg@{ndcg_k}"] = np.where(r <= ndcg_k, 1.0 / np.log2(np.minimum(r, 1e12) + 1.0), 0.0)
    out["mrr"] = np.where(np.isfinite(r), 1.0 / np.minimum(r, 1e12), 0.0)
    return out


@dataclass(frozen=True)
class Estimate:
    """A metric over `n` cases: its value and 95% (by default) bootstrap interval, or insufficient."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    insufficient: bool

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return asdict(self)


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """`resamples` x `n` case indices drawn with replacement; the same (n, resamples, seed) gives the same draw."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), int)


def estimate(
    values: np.ndarray, *, min_n: int, indices: np.ndarray | None = None, confidence: float = 0.95
) -> Estimate:
    """Mean of per-case `values` with a percentile bootstrap interval over `indices` (see bootstrap_indices)."""
    if min_n < 1:
        raise ValueError(f"min_n must be >= 1, got {min_n}")
    n = int(values.shape[0])
    if n < min_n:
        return Estimate(None, None, None, n, True)
    mean = float(values.mean())
    if indices is None or indices.shape[0] == 0:
        return Estimate(mean, None, None, n, False)
    if indices.shape[1] != n:
        raise ValueError(f"bootstrap indices are for {indices.shape[1]} cases, the metric has {n}")
    means = values[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Estimate(mean, float(low), float(high), n, False)


def ranking_report(
    ranks: Sequence[int | None],
    *,
    min_n: int,
    ks: Sequence[int] = DEFAULT_KS,
    ndcg_k: int = NDCG_K,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Estimate]:
    """hit@k, NDCG@k and MRR of one system over its cases, each an Estimate (insufficient below `min_n`)."""
    values = per_case(ranks, ks, ndcg_k)
    indices = bootstrap_indices(len(ranks), resamples, seed) if resamples else None
    return {name: estimate(v, min_n=min_n, indices=indices) for name, v in values.items()}


def beats(a: Sequence[int | None], b: Sequence[int | None], metric: str, *, resamples: int = 1000, seed: int = 0,
          confidence: float = 0.95) -> Estimate:  # fmt: skip
    """System a minus system b on `metric`, paired over the same cases (same resampled indices for both).

    The difference "beats" when its interval lies above 0; insufficient when there are no cases."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same cases: {len(a)} vs {len(b)} ranks")
    ks = [int(metric.split("@")[1])] if metric.startswith("hit@") else list(DEFAULT_KS)
    ndcg_k = int(metric.split("@")[1]) if metric.startswith("ndcg@") else NDCG_K
    diff = per_case(a, ks, ndcg_k)[metric] - per_case(b, ks, ndcg_k)[metric]
    return estimate(diff, min_n=1, indices=bootstrap_indices(len(a), resamples, seed), confidence=confidence)
