"""Expressions shared by the catalog and interaction checks: a column as text or a number, screening
values that cannot be read, and shaping flagged rows into the quarantine schema.

Everything is vectorized polars; per-row Python runs only for columns of types that need it (binary,
nested), never on the common path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import polars as pl

from core.schemas import RAW_QUARANTINE_SCHEMA, conform

_P = "__ingest_"  # prefix of working columns, unlikely to clash with user columns


def _text(name: str, dtype: pl.DataType) -> pl.Expr:
    """A column as stripped text, blank -> null; integral floats print without ".0"."""
    col = pl.col(name)
    if dtype.is_nested() or dtype == pl.Object:
        raise ValueError(f"column {name!r} has type {dtype}; expected text or numbers")
    if dtype.is_float():
        # Whole numbers print as integers (so 7.0 matches the interaction id "7"); anything an Int64 cannot
        # hold (1e300, inf) keeps its float spelling instead of turning into a missing id.
        whole = col.is_finite() & (col == col.floor()) & (col.abs() < 2.0**63)
        col = pl.when(whole).then(col.cast(pl.Int64, strict=False).cast(pl.String)).otherwise(col.cast(pl.String))
    elif dtype != pl.String:
        col = col.cast(pl.String)
    col = col.str.strip_chars()
    return pl.when(col.str.len_chars() > 0).then(col)


_SCALAR_TYPES = (pl.String, pl.Categorical, pl.Enum, pl.Boolean, pl.Date, pl.Datetime, pl.Time, pl.Null)


def _is_scalar(dtype: pl.DataType) -> bool:
    """Types ``_text``/``_number``/``parse_timestamps`` can read a value from."""
    return dtype.is_numeric() or isinstance(dtype, _SCALAR_TYPES)


def _json_safe(dtype: pl.DataType) -> bool:
    """polars' json_encode panics on binary values (1.x: "not yet implemented"), and objects are opaque."""
    if dtype in (pl.Binary, pl.Object):
        return False
    if isinstance(dtype, pl.List | pl.Array):
        return _json_safe(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return all(_json_safe(f.dtype) for f in dtype.fields)
    return True


def _screen_values(df: pl.DataFrame, mapped: Sequence[str], list_column: str | None = None) -> pl.DataFrame:
    """Make every column readable as text and mark rows whose mapped values cannot be read.

    CSV gives only text, but Parquet (or a caller's frame) can hold what ingestion cannot read as one
    value: bytes that are not UTF-8, lists, structs, durations. Adds ``{_P}pre_reason``/``{_P}pre_detail``
    (null for readable rows), which the reason chains check first:

    * a binary column is decoded as UTF-8 (Parquet's text encoding); a value that does not decode is
      kept with ``\\xNN`` escapes for the payload, and in a mapped column its row is ``encoding_error``;
    * a mapped column whose type is not text, a number or a date/time (``list_column``: a list of
      those) makes each row with a value in it ``bad_type``; the column is replaced by the values'
      JSON text, so the payload still shows what was there.

    Unmapped columns are only made JSON-encodable (for the payload). Per-row Python runs only for the
    columns of such types, never on the common path.
    """
    masks: list[tuple[pl.Series, str, str]] = []
    replace: list[pl.Series] = []
    for name, dtype in df.schema.items():
        is_mapped = name in mapped
        if dtype == pl.Binary:
            text: list[str | None] = []
            ok: list[bool] = []
            for v in df.get_column(name).to_list():
                try:
                    text.append(None if v is None else v.decode("utf-8"))
                    ok.append(True)
                except UnicodeDecodeError:
                    text.append(v.decode("utf-8", errors="backslashreplace"))
                    ok.append(False)
            replace.append(pl.Series(name, text, dtype=pl.String))
            if is_mapped and not all(ok):
                detail = f"column {name!r} holds bytes that are not valid UTF-8 (Parquet text is UTF-8)"
                masks.append((~pl.Series(ok), "encoding_error", detail + "; fix the producer"))
            continue
        readable = _is_scalar(dtype) or (
            name == list_column
            and isinstance(dtype, pl.List | pl.Array)
            and _is_scalar(dtype.inner)
            and dtype.inner != pl.Null
        )
        if is_mapped and not readable:
            values = df.get_column(name)
            masks.append(
                (
                    values.is_not_null(),
                    "bad_type",
                    f"column {name!r} holds {dtype} values; expected text, a number or a date"
                    + (" (or a list of those)" if name == list_column else ""),
                )
            )
            replace.append(
                pl.Series(
                    name, [None if v is None else json.dumps(v, default=str) for v in values.to_list()], pl.String
                )
            )
        elif not _json_safe(dtype):
            values = df.get_column(name)
            replace.append(
                pl.Series(
                    name,
                    [None if v is None else json.dumps(v, default=_bytes_text) for v in values.to_list()],
                    pl.String,
                )
            )
        elif name == list_column and isinstance(dtype, pl.Array):
            replace.append(df.get_column(name).arr.to_list())
    if replace:
        df = df.with_columns(replace)
    null_text = pl.lit(None, dtype=pl.String)
    if not masks:
        return df.with_columns(null_text.alias(f"{_P}pre_reason"), null_text.alias(f"{_P}pre_detail"))
    checks = pl.DataFrame([mask.alias(f"m{i}") for i, (mask, _, _) in enumerate(masks)])
    reason: Any = pl
    detail: Any = pl
    for i, (_, code, text_) in enumerate(masks):  # the first column's problem wins
        reason = reason.when(pl.col(f"m{i}")).then(pl.lit(code))
        detail = detail.when(pl.col(f"m{i}")).then(pl.lit(text_))
    flags = checks.select(
        reason.otherwise(null_text).alias(f"{_P}pre_reason"), detail.otherwise(null_text).alias(f"{_P}pre_detail")
    )
    return df.hstack(flags)


def _bytes_text(value: Any) -> str:
    return value.decode("utf-8", errors="backslashreplace") if isinstance(value, bytes) else str(value)


def _show(expr: pl.Expr) -> pl.Expr:
    """A value for a human detail message: 'value' or null."""
    return pl.when(expr.is_null()).then(pl.lit("null")).otherwise(pl.concat_str([pl.lit("'"), expr, pl.lit("'")]))


def _payload(raw_columns: list[str]) -> pl.Expr:
    return pl.struct([pl.col(c) for c in raw_columns]).struct.json_encode()


def _quarantine(frame: pl.DataFrame, source: str, day: pl.Expr, raw_columns: list[str]) -> pl.DataFrame:
    """Shape flagged rows (with reason/detail columns) into RAW_QUARANTINE_SCHEMA."""
    if frame.height == 0:
        return pl.DataFrame(schema=RAW_QUARANTINE_SCHEMA)
    out = frame.select(
        pl.lit(source).alias("source"),
        day.alias("day"),
        pl.col(f"{_P}reason").alias("reason"),
        pl.col(f"{_P}detail").alias("detail"),
        _payload(raw_columns).alias("payload"),
    )
    return conform(out, RAW_QUARANTINE_SCHEMA)


def _number(name: str, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr]:
    """(parsed float or null, raw text) for a numeric-ish column."""
    raw = _text(name, dtype)
    if dtype.is_numeric():
        return pl.col(name).cast(pl.Float64), raw
    return raw.cast(pl.Float64, strict=False), raw
