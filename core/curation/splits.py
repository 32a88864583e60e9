"""Train/validation/test split of each row, a pure function of the salt and the row's key."""

from __future__ import annotations

import polars as pl

from core.curation.config import CurationConfig
from core.curation.hashing import stable_hash_u64
from core.schemas import SPLITS


def assign_splits(keys: pl.Series, cfg: CurationConfig) -> pl.Series:
    """Split of each key from a salted sha256 of it: a pure function of (salt, key), so a
    member always lands in the same split and re-runs never move rows."""
    if keys.null_count():
        raise ValueError(
            f"assign_splits got {keys.null_count()} null keys; pass member_id, or conversation_id "
            "where there is no member"
        )
    salted = (pl.lit(cfg.split_salt + "\x00") + keys.cast(pl.String)).alias("k")
    h = stable_hash_u64(pl.select(salted).to_series())
    # 53 high bits -> a float in [0, 1) with no rounding, compared with cumulative fractions.
    u = (pl.lit(h) // 2**11).cast(pl.Float64) / float(2**53)
    f_train, f_val, _ = cfg.split_fractions
    return pl.select(
        pl.when(u < f_train)
        .then(pl.lit(SPLITS[0]))
        .when(u < f_train + f_val)
        .then(pl.lit(SPLITS[1]))
        .otherwise(pl.lit(SPLITS[2]))
        .alias("split")
    ).to_series()
