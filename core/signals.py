"""What a member's events say about a title: watched and liked, or a negative signal.

A rating or a watched fraction carries more than "the member touched this title". A member who rated a title
0.5 stars, or stopped a third of the way in, did not want it, so that title must not become the target a model
is taught to recommend next, nor count towards popularity or co-occurrence. It is not thrown away either: it is
the "rejected" side of later preference training.

Per member and title, over the events given (one day for conversations, all evaluated days for evaluation):

- ``negative`` / ``low_rating``: the member's latest rating is at or below ``negative_rating_max``;
- ``negative`` / ``abandoned``: no rating decides it, and the member's latest ``complete`` event watched less than
  ``abandoned_below`` of the title;
- ``watch``: any other title the member played, completed or rated (the positive signal);
- ``liked`` is true for a watch rated at or above ``positive_rating_min`` or completed to at least
  ``finished_from``: the strong positive preference pairs prefer as "chosen".

Searches are not watches and carry no signal here.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from core.schemas import INTERACTIONS_SCHEMA

WATCH_EVENTS = ("play", "complete", "rate")  # events that mean the member watched the title
SIGNALS = ("watch", "negative")
NEGATIVE_REASONS = ("low_rating", "abandoned")

SIGNAL_SCHEMA: dict[str, pl.DataType] = {
    "member_id": pl.String,
    "title_id": pl.String,
    "first_ts": INTERACTIONS_SCHEMA["ts"],
    "last_ts": INTERACTIONS_SCHEMA["ts"],
    "signal": pl.String,
    "reason": pl.String,
    "rating": pl.Float64,
    "watched_fraction": pl.Float64,
    "liked": pl.Boolean,
}


@dataclass(frozen=True)
class SignalThresholds:
    """Where ratings and watched fractions turn into negative and strong positive signals.

    Ratings are on the ingest scale (0.5..5 stars); fractions are a ``complete`` event's value (0..1).
    """

    negative_rating_max: float = 2.0
    positive_rating_min: float = 4.0
    abandoned_below: float = 0.25
    finished_from: float = 0.9

    def __post_init__(self) -> None:
        if not self.negative_rating_max < self.positive_rating_min:
            raise ValueError(
                f"negative_rating_max={self.negative_rating_max} must be below positive_rating_min="
                f"{self.positive_rating_min}: a rating cannot be both a negative and a strong positive signal"
            )
        if not 0.0 <= self.abandoned_below < self.finished_from <= 1.0:
            raise ValueError(
                f"need 0 <= abandoned_below ({self.abandoned_below}) < finished_from ({self.finished_from}) <= 1: "
                "they are fractions of a title watched"
            )


def member_title_signals(events: pl.DataFrame, thresholds: SignalThresholds) -> pl.DataFrame:
    """One row per (member, title) the member watched: its signal, the reason of a negative, and the evidence.

    ``events`` has raw.interactions columns (member_id, title_id, ts, event, value). Rows come sorted by member
    and first watch time, so a member's watch history reads in order.
    """
    missing = [c for c in ("member_id", "title_id", "ts", "event", "value") if c not in events.columns]
    if missing:
        raise ValueError(f"signals need raw.interactions columns; missing {missing}")
    watched = events.filter(
        pl.col("event").is_in(WATCH_EVENTS) & pl.col("member_id").is_not_null() & pl.col("title_id").is_not_null()
    ).sort("ts", "event", "value", nulls_last=True, maintain_order=True)
    rating = pl.col("value").filter(pl.col("event") == "rate").last()
    fraction = pl.col("value").filter((pl.col("event") == "complete") & pl.col("value").is_not_null()).last()
    per_title = watched.group_by("member_id", "title_id").agg(
        pl.col("ts").min().alias("first_ts"),
        pl.col("ts").max().alias("last_ts"),
        rating.alias("rating"),
        fraction.alias("watched_fraction"),
    )
    t = thresholds
    low = pl.col("rating").is_not_null() & (pl.col("rating") <= t.negative_rating_max)
    abandoned = pl.col("rating").is_null() & pl.col("watched_fraction").is_not_null()
    abandoned = abandoned & (pl.col("watched_fraction") < t.abandoned_below)
    reason = pl.when(low).then(pl.lit("low_rating")).when(abandoned).then(pl.lit("abandoned"))
    liked = (pl.col("rating") >= t.positive_rating_min).fill_null(False) | (
        pl.col("rating").is_null() & (pl.col("watched_fraction") >= t.finished_from).fill_null(False)
    )
    out = per_title.with_columns(reason.alias("reason")).with_columns(
        pl.when(pl.col("reason").is_null()).then(pl.lit("watch")).otherwise(pl.lit("negative")).alias("signal"),
        (liked & pl.col("reason").is_null()).alias("liked"),
    )
    return out.select(list(SIGNAL_SCHEMA)).sort("member_id", "first_ts", "title_id")


def drop_negative_watches(events: pl.DataFrame, thresholds: SignalThresholds) -> pl.DataFrame:
    """``events`` without the watch events of titles whose signal is negative (searches and the rest kept).

    What histories, targets, popularity and co-occurrence count: the remaining watch events are positive.
    """
    signals = member_title_signals(events, thresholds)
    negative = signals.filter(pl.col("signal") == "negative").select("member_id", "title_id")
    is_watch = pl.col("event").is_in(WATCH_EVENTS)
    flagged = events.join(
        negative.with_columns(pl.lit(True).alias("_negative")),
        on=["member_id", "title_id"],
        how="left",
        maintain_order="left",
    )
    return flagged.filter(~(is_watch & pl.col("_negative").fill_null(False))).drop("_negative")
