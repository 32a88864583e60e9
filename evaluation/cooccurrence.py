"""Item-to-item co-occurrence: the recommender baseline a trained model has to beat besides popularity.

Built from training events only: two titles are similar when the same members watched both. Similarity is the
cosine of their watcher sets, |A and B| / sqrt(|A| |B|), so a blockbuster that everyone watched does not look
similar to everything. A member's candidates are scored by the summed similarity to the titles in their history;
titles they already watched are never recommended; ties, and members without any similar title, fall back to
popularity. This is the classic item-based collaborative filter, kept small and exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from core.conversation_builder import WATCH_EVENTS

MAX_HISTORY_PER_MEMBER = 200  # the most recent titles of a member that count as co-watched


@dataclass(frozen=True)
class CoOccurrence:
    """Each title's similar titles with their cosine similarity, and the popularity order for fallbacks."""

    neighbours: dict[str, dict[str, float]]
    popularity: tuple[str, ...]

    def similarity(self, history: Sequence[str], candidates: Sequence[str]) -> list[float]:
        """Each candidate's summed similarity to the titles of `history` (0.0 for one nobody co-watched)."""
        totals = dict.fromkeys(candidates, 0.0)
        for title in history:
            for other, similarity in self.neighbours.get(title, {}).items():
                if other in totals:
                    totals[other] += similarity
        return [totals[c] for c in candidates]

    def recommend(self, history: Sequence[str], k: int, exclude: Iterable[str] = ()) -> list[str]:
        """The `k` titles most similar to `history` (summed), then the most popular, none of `exclude`."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        seen = set(exclude) | set(history)
        scores: dict[str, float] = {}
        for title in history:
            for other, similarity in self.neighbours.get(title, {}).items():
                if other not in seen:
                    scores[other] = scores.get(other, 0.0) + similarity
        rank = {t: i for i, t in enumerate(self.popularity)}
        ordered = sorted(scores, key=lambda t: (-scores[t], rank.get(t, len(rank)), t))[:k]
        for title in self.popularity:
            if len(ordered) == k:
                break
            if title not in seen and title not in scores:
                ordered.append(title)
        return ordered


def build_cooccurrence(events: pl.DataFrame, max_history: int = MAX_HISTORY_PER_MEMBER) -> CoOccurrence:
    """Similarities from interaction events (member_id, title_id, optional event and ts): only watch events count.

    Pass training data only (e.g. events of train-split members), so that no held-out target is seen.
    """
    missing = [c for c in ("member_id", "title_id") if c not in events.columns]
    if missing:
        raise ValueError(f"co-occurrence needs columns {missing}; pass raw.interactions rows")
    watched = events
    if "event" in watched.columns:
        watched = watched.filter(pl.col("event").is_in(WATCH_EVENTS))
    watched = watched.filter(pl.col("member_id").is_not_null() & pl.col("title_id").is_not_null())
    order = [pl.col("ts")] if "ts" in watched.columns else [pl.col("title_id")]
    watched = (
        watched.sort(order, descending=True)
        .unique(["member_id", "title_id"], keep="first", maintain_order=True)
        .with_columns(pl.int_range(pl.len()).over("member_id").alias("recency"))
        .filter(pl.col("recency") < max_history)
        .select("member_id", "title_id")
    )
    counts = watched.group_by("title_id").agg(pl.len().alias("watchers"))
    popularity = tuple(counts.sort(["watchers", "title_id"], descending=[True, False])["title_id"].to_list())
    pairs = (
        watched.join(watched, on="member_id", suffix="_other")
        .filter(pl.col("title_id") != pl.col("title_id_other"))
        .group_by("title_id", "title_id_other")
        .agg(pl.len().alias("both"))
        .join(counts, on="title_id")
        .join(counts.rename({"title_id": "title_id_other", "watchers": "watchers_other"}), on="title_id_other")
        .with_columns((pl.col("both") / (pl.col("watchers") * pl.col("watchers_other")).sqrt()).alias("cosine"))
    )
    neighbours: dict[str, dict[str, float]] = {}
    for title, other, cosine in pairs.select("title_id", "title_id_other", "cosine").iter_rows():
        neighbours.setdefault(title, {})[other] = float(cosine)
    return CoOccurrence(neighbours, popularity)
