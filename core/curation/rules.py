"""The structural rules: which reason code (if any) a normalized conversation gets, and why.

The structure of a conversation is checked as a short string of role codes ("suaua")
with regexes, so every rule is a vectorized expression; a row gets the first reason of
``REASONS`` that applies, with a detail naming the message that failed.
"""

from __future__ import annotations

import polars as pl

from core.curation.config import CurationConfig
from core.curation.normalize import normalize_messages


def checked_rows(candidates: pl.DataFrame, cfg: CurationConfig) -> pl.DataFrame:
    """Normalize every row and decide its structural reason (null when it passes)."""
    el = pl.element()
    df = normalize_messages(candidates)

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
