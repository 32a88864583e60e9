"""Quarantine rows of curation: every reject keeps its reason, a detail and its payload.

Nothing is dropped silently: a rejected conversation is kept as JSON, so it can be
inspected and replayed, but PII-scrubbed, so quarantine never keeps what curated rows
are scrubbed of.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from core.curation.normalize import rewrite_where
from core.curation.pii import scrub_pii_expr
from core.schemas import CONVERSATION_QUARANTINE_SCHEMA, MESSAGES_DTYPE, conform


def _with_payload(bad: pl.DataFrame) -> pl.DataFrame:
    """Add ``payload``: the raw row as JSON, messages as given except PII-scrubbed (only
    rows where PII was found are rewritten), so quarantine never keeps what curated
    rows are scrubbed of."""
    el = pl.element()
    scrubbed = pl.col("messages").list.eval(
        pl.struct(role=el.struct.field("role"), content=scrub_pii_expr(el.struct.field("content")))
    )
    bad = rewrite_where(bad, (pl.col("_emails") + pl.col("_phones")) > 0, "messages", scrubbed.cast(MESSAGES_DTYPE))
    payload = pl.struct("conversation_id", "kind", "member_id", "messages").struct.json_encode()
    return bad.with_columns(payload.alias("payload"))


def quarantine_rows(checked: pl.DataFrame, base: pl.DataFrame, day: date) -> pl.DataFrame:
    """The rows of ``checked`` that got a reason, with their messages as given in ``base``,
    conforming ``CONVERSATION_QUARANTINE_SCHEMA``."""
    bad = checked.filter(pl.col("_reason").is_not_null()).join(
        base.select("_row", "messages"), on="_row", how="left", maintain_order="left"
    )
    return conform(
        _with_payload(bad).with_columns(
            pl.lit(day, dtype=pl.Date).alias("day"),
            pl.col("_reason").alias("reason"),
            pl.col("_detail").alias("detail"),
        ),
        CONVERSATION_QUARANTINE_SCHEMA,
    )
