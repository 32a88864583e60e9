"""Column contracts of the warehouse tables (see shared/DESIGN.md, "Data contracts").

One place names every column and dtype, so ingestion, curation, the DuckDB
warehouse and the asset checks cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

MESSAGE_DTYPE = pl.Struct({"role": pl.String, "content": pl.String})
MESSAGES_DTYPE = pl.List(MESSAGE_DTYPE)

# raw.catalog: one row per title (latest snapshot).
CATALOG_SCHEMA: dict[str, pl.DataType] = {
    "title_id": pl.String,
    "title": pl.String,
    "kind": pl.String,  # "movie" | "series"
    "genres": pl.List(pl.String),
    "year": pl.Int32,  # nullable
    "synopsis": pl.String,  # nullable
    "language": pl.String,  # nullable
    "maturity": pl.String,  # nullable
}

# raw.interactions: member events, partitioned by `day` (UTC date of `ts`).
INTERACTION_EVENTS = ("play", "complete", "rate", "search")
INTERACTIONS_SCHEMA: dict[str, pl.DataType] = {
    "member_id": pl.String,
    "title_id": pl.String,
    "ts": pl.Datetime("us", "UTC"),
    "event": pl.String,
    "value": pl.Float64,  # rating for "rate", watched fraction for "complete", else null
    "day": pl.Date,
}

# Every quarantine payload is cut to this many characters. Quarantine is for a human to see what was
# wrong; one 50 MB line must not become a 50 MB warehouse row (or a 50 MB UI preview). The original
# length and a flag are kept next to it, so a cut payload is never mistaken for the whole input.
QUARANTINE_PAYLOAD_MAX_CHARS = 65_536

# raw.quarantine: raw rows that broke the schema, with a reason code.
RAW_QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String,  # "catalog" | "interactions"
    "day": pl.Date,  # partition day; null for the catalog snapshot
    "reason": pl.String,
    "detail": pl.String,
    "payload": pl.String,  # the raw row as JSON, cut to QUARANTINE_PAYLOAD_MAX_CHARS
    "payload_chars": pl.Int64,  # length of the payload before it was cut
    "payload_truncated": pl.Boolean,  # True when payload holds only its first QUARANTINE_PAYLOAD_MAX_CHARS
}

# curated.conversations
SPLITS = ("train", "validation", "test")
CONVERSATIONS_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.String,
    "day": pl.Date,
    "kind": pl.String,  # recommendation | title_qa | search | external
    "member_id": pl.String,  # nullable
    "split": pl.String,
    "messages": MESSAGES_DTYPE,
    "content_hash": pl.String,
}

# curated.preference_pairs: a prompt and two completions, the member's preferred one first.
PREFERENCE_PAIRS_SCHEMA: dict[str, pl.DataType] = {
    "pair_id": pl.String,
    "day": pl.Date,
    "kind": pl.String,  # behaviour | external
    "member_id": pl.String,  # nullable
    "split": pl.String,
    "prompt": MESSAGES_DTYPE,  # ends with the user turn the completions answer
    "chosen": MESSAGES_DTYPE,  # one assistant message
    "rejected": MESSAGES_DTYPE,  # one assistant message
    "chosen_title_id": pl.String,  # behaviour pairs: the liked title; null for external pairs
    "rejected_title_id": pl.String,  # behaviour pairs: the abandoned or low-rated title
    "content_hash": pl.String,
}

# curated.quarantine
CONVERSATION_QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.String,
    "day": pl.Date,
    "reason": pl.String,
    "detail": pl.String,
    "payload": pl.String,  # the raw conversation as JSON, cut to QUARANTINE_PAYLOAD_MAX_CHARS
    "payload_chars": pl.Int64,
    "payload_truncated": pl.Boolean,
}


def empty_frame(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def cap_payloads(df: pl.DataFrame, max_chars: int = QUARANTINE_PAYLOAD_MAX_CHARS) -> pl.DataFrame:
    """Cut ``payload`` to ``max_chars`` characters and fill ``payload_chars``/``payload_truncated``.

    Idempotent: a frame that already carries ``payload_chars`` (e.g. the producer cut a huge line
    before building the frame) keeps that original length, and an already-set flag stays set.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars={max_chars} must be >= 1")
    payload = pl.col("payload").cast(pl.String)
    length = payload.str.len_chars().cast(pl.Int64)
    if "payload_chars" in df.columns:
        length = pl.coalesce(pl.col("payload_chars").cast(pl.Int64), length)
    over = payload.str.len_chars() > max_chars
    if "payload_truncated" in df.columns:
        over = pl.col("payload_truncated").cast(pl.Boolean).fill_null(False) | over
    return df.with_columns(
        length.alias("payload_chars"),
        over.fill_null(False).alias("payload_truncated"),
        payload.str.slice(0, max_chars).alias("payload"),
    )


def quarantine_frame(data: Mapping[str, Sequence[Any]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A quarantine frame from column lists that leave out ``payload_chars``/``payload_truncated``
    (they are derived from ``payload`` here, cut to the cap)."""
    given = {c: t for c, t in schema.items() if c in data}
    return conform(pl.DataFrame(dict(data), schema=given), schema)


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Select and cast exactly the contract columns, in contract order.

    Raises a ValueError naming the missing columns instead of a bare KeyError. For the quarantine
    contracts the payload is capped here (``cap_payloads``): every write to the warehouse passes
    through ``conform``, so no code path can store an uncapped payload.
    """
    if "payload_truncated" in schema and "payload" in df.columns:
        df = cap_payloads(df)
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"frame is missing contract columns {missing}; it has {df.columns}")
    return df.select([pl.col(c).cast(t) for c, t in schema.items()])
