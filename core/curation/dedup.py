"""Duplicate detection: the same text twice, in this batch or on another day, or one id reused.

Runs on the structurally valid rows only, in input order, so the first row of a text
is the one kept and later ones name it in their detail.
"""

from __future__ import annotations

from collections.abc import Collection

import polars as pl


def with_duplicate_reasons(df: pl.DataFrame, seen_hashes: Collection[str] | pl.Series) -> pl.DataFrame:
    """Fill ``_reason``/``_detail`` of valid rows that are duplicates.

    ``seen_hashes`` are the content hashes curated on other days: the first day to commit
    a text keeps it, so the same text never lands in two partitions.
    """
    ok = df.filter(pl.col("_reason").is_null()).select("_row", "conversation_id", "content_hash")
    seen = seen_hashes if isinstance(seen_hashes, pl.Series) else pl.Series(list(seen_hashes), dtype=pl.String)
    ok = ok.with_columns(pl.col("content_hash").is_in(seen.cast(pl.String).implode()).alias("_seen"))
    ok = ok.with_columns(pl.col("content_hash").is_first_distinct().alias("_first"))
    firsts = ok.filter(pl.col("_first")).select("content_hash", pl.col("conversation_id").alias("_first_id"))
    ok = ok.join(firsts, on="content_hash", how="left", maintain_order="left")
    # duplicate_id: an id reused by a row that survives the content checks.
    ok = ok.with_columns((~pl.col("_seen") & pl.col("_first")).alias("_cand"))
    ok = ok.with_columns(pl.col("conversation_id").is_first_distinct().over("_cand").alias("_id_first"))
    ok = ok.select(
        "_row",
        pl.when(pl.col("_seen"))
        .then(pl.lit("duplicate_of_earlier_day"))
        .when(~pl.col("_first"))
        .then(pl.lit("duplicate"))
        .when(~pl.col("_id_first"))
        .then(pl.lit("duplicate_id"))
        .alias("_dup_reason"),
        pl.when(pl.col("_seen"))
        .then(pl.format("content_hash {} was already curated on another day", pl.col("content_hash")))
        .when(~pl.col("_first"))
        .then(
            pl.format(
                "same normalized content (content_hash {}) as conversation_id {} earlier in this batch",
                pl.col("content_hash"),
                pl.col("_first_id"),
            )
        )
        .when(~pl.col("_id_first"))
        .then(pl.lit("conversation_id already used by an earlier row with different content"))
        .alias("_dup_detail"),
    )
    return df.join(ok, on="_row", how="left", maintain_order="left").with_columns(
        pl.coalesce("_reason", "_dup_reason").alias("_reason"),
        pl.coalesce("_detail", "_dup_detail").alias("_detail"),
    )
