"""Column contracts of the warehouse tables (see shared/DESIGN.md, "Data contracts").

One place names every column and dtype, so ingestion, curation, the DuckDB
warehouse and the asset checks cannot drift apart.
"""

from __future__ import annotations

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

# raw.quarantine: raw rows that broke the schema, with a reason code.
RAW_QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String,  # "catalog" | "interactions"
    "day": pl.Date,  # partition day; null for the catalog snapshot
    "reason": pl.String,
    "detail": pl.String,
    "payload": pl.String,  # the raw row as JSON
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

# curated.quarantine
CONVERSATION_QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.String,
    "day": pl.Date,
    "reason": pl.String,
    "detail": pl.String,
    "payload": pl.String,  # the raw conversation as JSON
}


def empty_frame(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Select and cast exactly the contract columns, in contract order.

    Raises a ValueError naming the missing columns instead of a bare KeyError.
    """
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"frame is missing contract columns {missing}; it has {df.columns}")
    return df.select([pl.col(c).cast(t) for c, t in schema.items()])
