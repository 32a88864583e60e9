"""Tokenize one partition of curated conversations into shard rows + quarantine rows.

Plain functions so the asset, the benchmarks and the tests share one path.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from datetime import date
from itertools import accumulate, chain
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
from transformers import PreTrainedTokenizerBase

from core.masking import (
    DEFAULT_REWRITE_POLICY,
    RewritePolicy,
    encode_with_policy,
    has_special_token_lookalike,
    paused_gc,
    verify_masks,
    verify_serving_prefix,
)
from core.schemas import CONVERSATION_QUARANTINE_SCHEMA, quarantine_frame


def _list_column(lists: list[list[int]], dtype: type[np.generic]) -> pl.Series:
    """A list column from Python lists of ints, built from one flat array (polars' per-row conversion is slower).

    Arrow arrays are assembled from buffers: ``pa.array`` would import pandas (~0.4 s) on first use.
    """
    values = np.fromiter(chain.from_iterable(lists), dtype=dtype, count=sum(map(len, lists)))
    offsets = np.fromiter(accumulate(map(len, lists), initial=0), dtype=np.int64, count=len(lists) + 1)
    item = pa.from_numpy_dtype(values.dtype)
    flat = pa.Array.from_buffers(item, len(values), [None, pa.py_buffer(values)])
    column = pa.LargeListArray.from_buffers(
        pa.large_list(item), len(lists), [None, pa.py_buffer(offsets)], children=[flat]
    )
    return pl.from_arrow(column)  # type: ignore[return-value]


@dataclass
class TokenizedPartition:
    """One partition's shard rows and quarantine.

    ``rows`` has conversation_id, split, input_ids, loss_mask, and for the audits target_turn
    (the one turn an ``expand`` example masks; null for a whole conversation) and as_rendered;
    the shard files keep only the first four. ``counts``: conversations kept whole, expanded
    (and the examples they gave), masked as rendered, and quarantined.
    """

    rows: pl.DataFrame
    quarantine: pl.DataFrame  # CONVERSATION_QUARANTINE_SCHEMA
    seconds: float
    truncated: int = 0
    stats: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def tokenize_conversations(
    tokenizer: PreTrainedTokenizerBase,
    curated: pl.DataFrame,
    day: date,
    *,
    max_length: int | None,
    overlong: Literal["quarantine", "truncate"] = "quarantine",
    rewrite_policy: RewritePolicy = DEFAULT_REWRITE_POLICY,
) -> TokenizedPartition:
    """Render + tokenize + mask every conversation; unmaskable ones become quarantine rows.

    ``rewrite_policy`` acts only on conversations the template rewrites (core.masking.rewrites):
    ``expand`` gives one row per assistant turn, ``as_rendered`` one row masked as rendered,
    ``quarantine`` a quarantine row.
    """
    ordered = curated.sort("conversation_id")
    # The whole Python-object phase runs with the cyclic GC paused (see paused_gc), and its
    # objects (~100k message dicts, the encodings) are dropped before it ends, so the first
    # collection afterwards has nothing left to scan.
    with paused_gc():
        messages = ordered["messages"].to_list()
        start = time.perf_counter()
        outcome = encode_with_policy(
            tokenizer, messages, policy=rewrite_policy, max_length=max_length, overlong=overlong
        )
        seconds = time.perf_counter() - start
        rejects = outcome.rejects
        keep = [x.index for x in outcome.examples]
        kept = [x.encoded for x in outcome.examples]
        rows = pl.DataFrame(
            {
                "conversation_id": ordered["conversation_id"].gather(keep)
                if keep
                else ordered["conversation_id"].head(0),
                "split": ordered["split"].gather(keep) if keep else ordered["split"].head(0),
                "input_ids": _list_column([e.input_ids for e in kept], np.int32),
                "loss_mask": _list_column([e.loss_mask for e in kept], np.uint8),
                "target_turn": pl.Series([x.target_turn for x in outcome.examples], dtype=pl.Int32),
                "as_rendered": pl.Series([x.as_rendered for x in outcome.examples], dtype=pl.Boolean),
            },
        ).cast(
            {
                "conversation_id": pl.String,
                "split": pl.String,
                "input_ids": pl.List(pl.Int32),
                "loss_mask": pl.List(pl.UInt8),
            }
        )
        ids = ordered["conversation_id"].to_list()
        quarantine = quarantine_frame(
            {
                "conversation_id": [ids[i] for i, _, _ in rejects],
                "day": [day] * len(rejects),
                "reason": [reason for _, reason, _ in rejects],
                "detail": [detail for _, _, detail in rejects],
                "payload": [json.dumps({"messages": messages[i]}, ensure_ascii=False) for i, _, _ in rejects],
            },
            CONVERSATION_QUARANTINE_SCHEMA,
        )
        truncated = sum(1 for e in kept if e.truncated)
        del messages, outcome, kept, keep, ids
    return TokenizedPartition(
        rows=rows, quarantine=quarantine, seconds=seconds, truncated=truncated, counts=_counts(rows, quarantine)
    )


def _counts(rows: pl.DataFrame, quarantine: pl.DataFrame) -> dict[str, int]:
    """Conversations kept whole, expanded (and their examples), masked as rendered, and quarantined."""
    turns = rows["target_turn"]
    expanded = rows.filter(turns.is_not_null())
    return {
        "kept": int(turns.is_null().sum()) - int(rows["as_rendered"].sum()),
        "expanded": expanded["conversation_id"].n_unique(),
        "expanded_examples": expanded.height,
        "as_rendered": int(rows["as_rendered"].sum()),
        "quarantined": quarantine.height,
    }


@dataclass
class MaskAudit:
    rows_checked: int
    failures: list[tuple[str, str]]  # (conversation_id, problem)
    lookalike_rows: int = 0


def _with_policy_columns(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with target_turn and as_rendered (null / False where missing: rows read back from shard files)."""
    if "target_turn" not in rows.columns:
        rows = rows.with_columns(pl.lit(None, dtype=pl.Int32).alias("target_turn"))
    if "as_rendered" not in rows.columns:
        rows = rows.with_columns(pl.lit(False).alias("as_rendered"))
    return rows


def audit_masks(
    tokenizer: PreTrainedTokenizerBase,
    rows: pl.DataFrame,
    curated: pl.DataFrame,
    max_length: int | None = None,
) -> MaskAudit:
    """Every row: the masked tokens decode to the assistant contents (+ end-of-turn), in order.

    A row at `max_length` may have been truncated, which only relaxes the check on its last masked run.
    """
    joined = _with_policy_columns(rows).join(
        curated.select("conversation_id", "messages"), on="conversation_id", how="left"
    )
    failures = []
    columns = ("conversation_id", "messages", "input_ids", "loss_mask", "target_turn", "as_rendered")
    for cid, messages, ids, mask, turn, rendered in joined.select(*columns).iter_rows():
        if messages is None:
            failures.append((cid, "row has no curated conversation"))
            continue
        truncated = max_length is not None and len(ids) >= max_length
        problem = verify_masks(
            tokenizer, messages, ids, mask, truncated=truncated, target_turn=turn, as_rendered=bool(rendered)
        )
        if problem:
            failures.append((cid, problem))
    return MaskAudit(rows_checked=joined.height, failures=failures)


def audit_serving(
    tokenizer: PreTrainedTokenizerBase,
    rows: pl.DataFrame,
    curated: pl.DataFrame,
    sample: int,
    max_length: int | None = None,
    seed: int = 0,
    turns: int = 16,
) -> MaskAudit:
    """A deterministic sample (0 = all rows): tokens before each assistant turn == the serving prompt.

    ``turns``: assistant turns checked per row (the first, the last and evenly spaced ones; 0 = all).
    Each check renders and tokenizes the history before its turn, so all turns of a long
    conversation would cost time quadratic in its length.
    """
    joined = _with_policy_columns(rows).join(
        curated.select("conversation_id", "messages"), on="conversation_id", how="inner"
    )
    indices = list(range(joined.height))
    if sample and sample < len(indices):
        indices = sorted(random.Random(seed).sample(indices, sample))
    picked = joined[indices] if indices else joined.head(0)
    failures = []
    lookalikes = 0
    columns = ("conversation_id", "messages", "input_ids", "loss_mask", "target_turn")
    for cid, messages, ids, mask, turn in picked.select(*columns).iter_rows():
        lookalikes += int(has_special_token_lookalike(tokenizer, messages))
        truncated = max_length is not None and len(ids) >= max_length
        problem = verify_serving_prefix(
            tokenizer, messages, ids, mask, truncated=truncated, max_turns=turns, target_turn=turn
        )
        if problem:
            failures.append((cid, problem))
    return MaskAudit(rows_checked=picked.height, failures=failures, lookalike_rows=lookalikes)


def length_stats(rows: pl.DataFrame) -> dict[str, float]:
    if rows.height == 0:
        return {"tokens_p50": 0, "tokens_p95": 0, "tokens_max": 0}
    lengths = rows["input_ids"].list.len()
    return {
        "tokens_p50": float(lengths.quantile(0.5) or 0),
        "tokens_p95": float(lengths.quantile(0.95) or 0),
        "tokens_max": float(lengths.max() or 0),
    }
