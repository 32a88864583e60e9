"""One day of member events (plays, completes, ratings, searches), with injected broken rows and re-deliveries."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import numpy as np
import polars as pl

from core.synthetic.config import SyntheticConfig, stream
from core.synthetic.vocabulary import prefixed_ids
from core.synthetic.world import build_world, sample_popular

EVENTS = ("play", "complete", "rate", "search")
# One defect per injected bad row, cycled so that every kind appears once there are >= 7 bad rows.
INJECTED_DEFECTS = (
    "unknown_title",
    "bad_timestamp",
    "null_member_id",
    "null_title_id",
    "bad_event",
    "bad_value",
    "wrong_day",
)
_BAD_TIMESTAMPS = ("not-a-timestamp", "2026-13-45T99:61:00Z", "", "yesterday evening")

# Behaviour constants of a day.
_FOLLOW_TASTE = 0.9  # share of plays/searches drawn from the member's favourite genres
# A taste-following play draws this many titles of the genre by popularity and takes the one released nearest the
# member's era: tastes a model can read from a history's release years, on top of its genres.
_ERA_DRAWS = 4
_SEARCH_RATE = 0.1
_COMPLETE_RATE = 0.45  # share of plays followed by a complete event
_RATE_RATE = 0.35  # share of completes followed by a rating
# Expected events produced by one base event (play/search + its follow-ups).
_EXPANSION = 1 + (1 - _SEARCH_RATE) * _COMPLETE_RATE * (1 + _RATE_RATE)
_HOUR_WEIGHTS = np.array([3, 2, 1, 1, 1, 1, 2, 3, 3, 3, 3, 4, 5, 5, 4, 4, 5, 6, 8, 10, 12, 12, 10, 6], dtype=np.float64)
_HOUR_WEIGHTS /= _HOUR_WEIGHTS.sum()
_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 86_400_000


def generate_interactions(cfg: SyntheticConfig, day: date) -> pl.DataFrame:
    """One day of member events in landing format, including injected bad rows.

    Columns: member_id, title_id, ts (ISO 8601 UTC string, ms precision), event, value.
    Rows are ordered by ts. A ``bad_row_rate`` share of rows carries exactly one
    defect from INJECTED_DEFECTS; ``duplicate_event_rate`` of good rows are delivered twice.
    """
    world = build_world(cfg)
    rng = stream(cfg.seed, day.toordinal())
    m_all = cfg.n_members

    active = np.flatnonzero(rng.random(m_all) < world.members.p_active)
    base_mean = max(cfg.mean_events_per_active_member / _EXPANSION, 1.0)
    z_act = world.members.z[active]
    lam = (base_mean - 1.0) * z_act / (z_act.mean() if len(z_act) else 1.0)
    n_base = 1 + rng.poisson(lam)
    member = np.repeat(active, n_base)
    b = len(member)

    k = world.members.k[member]
    g = world.members.fav[member, rng.integers(0, k)] if b else np.zeros(0, dtype=np.int64)
    follow = (rng.random(b) < _FOLLOW_TASTE) & (world.titles.genre_count[g] > 0)
    u = rng.random((b, _ERA_DRAWS))
    keys = world.titles.genre_keys
    pick = np.minimum(np.searchsorted(keys, g[:, None] + u, side="right"), len(keys) - 1)
    drawn = world.titles.genre_titles[pick]
    distance = np.abs(world.titles.year[drawn] - world.members.era[member][:, None])
    nearest = drawn[np.arange(b), np.argmin(distance, axis=1)] if b else np.zeros(0, dtype=np.int64)
    title = np.where(follow, nearest, sample_popular(world, rng.random(b)))
    # A member takes up a title once a day (two plays could end at the same clipped millisecond: one event twice).
    once = np.sort(np.unique(member.astype(np.int64) * cfg.n_titles + title, return_index=True)[1])
    member, title = member[once], title[once]
    b = len(member)
    hour = rng.choice(24, size=b, p=_HOUR_WEIGHTS)
    ms = hour * _MS_PER_HOUR + rng.integers(0, _MS_PER_HOUR, size=b)
    event = np.where(rng.random(b) < _SEARCH_RATE, 3, 0)
    value = np.full(b, np.nan)

    match = (world.titles.genre_mask[title] & world.members.mask[member]) != 0
    comp = (event == 0) & (rng.random(b) < _COMPLETE_RATE)
    frac = np.where(match, rng.beta(5.0, 1.3, size=b), rng.beta(1.0, 3.0, size=b))
    c_ms = np.minimum(ms + (world.titles.runtime_ms[title] * frac).astype(np.int64), _MS_PER_DAY - 1)
    rate = comp & (rng.random(b) < _RATE_RATE)
    stars = np.where(
        match,
        rng.choice([3, 4, 5], size=b, p=[0.2, 0.4, 0.4]),
        rng.choice([1, 2, 3, 4, 5], size=b, p=[0.3, 0.3, 0.2, 0.15, 0.05]),
    ).astype(np.float64)
    r_ms = np.minimum(c_ms + rng.integers(5_000, 300_000, size=b), _MS_PER_DAY - 1)

    member = np.concatenate([member, member[comp], member[rate]])
    title = np.concatenate([title, title[comp], title[rate]])
    ms = np.concatenate([ms, c_ms[comp], r_ms[rate]])
    value = np.concatenate([value, np.round(frac[comp], 3), stars[rate]])
    event = np.concatenate([event, np.full(int(comp.sum()), 1), np.full(int(rate.sum()), 2)])
    order = np.lexsort((event, title, member, ms))
    member, title, ms, value, event = member[order], title[order], ms[order], value[order], event[order]

    n = len(member)
    n_bad = math.ceil(n * cfg.bad_row_rate) if n else 0
    bad_rows = np.sort(rng.choice(n, size=min(n_bad, n), replace=False)) if n_bad else np.zeros(0, int)
    defect = np.full(n, -1)
    defect[bad_rows] = rng.permutation(np.arange(len(bad_rows)) % len(INJECTED_DEFECTS))
    n_dup = math.ceil(n * cfg.duplicate_event_rate) if n else 0
    good = np.flatnonzero(defect < 0)
    dups = np.sort(rng.choice(good, size=min(n_dup, len(good)), replace=False)) if n_dup else np.zeros(0, int)
    rows = np.sort(np.concatenate([np.arange(n), dups]), kind="stable")
    member, title, ms, value, event, defect = (a[rows] for a in (member, title, ms, value, event, defect))

    d = {name: i for i, name in enumerate(INJECTED_DEFECTS)}
    ms = np.where(defect == d["wrong_day"], -rng.integers(1, _MS_PER_HOUR, size=len(ms)), ms)
    event = np.where(defect == d["bad_event"], -1, np.where(defect == d["bad_value"], 2, event))
    value = np.where(defect == d["bad_value"], 9.0, value)
    bad_ts = rng.integers(0, len(_BAD_TIMESTAMPS), size=len(ms))

    day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "m": member,
            "t": title,
            "ms": ms,
            "ev": event,
            "val": pl.Series(value, nan_to_null=True),
            "defect": defect,
            "bad_ts": bad_ts,
        }
    )
    return frame.select(
        pl.when(pl.col("defect") == d["null_member_id"])
        .then(None)
        .otherwise(prefixed_ids("M", pl.col("m")))
        .alias("member_id"),
        pl.when(pl.col("defect") == d["null_title_id"])
        .then(None)
        .when(pl.col("defect") == d["unknown_title"])
        .then(prefixed_ids("U", pl.col("t")))
        .otherwise(prefixed_ids("T", pl.col("t")))
        .alias("title_id"),
        pl.when(pl.col("defect") == d["bad_timestamp"])
        .then(pl.col("bad_ts").replace_strict(dict(enumerate(_BAD_TIMESTAMPS)), return_dtype=pl.String))
        .otherwise((pl.lit(day_start) + pl.duration(milliseconds=pl.col("ms"))).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
        .alias("ts"),
        pl.col("ev").replace_strict({-1: "pause", **dict(enumerate(EVENTS))}, return_dtype=pl.String).alias("event"),
        pl.col("val").cast(pl.Float64).alias("value"),
    )
