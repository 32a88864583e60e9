"""The candidate titles every system ranks for a held-out case: the same set, in the same order, for all.

A small catalog is ranked whole. A larger one would cost every model a forward pass per title per case, so a case
ranks its target among ``size - 1`` negatives drawn uniformly from the catalog titles the member has not watched.
The draw is seeded by the case id, so the model, the base model, the champion and the baselines rank exactly the
same titles, and a re-run draws them again. Metrics over sampled candidates are higher than over the whole
catalog (hit@10 of 100 candidates is an easier task than of 3,000); they compare systems, and the report says
which candidate set they were measured on.

Candidates come in a fixed pseudo-random order (a hash of the title id), not with the target first: systems that
tie (popularity among titles nobody watched) break ties by this order, which says nothing about the target.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from evaluation.recommendation import RecoCase


def _order_key(seed: int, title_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{title_id}".encode()).digest()


def _case_rng(seed: int, case_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"candidates\x00{seed}\x00{case_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def whole_catalog(catalog_size: int, size: int) -> bool:
    """Whether a catalog this small is ranked whole (``size`` is the sampled set's size)."""
    return catalog_size <= size


def candidate_sets(
    cases: Sequence[RecoCase],
    catalog_ids: Sequence[str],
    *,
    size: int,
    seed: int = 0,
    weights: Mapping[str, float] | None = None,
) -> list[list[str]]:
    """Each case's candidates: the target and titles outside its history, at most ``size`` of them.

    ``weights`` (title id -> weight, e.g. training watch counts + 1) draws negatives in proportion to them instead
    of uniformly. Raises ValueError for a case whose target is not a catalog title (its rank would mean nothing).
    """
    if size < 2:
        raise ValueError(f"candidate set size {size} must be >= 2: the target and at least one other title")
    catalog = list(dict.fromkeys(catalog_ids))
    known = set(catalog)
    whole = whole_catalog(len(catalog), size)
    if weights is not None:
        catalog_weights = np.array([max(float(weights.get(t, 0.0)), 0.0) for t in catalog])
    out: list[list[str]] = []
    for case in cases:
        if case.target_title_id not in known:
            raise ValueError(f"case {case.conversation_id}: target {case.target_title_id!r} is not in the catalog")
        exclude = set(case.history_title_ids) | {case.target_title_id}
        keep = [i for i, t in enumerate(catalog) if t not in exclude]
        if whole or len(keep) <= size - 1:
            chosen = [catalog[i] for i in keep]
        else:
            p = None
            if weights is not None:
                w = catalog_weights[keep]
                p = w / w.sum() if np.count_nonzero(w) >= size - 1 else None
            picks = _case_rng(seed, case.conversation_id).choice(len(keep), size=size - 1, replace=False, p=p)
            chosen = [catalog[keep[i]] for i in picks]
        out.append(sorted([case.target_title_id, *chosen], key=lambda t: _order_key(seed, t)))
    return out
