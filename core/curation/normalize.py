"""Normalization of messages: roles, NFC, newlines, control characters, whitespace, PII.

Messages are processed with element-wise ``list.eval``, which runs on the flattened
values (no group-by).
"""

from __future__ import annotations

import polars as pl

from core.curation.pii import EMAIL_PATTERN, EMAIL_TOKEN, PHONE_PATTERN, PHONE_TOKEN
from core.schemas import MESSAGES_DTYPE

ROLES = ("system", "user", "assistant")

# Text that normalization would change: anything but printable ASCII and "\n" (covers
# tabs, CR, control and all non-ASCII chars, which may need NFC), whitespace at the
# ends, double spaces, spaces next to newlines, 3+ newlines.
_DIRTY_PATTERN = r"[^\x20-\x7E\n]|^\s|\s$|  | \n|\n |\n\n\n"


def normalize_text_expr(e: pl.Expr) -> pl.Expr:
    """NFC, newline normalization, control-char removal, whitespace collapsing.

    Runs of spaces/tabs become one space, spaces around newlines go, single newlines are
    kept and runs of 3+ newlines shrink to one blank line; ends are stripped.
    """
    return (
        e.str.normalize("NFC")
        .str.replace_all(r"\r\n?|[\u2028\u2029\x85]", "\n")
        .str.replace_all(r"[\x00-\x08\x0E-\x1F\x7F\u200B\uFEFF]", "")
        .str.replace_all(r"[^\S\n]+", " ")
        .str.replace_all(r" ?\n ?", "\n")
        .str.replace_all(r"\n{3,}", "\n\n")
        .str.strip_chars()
    )


def rewrite_where(df: pl.DataFrame, mask: pl.Expr, col: str, expr: pl.Expr) -> pl.DataFrame:
    """``col = expr`` only on rows where ``mask`` holds, order kept.

    String passes over a whole day of text dominate curation; most rows need none, so
    the expensive expression runs on the subset and the two sorted halves are merged.
    """
    df = df.with_columns(mask.fill_null(True).alias("_mask"))
    hit = df.filter(pl.col("_mask"))
    if hit.height == 0:
        return df.drop("_mask")
    hit = hit.with_columns(expr.alias(col))
    miss = df.filter(~pl.col("_mask"))
    if miss.height == 0:
        return hit.drop("_mask")
    return miss.merge_sorted(hit, key="_row").drop("_mask")


def normalize_messages(df: pl.DataFrame) -> pl.DataFrame:
    """Add ``_norm`` (normalized, PII-scrubbed messages), ``_emails`` and ``_phones``."""
    el = pl.element()
    role, content = el.struct.field("role"), el.struct.field("content")
    df = df.with_columns(pl.col("messages").alias("_norm"))
    dirty = (
        pl.col("messages")
        .list.eval(~role.is_in(list(ROLES)).fill_null(False) | content.is_null() | content.str.contains(_DIRTY_PATTERN))
        .list.any()
    )
    normalized = pl.col("messages").list.eval(
        pl.struct(
            role=role.str.strip_chars().str.to_lowercase(),
            content=normalize_text_expr(content.fill_null("")),
        )
    )
    df = rewrite_where(df, dirty, "_norm", normalized.cast(MESSAGES_DTYPE))
    # Count emails, then phones on email-scrubbed text (an address's digits are not a phone).
    n_mail = pl.col("_norm").list.eval(content.str.count_matches(EMAIL_PATTERN)).list.sum()
    df = df.with_columns(n_mail.fill_null(0).cast(pl.Int64).alias("_emails"))
    no_mail = content.str.replace_all(EMAIL_PATTERN, EMAIL_TOKEN)
    df = rewrite_where(
        df, pl.col("_emails") > 0, "_norm", pl.col("_norm").list.eval(pl.struct(role=role, content=no_mail))
    )
    n_phone = pl.col("_norm").list.eval(content.str.count_matches(PHONE_PATTERN)).list.sum()
    df = df.with_columns(n_phone.fill_null(0).cast(pl.Int64).alias("_phones"))
    no_phone = content.str.replace_all(PHONE_PATTERN, PHONE_TOKEN)
    return rewrite_where(
        df, pl.col("_phones") > 0, "_norm", pl.col("_norm").list.eval(pl.struct(role=role, content=no_phone))
    )
