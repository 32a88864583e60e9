"""``curate_pairs``: a day's candidate preference pairs in, curated pairs, quarantine rows and stats out.

The conversation rules apply unchanged: each side of a pair, the prompt followed by its completion, is checked
as a conversation by ``core.curation.rules`` (roles, alternation, empty turns, lengths), after the same
normalization and PII scrubbing. On top of them, two pair rules (``PAIR_REASONS``): each completion is exactly one
assistant message, and the two completions differ. Duplicates are whole pairs with the same normalized text, in
the batch or on another day; the first kept wins, as for conversations.

The split comes from the same salted hash of the member as SFT's (of the pair id when there is no member), so a
member is in the same split in both, and a held-out member's pairs never train the preference model either.
``rows_in == rows_out + quarantined`` always.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date

import polars as pl

from core.curation.config import CurationConfig
from core.curation.dedup import with_duplicate_reasons
from core.curation.hashing import hash_key_expr, stable_hash_hex
from core.curation.normalize import normalize_messages
from core.curation.pii import scrub_pii_expr
from core.curation.reasons import PAIR_REASONS, REASONS
from core.curation.rules import checked_rows
from core.curation.splits import assign_splits
from core.preferences.from_signals import PAIR_CANDIDATE_SCHEMA
from core.schemas import CONVERSATION_QUARANTINE_SCHEMA, MESSAGES_DTYPE, PREFERENCE_PAIRS_SCHEMA, SPLITS, conform

_SIDES = ("chosen", "rejected")


def _base_rows(candidates: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in PAIR_CANDIDATE_SCHEMA if c not in candidates.columns and c != "day"]
    if missing:
        raise ValueError(
            f"candidate pairs are missing columns {missing} (they have {candidates.columns}); "
            "build them with core.preferences.behaviour_pairs or parse_preference_jsonl"
        )
    return candidates.select(
        pl.col("pair_id").cast(pl.String),
        pl.col("kind").cast(pl.String),
        pl.col("member_id").cast(pl.String).str.strip_chars().replace("", None),
        *[pl.col(c).cast(MESSAGES_DTYPE) for c in ("prompt", *_SIDES)],
        pl.col("chosen_title_id").cast(pl.String),
        pl.col("rejected_title_id").cast(pl.String),
    ).with_row_index("_row")


def _normalized(base: pl.DataFrame, column: str) -> pl.DataFrame:
    """(``_row``, normalized ``column``, its email and phone counts)."""
    part = normalize_messages(base.select("_row", pl.col(column).fill_null([]).alias("messages")))
    return part.select(
        "_row",
        pl.col("_norm").alias(column),
        pl.col("_emails").alias(f"_{column}_emails"),
        pl.col("_phones").alias(f"_{column}_phones"),
    )


def _side_reasons(norm: pl.DataFrame, side: str, cfg: CurationConfig) -> pl.DataFrame:
    """The conversation rules on prompt + ``side``: (``_row``, reason, detail naming the side)."""
    conversation = norm.select(
        "_row",
        pl.col("pair_id").alias("conversation_id"),
        pl.concat_list(pl.col("prompt"), pl.col(side)).alias("messages"),
    )
    checked = checked_rows(conversation, cfg)
    return checked.select(
        "_row",
        pl.col("_reason").alias(f"_{side}_reason"),
        pl.format("{}: {}", pl.lit(side), pl.col("_detail")).alias(f"_{side}_detail"),
    )


def _pair_rule(norm: pl.DataFrame) -> tuple[pl.Expr, pl.Expr]:
    """(reason, detail) of the pair rules, null when both hold."""
    one_answer = [
        (pl.col(s).list.len() == 1) & (pl.col(s).list.first().struct.field("role") == "assistant") for s in _SIDES
    ]
    bad = [pl.when(~ok).then(pl.lit(s)) for ok, s in zip(one_answer, _SIDES, strict=True)]
    reason = (
        pl.when(~(one_answer[0] & one_answer[1]))
        .then(pl.lit("bad_completion"))
        .when(pl.col("chosen") == pl.col("rejected"))
        .then(pl.lit("same_completion"))
    )
    detail = (
        pl.when(~(one_answer[0] & one_answer[1]))
        .then(
            pl.format(
                "{} must be exactly one assistant message (the answer to the prompt's last user turn)",
                pl.coalesce(*bad),
            )
        )
        .when(pl.col("chosen") == pl.col("rejected"))
        .then(pl.lit("chosen and rejected are the same text after normalization: nothing to prefer"))
    )
    return reason, detail


def _pair_hash_key() -> pl.Expr:
    """The canonical text of a normalized pair (prompt, chosen, rejected), hashed for duplicates."""
    return pl.concat_str([hash_key_expr(c, normalized=True) for c in ("prompt", *_SIDES)], separator="\x1e")


def curate_pairs(
    candidates: pl.DataFrame,
    day: date,
    cfg: CurationConfig,
    *,
    seen_hashes: Collection[str] | pl.Series = (),
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """(curated pairs in ``PREFERENCE_PAIRS_SCHEMA``, quarantine rows, stats) of one day's candidates.

    ``seen_hashes``: content hashes of pairs other days keep; a pair repeating one is ``duplicate_of_earlier_day``.
    """
    base = _base_rows(candidates)
    norm = base.select("_row", "pair_id", "kind", "member_id", "chosen_title_id", "rejected_title_id")
    for column in ("prompt", *_SIDES):
        norm = norm.join(_normalized(base, column), on="_row", how="left", maintain_order="left")
    for side in _SIDES:
        norm = norm.join(_side_reasons(norm, side, cfg), on="_row", how="left", maintain_order="left")
    rule_reason, rule_detail = _pair_rule(norm)
    norm = norm.with_columns(
        pl.coalesce("_chosen_reason", "_rejected_reason", rule_reason).alias("_reason"),
        pl.when(pl.col("_chosen_reason").is_not_null())
        .then(pl.col("_chosen_detail"))
        .when(pl.col("_rejected_reason").is_not_null())
        .then(pl.col("_rejected_detail"))
        .otherwise(rule_detail)
        .alias("_detail"),
    )
    valid = norm.filter(pl.col("_reason").is_null())
    hashes = stable_hash_hex(valid.select(_pair_hash_key()).to_series(), 64)
    norm = norm.join(valid.select("_row", hashes.alias("content_hash")), on="_row", how="left", maintain_order="left")
    checked = with_duplicate_reasons(norm.with_columns(pl.col("pair_id").alias("conversation_id")), seen_hashes)

    kept = checked.filter(pl.col("_reason").is_null())
    split_key = kept.select(pl.coalesce("member_id", "pair_id")).to_series()
    curated = conform(
        kept.with_columns(pl.lit(day, dtype=pl.Date).alias("day"), assign_splits(split_key, cfg).alias("split")),
        PREFERENCE_PAIRS_SCHEMA,
    )
    quarantine = _quarantine(checked, base, day)
    pii = {
        kind: int(sum(checked[f"_{c}_{kind}"].sum() or 0 for c in ("prompt", *_SIDES))) for kind in ("emails", "phones")
    }
    return curated, quarantine, _stats(base.height, curated, quarantine, pii)


def _quarantine(checked: pl.DataFrame, base: pl.DataFrame, day: date) -> pl.DataFrame:
    """Rejected pairs as given, PII-scrubbed, as JSON payloads of the conversation quarantine contract."""
    bad = checked.filter(pl.col("_reason").is_not_null()).select("_row", "_reason", "_detail")
    bad = bad.join(base, on="_row", how="left", maintain_order="left")
    el = pl.element()
    scrub = [
        pl.col(c).list.eval(pl.struct(role=el.struct.field("role"), content=scrub_pii_expr(el.struct.field("content"))))
        for c in ("prompt", *_SIDES)
    ]
    payload = pl.struct(pl.col("pair_id"), pl.col("kind"), pl.col("member_id"), *scrub).struct.json_encode()
    return conform(
        bad.with_columns(
            pl.col("pair_id").alias("conversation_id"),
            pl.lit(day, dtype=pl.Date).alias("day"),
            pl.col("_reason").alias("reason"),
            pl.col("_detail").alias("detail"),
            payload.alias("payload"),
        ),
        CONVERSATION_QUARANTINE_SCHEMA,
    )


def _stats(rows_in: int, curated: pl.DataFrame, quarantine: pl.DataFrame, pii: dict[str, int]) -> dict[str, int]:
    """Counts per reason and split, every one present (zero when none), so runs compare."""
    stats = {"rows_in": rows_in, "rows_out": curated.height, "quarantined": quarantine.height}
    counts = dict(quarantine.group_by("reason").len().iter_rows())
    for r in (*REASONS, *PAIR_REASONS):
        stats[f"quarantined_{r}"] = int(counts.get(r, 0))
    stats["pii_emails"], stats["pii_phones"] = pii["emails"], pii["phones"]
    by_split = dict(curated.group_by("split").len().iter_rows())
    for s in SPLITS:
        stats[f"split_{s}"] = int(by_split.get(s, 0))
    return stats
