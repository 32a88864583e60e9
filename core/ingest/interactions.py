"""Interaction normalization: one day's member events, conforming to INTERACTIONS_SCHEMA, plus quarantine."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import polars as pl

from core.ingest.mappings import InteractionMapping, _column
from core.ingest.reasons import RATING_RANGE, TS_RANGE
from core.ingest.timestamps import parse_timestamps
from core.ingest.values import _P, _number, _quarantine, _screen_values, _show, _text
from core.schemas import INTERACTION_EVENTS, INTERACTIONS_SCHEMA, RAW_QUARANTINE_SCHEMA, conform


def ingest_interactions(
    df: pl.DataFrame,
    mapping: InteractionMapping | None,
    day: date,
    known_title_ids: pl.Series | Sequence[str],
    *,
    per_day_files: bool,
    read_rejects: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """Validate and normalize member events for the partition ``day`` (UTC).

    Returns a 3-tuple ``(rows, quarantine, stats)``:

    * rows: INTERACTIONS_SCHEMA, ``day`` column = ``day``, exact duplicates (same member,
      title, ts, event) collapsed to their first occurrence, sorted by ts/member/title/event;
    * quarantine: RAW_QUARANTINE_SCHEMA, source="interactions";
    * stats: rows_in, rows_out, quarantined, duplicates_collapsed, other_day_rows, with
      ``rows_in == rows_out + quarantined + duplicates_collapsed + other_day_rows``.

    ``per_day_files=True``: ``df`` is the day's own file, so a row stamped on another day is
    a reject (wrong_day). ``per_day_files=False``: ``df`` holds many days; rows on other days
    belong to other partitions and are only counted (other_day_rows). Rows whose timestamp
    cannot be parsed belong to no day: they are quarantined with day=null and every
    partition's run returns the same ones, so the caller must replace (not append) them.

    ``read_rejects``: records ``read_tables_with_rejects`` could not read. They lead the
    quarantine and count in rows_in; their day is ``day`` with per-day files, else null (an
    unreadable row's timestamp is unknown, so like a bad timestamp it belongs to no day).
    """
    mapping = mapping or InteractionMapping()
    raw_columns = list(df.columns)
    c_member = _column(df, mapping, "member_id", required=True)
    c_title = _column(df, mapping, "title_id", required=True)
    c_ts = _column(df, mapping, "timestamp", required=True)
    assert c_member is not None and c_title is not None and c_ts is not None
    c_event, c_value, c_rating = (_column(df, mapping, f, required=False) for f in ("event", "value", "rating"))
    mapped = [c for c in (c_member, c_title, c_ts, c_event, c_value, c_rating) if c is not None]
    df = _screen_values(df, mapped)
    schema = df.schema
    known = (known_title_ids if isinstance(known_title_ids, pl.Series) else pl.Series(list(known_title_ids))).cast(
        pl.String
    )
    null_num = pl.lit(None, dtype=pl.Float64)
    null_text = pl.lit(None, dtype=pl.String)

    value_num, value_raw = _number(c_value, schema[c_value]) if c_value else (null_num, null_text)
    rating_num, rating_raw = _number(c_rating, schema[c_rating]) if c_rating else (null_num, null_text)
    event_raw = _text(c_event, schema[c_event]) if c_event else null_text
    default_event = pl.when(rating_num.is_not_null()).then(pl.lit("rate")).otherwise(pl.lit("play"))
    col = pl.col

    norm = df.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias(f"{_P}row"),
        _text(c_member, schema[c_member]).alias(f"{_P}member"),
        _text(c_title, schema[c_title]).alias(f"{_P}title"),
        parse_timestamps(df[c_ts]).alias(f"{_P}ts"),
        _text(c_ts, schema[c_ts]).alias(f"{_P}ts_raw"),
        event_raw.alias(f"{_P}event_raw"),
        pl.coalesce(event_raw.str.to_lowercase(), default_event).alias(f"{_P}event"),
        pl.coalesce(value_num, rating_num).alias(f"{_P}value"),
        pl.coalesce(value_raw, rating_raw).alias(f"{_P}value_raw"),
        (
            (value_raw.is_not_null() & (value_num.is_null() | ~value_num.is_finite()))
            | (rating_raw.is_not_null() & (rating_num.is_null() | ~rating_num.is_finite()))
        ).alias(f"{_P}value_unparsable"),
    ).with_columns(col(f"{_P}ts").dt.date().alias(f"{_P}day"))
    rows_in = norm.height
    other_day = col(f"{_P}ts").is_not_null() & (col(f"{_P}day") != day)
    other_day_rows = 0
    if not per_day_files:
        other_day_rows = int(norm.select(other_day.sum()).item())
        norm = norm.filter(~other_day)

    ev, val = col(f"{_P}event"), col(f"{_P}value")
    r_lo, r_hi = RATING_RANGE
    value_bad = (
        col(f"{_P}value_unparsable")
        | ((ev == "rate") & (val.is_null() | (val < r_lo) | (val > r_hi)))
        | ((ev == "complete") & val.is_not_null() & ((val < 0) | (val > 1)))
    )
    reason = (
        pl.when(col(f"{_P}pre_reason").is_not_null())
        .then(col(f"{_P}pre_reason"))
        .when(col(f"{_P}member").is_null())
        .then(pl.lit("null_member_id"))
        .when(col(f"{_P}title").is_null())
        .then(pl.lit("null_title_id"))
        .when(col(f"{_P}ts").is_null())
        .then(pl.lit("bad_timestamp"))
        .when(other_day)  # only reachable with per_day_files; the filter above removed them otherwise
        .then(pl.lit("wrong_day"))
        .when(~col(f"{_P}title").is_in(known.implode()))
        .then(pl.lit("unknown_title"))
        .when(~ev.is_in(list(INTERACTION_EVENTS)))
        .then(pl.lit("bad_event"))
        .when(value_bad)
        .then(pl.lit("bad_value"))
        .otherwise(null_text)
    )
    norm = norm.with_columns(reason.alias(f"{_P}reason"))

    bad = norm.filter(col(f"{_P}reason").is_not_null())
    detail = (
        pl.when(col(f"{_P}pre_reason").is_not_null())
        .then(col(f"{_P}pre_detail"))
        .when(col(f"{_P}reason") == "null_member_id")
        .then(pl.lit(f"member_id is missing or blank (column {c_member!r})"))
        .when(col(f"{_P}reason") == "null_title_id")
        .then(pl.lit(f"title_id is missing or blank (column {c_title!r})"))
        .when((col(f"{_P}reason") == "bad_timestamp") & col(f"{_P}ts_raw").is_null())
        .then(pl.lit(f"timestamp is missing or blank (column {c_ts!r})"))
        .when(col(f"{_P}reason") == "bad_timestamp")
        .then(
            pl.concat_str(
                [
                    pl.lit("timestamp "),
                    _show(col(f"{_P}ts_raw")),
                    pl.lit(
                        f" (column {c_ts!r}) is not epoch seconds or an ISO 8601 time between "
                        f"{TS_RANGE[0].year} and {TS_RANGE[1].year - 1}"
                    ),
                ]
            )
        )
        .when(col(f"{_P}reason") == "wrong_day")
        .then(
            pl.concat_str(
                [
                    pl.lit("timestamp "),
                    _show(col(f"{_P}ts_raw")),
                    pl.lit(" falls on "),
                    col(f"{_P}day").cast(pl.String),
                    pl.lit(f" (UTC), not on this file's day {day.isoformat()}"),
                ]
            )
        )
        .when(col(f"{_P}reason") == "unknown_title")
        .then(pl.concat_str([pl.lit("title_id "), _show(col(f"{_P}title")), pl.lit(" is not in the catalog")]))
        .when(col(f"{_P}reason") == "bad_event")
        .then(
            pl.concat_str(
                [
                    pl.lit("event "),
                    _show(col(f"{_P}event_raw")),
                    pl.lit(f" (column {c_event!r}) is not one of {list(INTERACTION_EVENTS)}"),
                ]
            )
        )
        .otherwise(
            pl.concat_str(
                [
                    pl.lit("value "),
                    _show(col(f"{_P}value_raw")),
                    pl.lit(" is not valid for event '"),
                    ev,
                    pl.lit(
                        f"' (rate needs a number in {r_lo:g}..{r_hi:g}, complete a fraction in 0..1, "
                        "every value must be numeric)"
                    ),
                ]
            )
        )
    )
    q_day = pl.lit(day) if per_day_files else pl.when(col(f"{_P}ts").is_not_null()).then(pl.lit(day))
    quarantine = _quarantine(bad.with_columns(detail.alias(f"{_P}detail")), "interactions", q_day, raw_columns)
    if read_rejects is not None and read_rejects.height:
        read = read_rejects.with_columns(
            pl.lit("interactions").alias("source"), pl.lit(day if per_day_files else None, dtype=pl.Date).alias("day")
        )
        quarantine = pl.concat([conform(read, RAW_QUARANTINE_SCHEMA), quarantine])
        rows_in += read_rejects.height

    good = norm.filter(col(f"{_P}reason").is_null())
    key = [f"{_P}member", f"{_P}title", f"{_P}ts", f"{_P}event"]
    deduped = good.unique(subset=key, keep="first", maintain_order=True)
    rows = conform(
        deduped.select(
            col(f"{_P}member").alias("member_id"),
            col(f"{_P}title").alias("title_id"),
            col(f"{_P}ts").alias("ts"),
            ev.alias("event"),
            pl.when(ev.is_in(["rate", "complete"])).then(val).alias("value"),
            pl.lit(day).alias("day"),
        ).sort(["ts", "member_id", "title_id", "event"]),
        INTERACTIONS_SCHEMA,
    )
    stats = {
        "rows_in": rows_in,
        "rows_out": rows.height,
        "quarantined": quarantine.height,
        "duplicates_collapsed": good.height - deduped.height,
        "other_day_rows": other_day_rows,
    }
    return rows, quarantine, stats
