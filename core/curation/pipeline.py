"""``curate``: one day's candidate conversations in, curated rows, quarantine rows and stats out.

Every candidate either comes out curated (normalized, PII-scrubbed, content-hashed,
split assigned) or lands in quarantine with a reason code, so the stats always add up:
``rows_in == rows_out + quarantined``.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date

import polars as pl

from core.curation.config import CurationConfig
from core.curation.dedup import with_duplicate_reasons
from core.curation.hashing import hash_key_expr, stable_hash_hex
from core.curation.quarantine import quarantine_rows
from core.curation.reasons import REASONS
from core.curation.rules import checked_rows
from core.curation.splits import assign_splits
from core.schemas import CONVERSATIONS_SCHEMA, MESSAGES_DTYPE, SPLITS, conform

_CURATE_CHUNK = 250_000
_CANDIDATE_COLUMNS = ("conversation_id", "kind", "member_id", "messages")


def curate(
    candidates: pl.DataFrame,
    day: date,
    cfg: CurationConfig,
    *,
    seen_hashes: Collection[str] | pl.Series = (),
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """Apply the curation rules to one day's candidates.

    Returns (curated rows conforming ``CONVERSATIONS_SCHEMA`` in input order, quarantine
    rows conforming ``CONVERSATION_QUARANTINE_SCHEMA``, stats). ``seen_hashes`` are the
    content hashes curated on other days (earlier or later: the first day to commit a text keeps it); rows
    repeating them are quarantined as ``duplicate_of_earlier_day`` so the same text never lands in two partitions.
    """
    base = _base_rows(candidates)
    df = with_duplicate_reasons(_checked_and_hashed(base, cfg), seen_hashes)
    pii_emails = int(df.get_column("_emails").sum() or 0)
    pii_phones = int(df.get_column("_phones").sum() or 0)

    kept = df.filter(pl.col("_reason").is_null())
    split_key = pl.coalesce("member_id", "conversation_id")
    kept = kept.with_columns(
        pl.lit(day, dtype=pl.Date).alias("day"),
        assign_splits(kept.select(split_key).to_series(), cfg).alias("split"),
        pl.col("_norm").alias("messages"),
    )
    curated = conform(kept, CONVERSATIONS_SCHEMA)
    quarantine = quarantine_rows(df, base, day)
    return curated, quarantine, _stats(base.height, curated, quarantine, pii_emails, pii_phones)


def _base_rows(candidates: pl.DataFrame) -> pl.DataFrame:
    """The candidate columns with their types, numbered by ``_row`` in input order."""
    need = _CANDIDATE_COLUMNS
    missing = [c for c in need if c not in candidates.columns]
    if missing:
        raise ValueError(
            f"candidates frame is missing columns {missing} (it has {candidates.columns}); "
            "build it with core.conversation_builder or parse_external_jsonl"
        )
    try:
        return candidates.select(
            pl.col("conversation_id").cast(pl.String),
            pl.col("kind").cast(pl.String),
            pl.col("member_id").cast(pl.String).str.strip_chars().replace("", None),
            pl.col("messages").cast(MESSAGES_DTYPE),
        ).with_row_index("_row")
    except pl.exceptions.PolarsError as exc:
        # A producer bug, not bad data: the whole frame has the wrong shape. (Lone surrogates cannot get this
        # far: polars refuses them when a frame is built, so parse_external_jsonl quarantines them first.)
        types = {c: str(candidates.schema[c]) for c in need}
        raise ValueError(
            f"candidates columns have types {types}; expected conversation_id/kind/member_id text and messages "
            f"{MESSAGES_DTYPE} ({exc})"
        ) from exc


def _checked_and_hashed(base: pl.DataFrame, cfg: CurationConfig) -> pl.DataFrame:
    """Normalized messages, structural reason and detail, PII counts, and the content hash of valid rows.

    Rules and hashing run in bounded chunks: the intermediate copies of the text stay
    small, and rows that need no rewriting keep sharing the input's buffers.
    """
    parts = []
    for off in range(0, max(base.height, 1), _CURATE_CHUNK):
        chunk = checked_rows(base.slice(off, _CURATE_CHUNK), cfg)
        valid = chunk.filter(pl.col("_reason").is_null())
        hashes = stable_hash_hex(valid.select(hash_key_expr("_norm", normalized=True)).to_series(), 64)
        valid = valid.select("_row", hashes.alias("content_hash"))
        parts.append(
            chunk.select("_row", "_norm", "_reason", "_detail", "_emails", "_phones").join(
                valid, on="_row", how="left", maintain_order="left"
            )
        )
    return pl.concat(
        [base.select("_row", "conversation_id", "kind", "member_id"), pl.concat(parts).drop("_row")],
        how="horizontal",
    )


def _stats(
    rows_in: int, curated: pl.DataFrame, quarantine: pl.DataFrame, pii_emails: int, pii_phones: int
) -> dict[str, int]:
    """Counts per reason and per split, every reason and split present (zero when none), so runs compare."""
    stats: dict[str, int] = {
        "rows_in": rows_in,
        "rows_out": curated.height,
        "quarantined": quarantine.height,
    }
    counts = dict(quarantine.group_by("reason").len().iter_rows())
    for r in REASONS:
        stats[f"quarantined_{r}"] = int(counts.get(r, 0))
    stats["pii_emails"] = pii_emails
    stats["pii_phones"] = pii_phones
    split_counts = dict(curated.group_by("split").len().iter_rows())
    for s in SPLITS:
        stats[f"split_{s}"] = int(split_counts.get(s, 0))
    return stats
