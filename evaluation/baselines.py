"""The popularity baseline: what a model must beat without reading the member's history."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import polars as pl

from core.conversation_builder import WATCH_EVENTS
from evaluation.recommendation import RecoCase, hit_rates, hits_by_split


def popularity_ranking(source: Mapping[str, int] | pl.DataFrame) -> list[str]:
    """Title ids, most popular first (ties by title_id).

    ``source``: {title_id: count}, a frame with title_id and count, or interaction events
    (title_id, optional event: only watch events count; each row counts once). Count only
    training data (e.g. train-split members' events) so the baseline cannot peek at targets.
    """
    if isinstance(source, Mapping):
        counts = pl.DataFrame(
            {"title_id": list(source), "count": [int(v) for v in source.values()]},
            schema={"title_id": pl.String, "count": pl.Int64},
        )
    else:
        frame = source
        if "title_id" not in frame.columns:
            raise ValueError(f"popularity source needs a 'title_id' column; it has {frame.columns}")
        if "count" in frame.columns:
            counts = frame.group_by("title_id").agg(pl.col("count").sum())
        else:
            if "event" in frame.columns:
                frame = frame.filter(pl.col("event").is_in(WATCH_EVENTS))
            counts = frame.group_by("title_id").agg(pl.len().alias("count"))
    counts = counts.filter(pl.col("title_id").is_not_null())
    return counts.sort(["count", "title_id"], descending=[True, False])["title_id"].to_list()


def popularity_baseline(ranking: Sequence[str], k: int, exclude: Iterable[str] = ()) -> list[str]:
    """The ``k`` most popular titles the member has not already watched."""
    seen = set(exclude)
    out: list[str] = []
    for title_id in ranking:
        if title_id not in seen:
            out.append(title_id)
            if len(out) == k:
                break
    return out


def evaluate_popularity(
    cases: Sequence[RecoCase], ranking: Sequence[str], *, limit: int | None = None, ks: Sequence[int] = (1, 5)
) -> dict[str, Any]:
    """hit@k of the popularity baseline on ``cases`` (history excluded per case)."""
    cases = list(cases[:limit] if limit is not None else cases)
    recs = [popularity_baseline(ranking, max(ks), c.history_title_ids) for c in cases]
    targets = [c.target_title_id for c in cases]
    return {**hit_rates(recs, targets, ks), "n": len(cases), "by_split": hits_by_split(cases, recs, ks)}
