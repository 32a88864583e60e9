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
    encode_batch,
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
    rows: pl.DataFrame  # conversation_id, split, input_ids, loss_mask
    quarantine: pl.DataFrame  # CONVERSATION_QUARANTINE_SCHEMA
    seconds: float
    truncated: int = 0
    stats: dict[str, float] = field(default_factory=dict)


def tokenize_conversations(
    tokenizer: PreTrainedTokenizerBase,
    curated: pl.DataFrame,
    day: date,
    *,
    max_length: int | None,
    overlong: Literal["quarantine", "truncate"] = "quarantine",
) -> TokenizedPartition:
    """Render + tokenize + mask every conversation; unmaskable ones become quarantine rows."""
    ordered = curated.sort("conversation_id")
    # The whole Python-object phase runs with the cyclic GC paused (see paused_gc), and its
    # objects (~100k message dicts, the encodings) are dropped before it ends, so the first
    # collection afterwards has nothing left to scan.
    with paused_gc():
        messages = ordered["messages"].to_list()
        start = time.perf_counter()
        encoded, rejects = encode_batch(tokenizer, messages, max_length=max_length, overlong=overlong)
        seconds = time.perf_counter() - start
        keep = [i for i, e in enumerate(encoded) if e is not None]
        kept = [e for e in encoded if e is not None]
        rows = pl.DataFrame(
            {
                "conversation_id": ordered["conversation_id"].gather(keep)
                if keep
                else ordered["conversation_id"].head(0),
                "split": ordered["split"].gather(keep) if keep else ordered["split"].head(0),
                "input_ids": _list_column([e.input_ids for e in kept], np.int32),
                "loss_mask": _list_column([e.loss_mask for e in kept], np.uint8),
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
        del messages, encoded, kept, keep, ids
    return TokenizedPartition(rows=rows, quarantine=quarantine, seconds=seconds, truncated=truncated)


@dataclass
class MaskAudit:
    rows_checked: int
    failures: list[tuple[str, str]]  # (conversation_id, problem)
    lookalike_rows: int = 0


def audit_masks(
    tokenizer: PreTrainedTokenizerBase,
    rows: pl.DataFrame,
    curated: pl.DataFrame,
    max_length: int | None = None,
) -> MaskAudit:
    """Every row: the masked tokens decode to the assistant contents (+ end-of-turn), in order.

    A row at `max_length` may have been truncated, which only relaxes the check on its last masked run.
    """
    joined = rows.join(curated.select("conversation_id", "messages"), on="conversation_id", how="left")
    failures = []
    for cid, messages, ids, mask in joined.select("conversation_id", "messages", "input_ids", "loss_mask").iter_rows():
        if messages is None:
            failures.append((cid, "row has no curated conversation"))
            continue
        truncated = max_length is not None and len(ids) >= max_length
        problem = verify_masks(tokenizer, messages, ids, mask, truncated=truncated)
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
    joined = rows.join(curated.select("conversation_id", "messages"), on="conversation_id", how="inner")
    indices = list(range(joined.height))
    if sample and sample < len(indices):
        indices = sorted(random.Random(seed).sample(indices, sample))
    picked = joined[indices] if indices else joined.head(0)
    failures = []
    lookalikes = 0
    for cid, messages, ids, mask in picked.select("conversation_id", "messages", "input_ids", "loss_mask").iter_rows():
        lookalikes += int(has_special_token_lookalike(tokenizer, messages))
        truncated = max_length is not None and len(ids) >= max_length
        problem = verify_serving_prefix(tokenizer, messages, ids, mask, truncated=truncated, max_turns=turns)
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
