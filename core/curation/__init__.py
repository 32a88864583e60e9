"""Curation rules: turn candidate conversations into trustworthy training rows.

Every candidate either comes out curated (normalized, PII-scrubbed, content-hashed,
split assigned) or lands in quarantine with a reason code, a detail naming what
failed, and its payload as JSON. Nothing is dropped silently, so the counts in the
stats always add up: ``rows_in == rows_out + quarantined``.

The hot path is vectorized polars: message lists are processed with element-wise
``list.eval`` (which runs on the flattened values, no group-by), and the structure of
a conversation is checked as a short string of role codes ("suaua") with regexes.
Python loops only compute cryptographic hashes (polars has no stable sha256), in
bounded chunks so memory stays flat.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import polars as pl

from core.ingest import decode_error_detail, escape_surrogates, first_surrogate, has_surrogates, text_encoding
from core.schemas import (
    CONVERSATION_QUARANTINE_SCHEMA,
    CONVERSATIONS_SCHEMA,
    MESSAGES_DTYPE,
    QUARANTINE_PAYLOAD_MAX_CHARS,
    SPLITS,
    conform,
)

ROLES = ("system", "user", "assistant")

# Reason codes -> one-line meaning, in the order they are checked: a row gets the first that applies.
# (Rendered into docs/reason-codes.md by core.reason_docs.)
REASONS: dict[str, str] = {
    "missing_id": "conversation_id is null or empty",
    "empty_conversation": "messages is null or an empty list",
    "too_many_turns": "more messages than max_turns (the cost of tokenizing grows with the turn count)",
    "bad_role": "a role other than system, user or assistant",
    "empty_turn": "a message whose content is empty after normalization",
    "bad_alternation": "not an optional leading system turn followed by user/assistant turns alternating from user",
    "no_assistant_turn": "no assistant message at all",
    "ends_with_user": "the last message is a user turn, so there is nothing to learn from it",
    "too_long": "a message over max_message_chars or the whole conversation over max_conversation_chars",
    "duplicate": "the same normalized content (content hash) as an earlier row of this batch (the day)",
    "duplicate_of_earlier_day": "the text is already kept by another day: the first day to commit a text keeps "
    "it (the name predates days being curated in any order)",
    "duplicate_id": "different content under a conversation_id already used in this batch",
}
# Only produced by parse_external_jsonl (external JSONL conversations), checked in this order.
PARSE_REASONS: dict[str, str] = {
    "encoding_error": "a line's bytes do not decode with CONVERSATION_ENCODING",
    "invalid_unicode": "a string holds a lone surrogate (half of a UTF-16 pair, e.g. a \\ud800 JSON escape)",
    "invalid_json": "the line is not valid JSON",
    "bad_schema": "the JSON is not a conversation: no messages list of role/content strings",
}

_HASH_CHUNK = 100_000
_CURATE_CHUNK = 250_000
# Payload text kept past the quarantine cap until PII is scrubbed, so an address straddling the cut
# is still recognized and replaced before the final cut.
_PII_MARGIN_CHARS = 1024

# --- PII patterns (Rust regex syntax: no look-around, so boundaries use \b) ---------
EMAIL_PATTERN = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
# International numbers must start with "+": this is what keeps years (1995), ratings
# (4.5) and counts out. US numbers need the 3-3-4 grouping with separators.
_INTL_PHONE = r"\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .\-]?\d{2,4}){2,5}\b"
_US_PHONE = r"(?:\b1[ .\-]?)?(?:\(\d{3}\) ?|\b\d{3}[ .\-])\d{3}[ .\-]\d{4}\b"
PHONE_PATTERN = f"(?:{_INTL_PHONE})|(?:{_US_PHONE})"
EMAIL_TOKEN = "[EMAIL]"
PHONE_TOKEN = "[PHONE]"


@dataclass(frozen=True)
class CurationConfig:
    """Bounds and split settings of curation.

    ``split_salt`` is part of the split hash: changing it reshuffles every member, so
    it is versioned ("split-v1") and should only change together with a new dataset
    version.
    """

    max_message_chars: int = 4000
    max_conversation_chars: int = 16000
    # Messages per conversation, system turn included. The character bounds do not bound the turn count
    # (10,000 one-word turns fit in 16,000 characters), and per-turn work downstream (serving-prompt
    # checks, masks) grows with it. 64 is far above what the demo builds (system + 4 exchanges = 9).
    max_turns: int = 64
    min_content_chars: int = 1
    split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
    split_salt: str = "split-v1"

    def __post_init__(self) -> None:
        fr = self.split_fractions
        if len(fr) != len(SPLITS) or any(f < 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-9):
            raise ValueError(
                f"split_fractions={fr!r} must be {len(SPLITS)} non-negative numbers for {SPLITS} that sum to 1.0"
            )
        if self.min_content_chars < 1:
            raise ValueError(f"min_content_chars={self.min_content_chars} must be >= 1 (empty turns are rejects)")
        if self.max_turns < 2:
            raise ValueError(f"max_turns={self.max_turns} must be >= 2 (a user and an assistant message)")
        if self.max_message_chars < self.min_content_chars or self.max_conversation_chars < 1:
            raise ValueError(
                f"max_message_chars={self.max_message_chars} and max_conversation_chars="
                f"{self.max_conversation_chars} must be positive and >= min_content_chars"
            )


# --------------------------------------------------------------------------- hashing


def sha256_hex(values: Iterable[str | None], length: int = 64) -> list[str | None]:
    """sha256 hex digests (truncated to ``length``); None stays None."""
    return [None if v is None else hashlib.sha256(v.encode("utf-8")).hexdigest()[:length] for v in values]


def _chunked_series_map(s: pl.Series, fn: Any, dtype: pl.DataType) -> pl.Series:
    """Apply a Python list function chunk by chunk, bounding the Python objects alive."""
    parts = [
        pl.Series(s.name, fn(s.slice(i, _HASH_CHUNK).to_list()), dtype=dtype) for i in range(0, len(s), _HASH_CHUNK)
    ]
    return pl.concat(parts) if parts else pl.Series(s.name, [], dtype=dtype)


def stable_hash_hex(s: pl.Series, length: int = 32) -> pl.Series:
    """Per-row sha256 hex of a string column: stable across processes and polars versions
    (``pl.Expr.hash`` is not), which ids and splits require."""
    return _chunked_series_map(s.cast(pl.String), lambda vs: sha256_hex(vs, length), pl.String)


def stable_hash_u64(s: pl.Series) -> pl.Series:
    """Per-row 64-bit integer from sha256 of a string column (null -> null)."""

    def _fn(vs: list[str | None]) -> list[int | None]:
        return [
            None if v is None else int.from_bytes(hashlib.sha256(v.encode("utf-8")).digest()[:8], "big") for v in vs
        ]

    return _chunked_series_map(s.cast(pl.String), _fn, pl.UInt64)


def _hash_key_expr(col: str | pl.Expr, *, normalized: bool = False) -> pl.Expr:
    """The canonical, normalization-insensitive text of a conversation: JSON of the
    messages with role stripped/lowercased and content NFC, casefolded and with every
    whitespace run collapsed to one space.

    ``normalized=True`` is a fast path for messages that already went through
    ``normalize_text_expr`` (NFC, single spaces, no space next to a newline): the
    result is the same, without a second NFC pass.
    """
    c = pl.col(col) if isinstance(col, str) else col
    el = pl.element()
    role = el.struct.field("role")
    content = el.struct.field("content")
    if normalized:
        text = content.str.to_lowercase().str.replace_all(r"\n+", " ")
    else:
        role = role.str.strip_chars().str.to_lowercase()
        text = content.str.normalize("NFC").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()
    canon = c.list.eval(pl.struct(role=role, content=text))
    return pl.struct(canon.alias("m")).struct.json_encode()


def content_hash_expr(col: str | pl.Expr = "messages") -> pl.Expr:
    """Expression: sha256 hex of the normalized messages (see ``_hash_key_expr``).

    Applied to curated rows it reproduces their ``content_hash`` column, so asset
    checks and later days can recompute it.
    """
    return _hash_key_expr(col).map_batches(lambda s: stable_hash_hex(s, 64), return_dtype=pl.String)


def content_hash(messages: Sequence[dict[str, Any]]) -> str:
    """sha256 hex of one conversation, identical to ``content_hash_expr`` by construction."""
    df = pl.DataFrame({"messages": [list(messages)]}, schema={"messages": MESSAGES_DTYPE})
    return df.select(content_hash_expr("messages")).item()


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


# ------------------------------------------------------------------- normalization


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


def scrub_pii_expr(e: pl.Expr) -> pl.Expr:
    """Replace emails with [EMAIL] and phone numbers with [PHONE] (emails first, so the
    digits of an address are never taken for a phone)."""
    return e.str.replace_all(EMAIL_PATTERN, EMAIL_TOKEN).str.replace_all(PHONE_PATTERN, PHONE_TOKEN)


# -------------------------------------------------------------------------- curate


# Text that normalization would change: anything but printable ASCII and "\n" (covers
# tabs, CR, control and all non-ASCII chars, which may need NFC), whitespace at the
# ends, double spaces, spaces next to newlines, 3+ newlines.
_DIRTY_PATTERN = r"[^\x20-\x7E\n]|^\s|\s$|  | \n|\n |\n\n\n"


def _where(df: pl.DataFrame, mask: pl.Expr, col: str, expr: pl.Expr) -> pl.DataFrame:
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


def _normalize_messages(df: pl.DataFrame) -> pl.DataFrame:
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
    df = _where(df, dirty, "_norm", normalized.cast(MESSAGES_DTYPE))
    # Count emails, then phones on email-scrubbed text (an address's digits are not a phone).
    n_mail = pl.col("_norm").list.eval(content.str.count_matches(EMAIL_PATTERN)).list.sum()
    df = df.with_columns(n_mail.fill_null(0).cast(pl.Int64).alias("_emails"))
    no_mail = content.str.replace_all(EMAIL_PATTERN, EMAIL_TOKEN)
    df = _where(df, pl.col("_emails") > 0, "_norm", pl.col("_norm").list.eval(pl.struct(role=role, content=no_mail)))
    n_phone = pl.col("_norm").list.eval(content.str.count_matches(PHONE_PATTERN)).list.sum()
    df = df.with_columns(n_phone.fill_null(0).cast(pl.Int64).alias("_phones"))
    no_phone = content.str.replace_all(PHONE_PATTERN, PHONE_TOKEN)
    return _where(df, pl.col("_phones") > 0, "_norm", pl.col("_norm").list.eval(pl.struct(role=role, content=no_phone)))


def _checked_rows(candidates: pl.DataFrame, cfg: CurationConfig) -> pl.DataFrame:
    """Normalize every row and decide its structural reason (null when it passes)."""
    el = pl.element()
    df = _normalize_messages(candidates)

    role = el.struct.field("role")
    code = (
        pl.when(role == "system")
        .then(pl.lit("s"))
        .when(role == "user")
        .then(pl.lit("u"))
        .when(role == "assistant")
        .then(pl.lit("a"))
        .otherwise(pl.lit("x"))
    )
    lens = pl.col("_norm").list.eval(el.struct.field("content").str.len_chars())
    df = df.with_columns(
        pl.col("_norm").list.eval(code).list.join("").alias("_codes"),
        lens.list.eval(el < cfg.min_content_chars).list.arg_max().alias("_first_empty"),
        lens.list.eval(el < cfg.min_content_chars).list.any().alias("_has_empty"),
        lens.list.max().alias("_max_len"),
        lens.list.arg_max().alias("_argmax_len"),
        lens.list.sum().alias("_total_len"),
        pl.col("messages").list.eval(role.cast(pl.String)).alias("_raw_roles"),
    )
    codes = pl.col("_codes")
    has_sys = codes.str.starts_with("s")
    rest = pl.when(has_sys).then(codes.str.slice(1)).otherwise(codes)
    # Longest valid alternating prefix of the turns after the optional system turn.
    valid_prefix = rest.str.extract(r"^((?:ua)*u?)", 1).str.len_chars()
    df = df.with_columns(
        has_sys.alias("_has_sys"),
        rest.str.len_chars().alias("_rest_len"),
        valid_prefix.alias("_valid_prefix"),
    )
    bad_idx = pl.col("_valid_prefix") + pl.col("_has_sys").cast(pl.UInt32)  # 0-based message index
    expected = pl.when(pl.col("_valid_prefix") % 2 == 0).then(pl.lit("user")).otherwise(pl.lit("assistant"))
    first_x = codes.str.find("x")
    nmsg = pl.col("messages").list.len()
    cid = pl.col("conversation_id")

    reason = (
        pl.when(cid.is_null() | (cid.str.strip_chars() == ""))
        .then(pl.lit("missing_id"))
        .when(pl.col("messages").is_null() | (nmsg == 0))
        .then(pl.lit("empty_conversation"))
        .when(nmsg > cfg.max_turns)
        .then(pl.lit("too_many_turns"))
        .when(first_x.is_not_null())
        .then(pl.lit("bad_role"))
        .when(pl.col("_has_empty"))
        .then(pl.lit("empty_turn"))
        .when(pl.col("_valid_prefix") < pl.col("_rest_len"))
        .then(pl.lit("bad_alternation"))
        .when(~codes.str.contains("a", literal=True))
        .then(pl.lit("no_assistant_turn"))
        .when(codes.str.ends_with("u"))
        .then(pl.lit("ends_with_user"))
        .when((pl.col("_max_len") > cfg.max_message_chars) | (pl.col("_total_len") > cfg.max_conversation_chars))
        .then(pl.lit("too_long"))
    )
    raw_role_at_x = pl.col("_raw_roles").list.get(first_x.fill_null(0).cast(pl.Int64), null_on_oob=True)
    detail = (
        pl.when(pl.col("_reason") == "missing_id")
        .then(pl.lit("conversation_id is null or empty; the producer must give every conversation an id"))
        .when(pl.col("_reason") == "empty_conversation")
        .then(pl.lit("messages is null or an empty list; a conversation needs at least a user and an assistant turn"))
        .when(pl.col("_reason") == "too_many_turns")
        .then(
            pl.format(
                "conversation has {} messages, over max_turns={}; split it into shorter conversations",
                nmsg,
                pl.lit(cfg.max_turns),
            )
        )
        .when(pl.col("_reason") == "bad_role")
        .then(
            pl.format(
                "message {} has role {}; allowed roles are system, user, assistant",
                first_x + 1,
                pl.when(raw_role_at_x.is_null())
                .then(pl.lit("null"))
                .otherwise(pl.lit("'") + raw_role_at_x + pl.lit("'")),
            )
        )
        .when(pl.col("_reason") == "empty_turn")
        .then(
            pl.format(
                "message {} is shorter than min_content_chars={} after whitespace normalization",
                pl.col("_first_empty") + 1,
                pl.lit(cfg.min_content_chars),
            )
        )
        .when(pl.col("_reason") == "bad_alternation")
        .then(
            pl.format(
                "message {} has role '{}' where '{}' was expected: after an optional leading system turn, "
                "user and assistant must alternate starting with user",
                bad_idx + 1,
                pl.col("_norm").list.get(bad_idx.cast(pl.Int64), null_on_oob=True).struct.field("role"),
                expected,
            )
        )
        .when(pl.col("_reason") == "no_assistant_turn")
        .then(pl.lit("no assistant turn; there is nothing to train on"))
        .when(pl.col("_reason") == "ends_with_user")
        .then(
            pl.format(
                "last message ({} of {}) is a user turn with no assistant answer; drop it or add the answer",
                nmsg,
                nmsg,
            )
        )
        .when((pl.col("_reason") == "too_long") & (pl.col("_max_len") > cfg.max_message_chars))
        .then(
            pl.format(
                "message {} has {} characters, over max_message_chars={}",
                pl.col("_argmax_len") + 1,
                pl.col("_max_len"),
                pl.lit(cfg.max_message_chars),
            )
        )
        .when(pl.col("_reason") == "too_long")
        .then(
            pl.format(
                "conversation has {} characters in total, over max_conversation_chars={}",
                pl.col("_total_len"),
                pl.lit(cfg.max_conversation_chars),
            )
        )
    )
    df = df.with_columns(reason.alias("_reason"))
    df = df.with_columns(detail.alias("_detail"))
    return df.drop(
        "_codes",
        "_first_empty",
        "_has_empty",
        "_max_len",
        "_argmax_len",
        "_total_len",
        "_raw_roles",
        "_has_sys",
        "_rest_len",
        "_valid_prefix",
    )


def _with_payload(bad: pl.DataFrame) -> pl.DataFrame:
    """Add ``payload``: the raw row as JSON, messages as given except PII-scrubbed (only
    rows where PII was found are rewritten), so quarantine never keeps what curated
    rows are scrubbed of."""
    el = pl.element()
    scrubbed = pl.col("messages").list.eval(
        pl.struct(role=el.struct.field("role"), content=scrub_pii_expr(el.struct.field("content")))
    )
    bad = _where(bad, (pl.col("_emails") + pl.col("_phones")) > 0, "messages", scrubbed.cast(MESSAGES_DTYPE))
    payload = pl.struct("conversation_id", "kind", "member_id", "messages").struct.json_encode()
    return bad.with_columns(payload.alias("payload"))


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
    need = ("conversation_id", "kind", "member_id", "messages")
    missing = [c for c in need if c not in candidates.columns]
    if missing:
        raise ValueError(
            f"candidates frame is missing columns {missing} (it has {candidates.columns}); "
            "build it with core.conversation_builder or parse_external_jsonl"
        )
    try:
        base = candidates.select(
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
    rows_in = base.height

    # Rules and hashing run in bounded chunks: the intermediate copies of the text stay
    # small, and rows that need no rewriting keep sharing the input's buffers.
    parts = []
    for off in range(0, max(rows_in, 1), _CURATE_CHUNK):
        chunk = _checked_rows(base.slice(off, _CURATE_CHUNK), cfg)
        valid = chunk.filter(pl.col("_reason").is_null())
        hashes = stable_hash_hex(valid.select(_hash_key_expr("_norm", normalized=True)).to_series(), 64)
        valid = valid.select("_row", hashes.alias("content_hash"))
        parts.append(
            chunk.select("_row", "_norm", "_reason", "_detail", "_emails", "_phones").join(
                valid, on="_row", how="left", maintain_order="left"
            )
        )
    df = pl.concat(
        [base.select("_row", "conversation_id", "kind", "member_id"), pl.concat(parts).drop("_row")],
        how="horizontal",
    )
    pii_emails = int(df.get_column("_emails").sum() or 0)
    pii_phones = int(df.get_column("_phones").sum() or 0)

    # Dedupe among the structurally valid rows, in input order.
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
    df = df.join(ok, on="_row", how="left", maintain_order="left").with_columns(
        pl.coalesce("_reason", "_dup_reason").alias("_reason"),
        pl.coalesce("_detail", "_dup_detail").alias("_detail"),
    )

    kept = df.filter(pl.col("_reason").is_null())
    split_key = pl.coalesce("member_id", "conversation_id")
    kept = kept.with_columns(
        pl.lit(day, dtype=pl.Date).alias("day"),
        assign_splits(kept.select(split_key).to_series(), cfg).alias("split"),
        pl.col("_norm").alias("messages"),
    )
    curated = conform(kept, CONVERSATIONS_SCHEMA)

    bad = df.filter(pl.col("_reason").is_not_null()).join(
        base.select("_row", "messages"), on="_row", how="left", maintain_order="left"
    )
    quarantine = conform(
        _with_payload(bad).with_columns(
            pl.lit(day, dtype=pl.Date).alias("day"),
            pl.col("_reason").alias("reason"),
            pl.col("_detail").alias("detail"),
        ),
        CONVERSATION_QUARANTINE_SCHEMA,
    )

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
    return curated, quarantine, stats


# ------------------------------------------------------------------ external JSONL


def _external_messages(obj: Any) -> tuple[list[dict[str, str]] | None, str | None, str]:
    """Validate one decoded JSONL object: (messages, member_id, error)."""
    if not isinstance(obj, dict):
        return None, None, f"expected a JSON object with a 'messages' list, got {type(obj).__name__}"
    msgs = obj.get("messages")
    if not isinstance(msgs, list):
        return (
            None,
            None,
            f"'messages' must be a list of {{role, content}} objects, got {type(msgs).__name__}",
        )
    out: list[dict[str, str]] = []
    for i, m in enumerate(msgs, start=1):
        if not isinstance(m, dict):
            return None, None, f"message {i} must be an object with string 'role' and 'content'"
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            return (
                None,
                None,
                f"message {i} must have string 'role' and 'content' (got role={type(role).__name__}, "
                f"content={type(content).__name__})",
            )
        out.append({"role": role, "content": content})
    member = obj.get("member_id")
    if member is not None and not isinstance(member, str):
        return None, None, f"'member_id' must be a string or null, got {type(member).__name__}"
    return out, member, ""


def _surrogate_field(messages: list[dict[str, str]], member: str | None) -> str | None:
    """Which decoded field holds a lone surrogate (a JSON escape such as \\ud800 that json.loads accepts)."""
    for i, m in enumerate(messages, start=1):
        for key in ("role", "content"):
            if has_surrogates(m[key]):
                return f"message {i} {key}"
    if member is not None and has_surrogates(member):
        return "member_id"
    return None


def _jsonl_encoding(encoding: str) -> str:
    """The canonical codec name; refuses codecs that do not keep newline as the byte 0x0a, because the
    caller splits the file into lines before decoding (UTF-16/32 would split mid-character).

    Checked past the encoder's first output: utf-8-sig writes a byte order mark there and is otherwise
    UTF-8 (one byte per newline), so it is a JSONL encoding; UTF-16/32 widen every character.
    """
    name = text_encoding(encoding, "encoding")
    sample = '\n{"a"}'
    encoder = codecs.getincrementalencoder(name)()
    encoder.encode("")  # where a codec writes its byte order mark, if it has one
    try:
        decoded = sample.encode("ascii").decode(name)
    except UnicodeDecodeError:
        decoded = None
    if encoder.encode(sample) != sample.encode("ascii") or decoded != sample:
        raise ValueError(
            f"encoding {encoding!r} does not write newline and ASCII as single bytes, so a JSONL file in it "
            "cannot be read one line per record; convert the file to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"
        )
    return name


def parse_external_jsonl(
    lines: Iterable[str | bytes], day: date, source: str, encoding: str = "utf-8"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parse landing-area JSONL (``{"messages": [...], "member_id"?: str}`` per line).

    Returns (candidate rows with kind ``external`` ready for ``curate``, quarantine rows). One bad
    line never fails the file: a line is quarantined, with ``source:line`` in the detail, when its
    bytes do not decode strictly with ``encoding`` (``encoding_error``; ``bytes`` lines only), when it
    holds lone surrogates, raw or as JSON escapes (``invalid_unicode``: they are not text and cannot be
    hashed or stored), when it is not JSON (``invalid_json``) or not the messages format
    (``bad_schema``). Records are the non-blank lines; blank lines are skipped and counted nowhere.

    The conversation_id hashes the member and the messages, not the source file, so the same record
    dropped twice gets the same id (and is caught as a duplicate).
    """
    codec = _jsonl_encoding(encoding)
    keep = QUARANTINE_PAYLOAD_MAX_CHARS + _PII_MARGIN_CHARS  # scrub PII before the final cut
    ids: list[str] = []
    members: list[str | None] = []
    messages: list[list[dict[str, str]]] = []
    q_rows: list[tuple[str, str, str, int]] = []  # (reason, detail, payload, original length)

    def reject(reason: str, lineno: int, detail: str, payload: str) -> None:
        q_rows.append((reason, f"{source}:{lineno}: {detail}", payload[:keep], len(payload)))

    for lineno, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                text = raw.decode(codec)
            except UnicodeDecodeError as exc:
                reject(
                    "encoding_error",
                    lineno,
                    f"{decode_error_detail(exc, codec)}; the line was not read. If the whole file uses another "
                    "encoding, set CONVERSATION_ENCODING (e.g. latin-1 or cp1252); otherwise fix or remove the line",
                    raw.decode(codec, errors="backslashreplace").strip(),
                )
                continue
        else:
            text = raw
        line = text.strip().lstrip("\ufeff")  # a UTF-8 BOM on the first line is not content
        if not line:
            continue
        at = first_surrogate(line)
        if at is not None:
            reject(
                "invalid_unicode",
                lineno,
                f"the line holds a lone surrogate code point at character {at + 1} (undecodable bytes read "
                "with errors='surrogateescape', or half of a UTF-16 pair); it is not text and cannot be stored. "
                "Pass the file's lines as bytes, or fix the producer",
                escape_surrogates(line),
            )
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, too-long integers, too-deep nesting
            reject("invalid_json", lineno, f"not valid JSON ({str(exc)[:200]}); fix or remove the line", line)
            continue
        msgs, member, err = _external_messages(obj)
        if msgs is None:
            reject("bad_schema", lineno, err, line)
            continue
        where = _surrogate_field(msgs, member)
        if where is not None:
            reject(
                "invalid_unicode",
                lineno,
                f"{where} holds a lone surrogate (a \\uD800-\\uDFFF JSON escape that is half of a UTF-16 "
                "pair, not a character); the producer must escape whole characters (both halves of the pair)",
                line,
            )
            continue
        key = json.dumps(
            {"kind": "external", "member_id": member, "messages": msgs},
            ensure_ascii=False,
            sort_keys=True,
            separators=(",", ":"),
        )
        ids.append(hashlib.sha256(key.encode("utf-8")).hexdigest()[:32])
        members.append(member)
        messages.append(msgs)
    candidates = pl.DataFrame(
        {
            "conversation_id": ids,
            "day": [day] * len(ids),
            "kind": ["external"] * len(ids),
            "member_id": members,
            "messages": messages,
        },
        schema={
            "conversation_id": pl.String,
            "day": pl.Date,
            "kind": pl.String,
            "member_id": pl.String,
            "messages": MESSAGES_DTYPE,
        },
    )
    rejected = pl.DataFrame(
        {
            "conversation_id": [None] * len(q_rows),
            "day": [day] * len(q_rows),
            "reason": [r[0] for r in q_rows],
            "detail": [r[1] for r in q_rows],
            "payload": [r[2] for r in q_rows],
            "payload_chars": [r[3] for r in q_rows],
        },
        schema={
            "conversation_id": pl.String,
            "day": pl.Date,
            "reason": pl.String,
            "detail": pl.String,
            "payload": pl.String,
            "payload_chars": pl.Int64,
        },
    ).with_columns(scrub_pii_expr(pl.col("payload")).alias("payload"))
    return candidates, conform(rejected, CONVERSATION_QUARANTINE_SCHEMA)
