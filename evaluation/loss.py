"""Held-out masked loss by split and kind.

Cross-entropy over loss-mask tokens only, with exactly the training definition (token t is
predicted from tokens < t and counts where ``loss_mask[t] == 1``), summed in float64 per
conversation so callers can aggregate by split and by conversation kind without a mean of means.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import torch
import torch.nn.functional as F

from evaluation.heldout import HELDOUT_SPLITS
from evaluation.models import model_device
from evaluation.skips import Skipped, count_reasons


@dataclass
class LossTotals:
    """Loss sums of a set of rows; per-row arrays are aligned with the input rows.

    Skipped rows have 0 in both per-row arrays and an entry in ``skipped``.
    """

    loss_sum: float
    loss_tokens: int
    row_loss_sum: np.ndarray  # float64
    row_loss_tokens: np.ndarray  # int64
    skipped: list[Skipped] = field(default_factory=list)
    skipped_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    tokens: int = 0  # real (non-pad) tokens run through the model
    padded_tokens: int = 0  # batch cells computed, pads included
    seconds: float = 0.0

    @property
    def mean_loss(self) -> float | None:
        return self.loss_sum / self.loss_tokens if self.loss_tokens else None


def _list_column(rows: pl.DataFrame, name: str, dtype: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat values, offsets, is_null) of a list column, without a Python object per token."""
    if name not in rows.columns:
        raise ValueError(f"rows need a {name!r} column (shard rows: conversation_id, input_ids, loss_mask)")
    arr = rows.get_column(name).rechunk().to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    is_null = arr.is_null().to_numpy(zero_copy_only=False)
    lengths = arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(dtype)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return flat, offsets, is_null


def _row_counts(flags: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per row, how many ``flags[starts[i]:ends[i]]`` are true (vectorized)."""
    cumulative = np.zeros(len(flags) + 1, dtype=np.int64)
    np.cumsum(flags, out=cumulative[1:])
    return cumulative[ends] - cumulative[starts]


def _length_batches(lengths: np.ndarray, order: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Rows (longest first) grouped so rows x longest length stays within batch_tokens."""
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, batch_tokens // max(longest, 1))
        batches.append(order[start : start + size])
        start += size
    return batches


@torch.no_grad()
def masked_loss(
    model: torch.nn.Module,
    rows: pl.DataFrame,
    *,
    batch_tokens: int = 4096,
    device: str | torch.device | None = None,
    vocab_size: int | None = None,
) -> LossTotals:
    """Held-out cross-entropy over loss-mask tokens, exactly as training defines it.

    ``rows`` has ``input_ids`` and ``loss_mask`` list columns (``conversation_id``
    optional, used to name skipped rows). Rows are sorted by length and right-padded
    into batches of at most ``batch_tokens`` cells, with an attention mask; padding sits
    after every real token, so causal attention makes the result equal to running each
    conversation alone. Token losses are computed in fp32 and summed in float64.
    Malformed rows are skipped with a reason, never crash the batch.
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    start_time = time.perf_counter()
    device = torch.device(device) if device is not None else model_device(model)
    vocab = vocab_size or int(model.get_input_embeddings().num_embeddings)
    ids_flat, offsets, ids_null = _list_column(rows, "input_ids", np.int64)
    mask_flat, mask_offsets, mask_null = _list_column(rows, "loss_mask", np.int64)
    n = rows.height
    keys = rows["conversation_id"].cast(pl.String).to_list() if "conversation_id" in rows.columns else None
    lengths = np.diff(offsets)
    skipped: list[Skipped] = []
    bad = np.zeros(n, dtype=bool)
    bad_tokens = _row_counts((ids_flat < 0) | (ids_flat >= vocab), offsets[:-1], offsets[1:])
    for i in range(n):
        key = keys[i] if keys is not None else f"row {i}"
        if ids_null[i] or mask_null[i]:
            skipped.append(Skipped(key, "null_row", f"row {i}: input_ids or loss_mask is null"))
        elif lengths[i] != mask_offsets[i + 1] - mask_offsets[i]:
            skipped.append(
                Skipped(
                    key,
                    "length_mismatch",
                    f"row {i}: {lengths[i]} input_ids but {mask_offsets[i + 1] - mask_offsets[i]} loss_mask "
                    "entries; re-tokenize this partition",
                )
            )
        elif lengths[i] and bad_tokens[i]:
            row_ids = ids_flat[offsets[i] : offsets[i + 1]]
            worst = int(row_ids[(row_ids < 0) | (row_ids >= vocab)][0])
            skipped.append(
                Skipped(
                    key,
                    "token_out_of_vocab",
                    f"row {i}: token id {worst} is outside the model's vocabulary of {vocab}; evaluate with "
                    "the model whose tokenizer made these shards",
                )
            )
        else:
            continue
        bad[i] = True

    # Targets: token t counts where mask[t] == 1 and t >= 1 (the first token has no context).
    first_target = np.minimum(mask_offsets[:-1] + 1, mask_offsets[1:])
    row_tokens = np.where(bad, 0, _row_counts(mask_flat == 1, first_target, mask_offsets[1:]))
    row_sum = np.zeros(n, dtype=np.float64)
    todo = np.nonzero(row_tokens > 0)[0]
    order = todo[np.argsort(-lengths[todo], kind="stable")]
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None)
    pad_id = pad_id if isinstance(pad_id, int) and 0 <= pad_id < vocab else 0
    was_training = model.training
    model.eval()
    tokens = padded = 0
    try:
        for batch in _length_batches(lengths, order, batch_tokens):
            width = int(lengths[batch[0]])
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            targets_mask = torch.zeros((len(batch), width), dtype=torch.bool)
            for j, i in enumerate(batch):
                a, b = offsets[i], offsets[i + 1]
                input_ids[j, : b - a] = torch.from_numpy(ids_flat[a:b])
                attention[j, : b - a] = 1
                ma, mb = mask_offsets[i], mask_offsets[i + 1]
                targets_mask[j, : mb - ma] = torch.from_numpy(mask_flat[ma:mb] == 1)
            tokens += int(attention.sum())
            padded += input_ids.numel()
            input_ids, attention = input_ids.to(device), attention.to(device)
            logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
            select = targets_mask[:, 1:].to(device)
            token_loss = F.cross_entropy(
                logits[:, :-1][select].float(), input_ids[:, 1:][select], reduction="none"
            ).double()
            row_index = torch.arange(len(batch), device=device)[:, None].expand(-1, width - 1)[select]
            sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, row_index, token_loss)
            row_sum[batch] = sums.cpu().numpy()
    finally:
        model.train(was_training)
    return LossTotals(
        loss_sum=float(row_sum.sum()),
        loss_tokens=int(row_tokens.sum()),
        row_loss_sum=row_sum,
        row_loss_tokens=row_tokens,
        skipped=skipped,
        skipped_rows=bad,
        tokens=tokens,
        padded_tokens=padded,
        seconds=time.perf_counter() - start_time,
    )


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:  # only for a diverged model; JSON has no infinity
        return None


def loss_summary(loss_sum: float, loss_tokens: int, conversations: int) -> dict[str, Any]:
    """{loss, perplexity, loss_tokens, conversations}; loss is the mean per loss token (None without tokens)."""
    loss = loss_sum / loss_tokens if loss_tokens else None
    return {
        "loss": loss,
        "perplexity": _perplexity(loss),
        "loss_tokens": int(loss_tokens),
        "conversations": int(conversations),
    }


def evaluate_loss_by(
    model: torch.nn.Module,
    rows: pl.DataFrame,
    *,
    batch_tokens: int = 4096,
    device: str | torch.device | None = None,
    splits: Sequence[str] = HELDOUT_SPLITS,
) -> dict[str, Any]:
    """Masked loss per split and per split x kind.

    ``rows``: input_ids, loss_mask, split, kind (null kind -> "unknown"), conversation_id
    optional. Returns ``{"splits": {split: summary}, "by_kind": {split: {kind: summary}},
    "skipped": [...], "skipped_by_reason": {...}, "tokens", "padding_efficiency", "seconds",
    "tokens_per_second"}``, each summary as ``loss_summary``. Every split named in
    ``splits`` is present, with loss None when it has no loss tokens.
    """
    for name in ("split", "kind"):
        if name not in rows.columns:
            raise ValueError(
                f"rows need a {name!r} column; join the shard rows with curated.conversations on "
                "conversation_id (see heldout_rows)"
            )
    totals = masked_loss(model, rows, batch_tokens=batch_tokens, device=device)
    frame = pl.DataFrame(
        {
            "split": rows["split"].cast(pl.String),
            "kind": rows["kind"].cast(pl.String).fill_null("unknown"),
            "s": totals.row_loss_sum,
            "n": totals.row_loss_tokens,
            "ok": ~totals.skipped_rows,
        }
    ).filter(pl.col("ok"))
    by_split = frame.group_by("split").agg(pl.col("s").sum(), pl.col("n").sum(), pl.len().alias("c"))
    by_kind = frame.group_by("split", "kind").agg(pl.col("s").sum(), pl.col("n").sum(), pl.len().alias("c"))
    out_splits = {split: loss_summary(0.0, 0, 0) for split in splits}
    for row in by_split.sort("split").iter_rows(named=True):
        out_splits[row["split"]] = loss_summary(row["s"], row["n"], row["c"])
    out_kinds: dict[str, dict[str, Any]] = {split: {} for split in out_splits}
    for row in by_kind.sort("split", "kind").iter_rows(named=True):
        out_kinds.setdefault(row["split"], {})[row["kind"]] = loss_summary(row["s"], row["n"], row["c"])
    return {
        "splits": out_splits,
        "by_kind": out_kinds,
        "skipped": [s.as_dict() for s in totals.skipped],
        "skipped_by_reason": count_reasons(totals.skipped),
        "tokens": totals.tokens,
        "padding_efficiency": totals.tokens / totals.padded_tokens if totals.padded_tokens else 1.0,
        "seconds": totals.seconds,
        "tokens_per_second": totals.tokens / totals.seconds if totals.seconds > 0 else 0.0,
    }
