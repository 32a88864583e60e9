"""Timestamp parsing: every accepted spelling of a moment to Datetime(us, UTC), null when implausible.

Shared by interaction normalization and the per-day index, which must agree exactly on each row's day.
"""

from __future__ import annotations

import polars as pl

from core.ingest.reasons import TS_RANGE
from core.ingest.values import _text

_NUMERIC_TS = r"^[+-]?\d+(\.\d*)?$"
_TZ_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z")
_NAIVE_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d")
_UTC_US = pl.Datetime("us", "UTC")


def _epoch_seconds(num: pl.Expr) -> pl.Expr:
    lo, hi = (t.timestamp() for t in TS_RANGE)
    ok = num.is_not_null() & num.is_finite() & (num >= lo) & (num < hi)
    # Null out-of-range values before the cast: polars evaluates a `then` branch on every row, so casting
    # inside it would still fail on inf or huge numbers.
    in_range = pl.when(ok).then(num)
    return (in_range * 1e6).round().cast(pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _parse_text_timestamps(text: pl.Series) -> pl.Series:
    """Try each accepted text format only on the rows no earlier format parsed.

    A cascade instead of ``coalesce`` of all formats: on a clean file the first format
    parses everything and the others run on zero rows.
    """
    iso = text.str.replace(r"^(\d{4}-\d{2}-\d{2})[ T]", "${1}T").str.replace(r"[zZ]$", "+00:00")
    numeric = text.str.contains(_NUMERIC_TS).fill_null(False)
    out = pl.select(
        pl.when(pl.lit(numeric)).then(_epoch_seconds(pl.lit(text).cast(pl.Float64, strict=False)))
    ).to_series()
    todo = out.is_null() & iso.is_not_null()
    for fmt in _TZ_FORMATS + _NAIVE_FORMATS:
        idx = todo.arg_true()
        if idx.len() == 0:
            break
        if fmt in _TZ_FORMATS:
            parsed = iso.gather(idx).str.to_datetime(fmt, time_unit="us", time_zone="UTC", strict=False)
        else:
            parsed = iso.gather(idx).str.to_datetime(fmt, time_unit="us", strict=False)
            parsed = parsed.dt.replace_time_zone("UTC")
        ok = parsed.is_not_null()
        out = out.scatter(idx.filter(ok), parsed.filter(ok))
        todo = todo.scatter(idx.filter(ok), False)
    return out


def parse_timestamps(values: pl.Series) -> pl.Series:
    """Parse a timestamp column to Datetime(us, UTC); null when unparsable or implausible.

    Accepts epoch seconds (int, float, or numeric text), ISO 8601 with a zone (Z, +02:00,
    +0200; converted to UTC), ISO 8601 without a zone (taken as UTC), a date alone
    (midnight UTC), and native Parquet datetimes/dates. Plausible = within TS_RANGE.
    """
    dtype = values.dtype
    frame = values.rename("v").to_frame()
    col = pl.col("v")
    if isinstance(dtype, pl.Datetime):
        tz = col.dt.replace_time_zone("UTC") if dtype.time_zone is None else col.dt.convert_time_zone("UTC")
        ts = frame.select(tz.cast(_UTC_US)).to_series()
    elif dtype == pl.Date:
        ts = frame.select(col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")).to_series()
    elif dtype.is_numeric():
        ts = frame.select(_epoch_seconds(col.cast(pl.Float64))).to_series()
    else:
        ts = _parse_text_timestamps(frame.select(_text("v", dtype)).to_series())
    lo, hi = TS_RANGE
    return (
        ts.to_frame("ts")
        .select(pl.when(pl.col("ts").is_between(lo, hi, closed="left")).then(pl.col("ts")))["ts"]
        .rename(values.name)
    )
