"""The held-out data an evaluation reads: verified shard rows of the validation and test splits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from core.shards import read_split, read_verified_manifest

HELDOUT_SPLITS = ("validation", "test")


def heldout_rows(
    shard_dirs: Sequence[str | Path],
    conversations: pl.DataFrame | None = None,
    *,
    splits: Sequence[str] = HELDOUT_SPLITS,
) -> pl.DataFrame:
    """Held-out shard rows (conversation_id, split, kind, input_ids, loss_mask) from verified shard dirs.

    ``conversations`` (conversation_id, kind) supplies the kind; ids it lacks get "unknown".
    A shard directory whose files fail their manifest checksums is refused: an eval on
    corrupted data would be a wrong number with a trustworthy look.
    """
    frames = []
    for shard_dir in map(Path, shard_dirs):
        manifest = read_verified_manifest(shard_dir)
        for split in splits:
            part = read_split(shard_dir, split, manifest)
            frames.append(part.with_columns(pl.lit(split).alias("split")))
    schema = {
        "conversation_id": pl.String,
        "split": pl.String,
        "input_ids": pl.List(pl.Int32),
        "loss_mask": pl.List(pl.UInt8),
    }
    rows = pl.concat([f.select(list(schema)).cast(schema) for f in frames]) if frames else pl.DataFrame(schema=schema)
    if conversations is None:
        return rows.with_columns(pl.lit("unknown").alias("kind"))
    kinds = conversations.select(pl.col("conversation_id").cast(pl.String), pl.col("kind").cast(pl.String))
    kinds = kinds.unique("conversation_id", keep="first")
    return rows.join(kinds, on="conversation_id", how="left", maintain_order="left").with_columns(
        pl.col("kind").fill_null("unknown")
    )
