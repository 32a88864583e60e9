"""Held-out masked loss: exact against the training definition, skipped rows, aggregation by split and kind."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from support.evaluation_fixtures import CONVERSATIONS

from core.shards import write_shard_directory
from core.tokenize_partition import tokenize_conversations
from evaluation import EVAL_SKIP_REASONS, evaluate_loss_by, heldout_rows, masked_loss


@pytest.fixture(scope="module")
def tokenized(tokenizer: Any) -> pl.DataFrame:
    part = tokenize_conversations(tokenizer, CONVERSATIONS, date(2026, 1, 1), max_length=None)
    assert part.quarantine.height == 0
    kinds = CONVERSATIONS.select("conversation_id", "kind")
    return part.rows.join(kinds, on="conversation_id", how="left")


def _random_rows(n: int, vocab: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ids, masks = [], []
    for i in range(n):
        length = int(rng.integers(1, 60)) if i else 1  # a one-token row has no target at all
        ids.append(rng.integers(0, vocab, length).tolist())
        masks.append(rng.integers(0, 2, length).tolist())
    masks[1] = [0] * len(masks[1])  # a row without loss tokens
    return pl.DataFrame(
        {"conversation_id": [f"r{i}" for i in range(n)], "input_ids": ids, "loss_mask": masks},
        schema={"conversation_id": pl.String, "input_ids": pl.List(pl.Int32), "loss_mask": pl.List(pl.UInt8)},
    )


def _naive(model: Any, ids: list[int], mask: list[int]) -> tuple[float, int]:
    """One conversation alone, the training definition spelled out token by token."""
    if len(ids) < 2:
        return 0.0, 0
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    total, count = 0.0, 0
    for t in range(1, len(ids)):
        if mask[t] == 1:
            total += float(F.cross_entropy(logits[t - 1 : t], torch.tensor([ids[t]])))
            count += 1
    return total, count


# ----------------------------------------------------------------------------- loss


def test_masked_loss_equals_one_conversation_at_a_time(model: Any, tokenized: pl.DataFrame) -> None:
    rows = pl.concat([tokenized.select("conversation_id", "input_ids", "loss_mask"), _random_rows(14, 300, seed=1)])
    # Small batches force several batches, each with heavy padding.
    totals = masked_loss(model, rows, batch_tokens=150)
    expected = [
        _naive(model, i, m) for i, m in zip(rows["input_ids"].to_list(), rows["loss_mask"].to_list(), strict=True)
    ]
    assert totals.skipped == []
    assert totals.row_loss_tokens.tolist() == [c for _, c in expected]
    for got, (want, count) in zip(totals.row_loss_sum, expected, strict=True):
        assert abs(got - want) <= 1e-5 * max(1, count)
        if count:
            assert abs(got / count - want / count) < 1e-5
    assert totals.loss_tokens == sum(c for _, c in expected)
    assert abs(totals.mean_loss - sum(s for s, _ in expected) / totals.loss_tokens) < 1e-5
    assert (
        totals.padded_tokens
        >= totals.tokens
        == int(rows["input_ids"].list.len().filter(pl.Series(totals.row_loss_tokens) > 0).sum())
    )
    # One big batch gives the same numbers: batching never changes the result.
    again = masked_loss(model, rows, batch_tokens=100_000)
    np.testing.assert_allclose(again.row_loss_sum, totals.row_loss_sum, atol=1e-4)
    assert not model.training


def test_masked_loss_counts_only_masked_targets_of_real_masks(model: Any, tokenized: pl.DataFrame) -> None:
    totals = masked_loss(model, tokenized)
    masks = tokenized["loss_mask"].to_list()
    assert totals.row_loss_tokens.tolist() == [sum(m[1:]) for m in masks]
    assert all(sum(m) > 0 for m in masks)


def test_malformed_rows_are_skipped_with_reasons_not_fatal(model: Any) -> None:
    rows = pl.DataFrame(
        {
            "conversation_id": ["ok", "oov", "mismatch", "null"],
            "input_ids": [[1, 2, 3, 4], [1, 99_999, 3], [1, 2, 3], None],
            "loss_mask": [[0, 1, 1, 1], [0, 1, 1], [0, 1], [0, 1]],
        },
        schema={"conversation_id": pl.String, "input_ids": pl.List(pl.Int32), "loss_mask": pl.List(pl.UInt8)},
    )
    totals = masked_loss(model, rows)
    assert {s.key: s.reason for s in totals.skipped} == {
        "oov": "token_out_of_vocab",
        "mismatch": "length_mismatch",
        "null": "null_row",
    }
    assert "99999" in next(s.detail for s in totals.skipped if s.key == "oov")
    assert all(s.reason in EVAL_SKIP_REASONS for s in totals.skipped)  # every code is on the reason-codes page
    assert totals.row_loss_tokens.tolist() == [3, 0, 0, 0]
    assert totals.loss_tokens == 3 and totals.mean_loss == pytest.approx(totals.row_loss_sum[0] / 3)


def test_loss_aggregates_by_split_and_kind_as_token_weighted_means(model: Any) -> None:
    rows = _random_rows(12, 300, seed=5).with_columns(
        pl.Series("split", ["validation"] * 8 + ["train"] * 4),
        pl.Series("kind", ["recommendation", "title_qa", None] * 4),
    )
    out = evaluate_loss_by(model, rows, batch_tokens=200)
    per_row = masked_loss(model, rows, batch_tokens=200)
    frame = rows.with_columns(
        pl.Series("s", per_row.row_loss_sum),
        pl.Series("n", per_row.row_loss_tokens),
        pl.col("kind").fill_null("unknown"),
    )
    val = frame.filter(pl.col("split") == "validation")
    assert out["splits"]["validation"]["loss_tokens"] == int(val["n"].sum())
    assert out["splits"]["validation"]["loss"] == pytest.approx(val["s"].sum() / val["n"].sum(), abs=1e-9)
    assert out["splits"]["validation"]["perplexity"] == pytest.approx(math.exp(out["splits"]["validation"]["loss"]))
    assert out["splits"]["validation"]["conversations"] == 8
    for kind in ("recommendation", "title_qa", "unknown"):
        part = val.filter(pl.col("kind") == kind)
        got = out["by_kind"]["validation"][kind]
        assert got["loss_tokens"] == int(part["n"].sum())
        assert got["loss"] == pytest.approx(part["s"].sum() / part["n"].sum(), abs=1e-9)
        assert got["perplexity"] == pytest.approx(math.exp(got["loss"]))
    # Token-weighted: the split loss is not the mean of per-kind means.
    kinds = out["by_kind"]["validation"].values()
    assert out["splits"]["validation"]["loss"] == pytest.approx(
        sum(k["loss"] * k["loss_tokens"] for k in kinds) / sum(k["loss_tokens"] for k in kinds)
    )
    # An empty held-out split is present with no loss rather than missing.
    assert out["splits"]["test"] == {"loss": None, "perplexity": None, "loss_tokens": 0, "conversations": 0}
    assert out["splits"]["train"]["conversations"] == 4


def test_heldout_rows_reads_verified_shards_with_kinds(tmp_path: Path, tokenized: pl.DataFrame) -> None:
    write_shard_directory(
        tmp_path, tokenized.drop("kind"), partition="2026-01-01", tokenizer_fingerprint="f", source_data_version="s"
    )
    rows = heldout_rows([tmp_path], CONVERSATIONS)
    assert sorted(rows["conversation_id"].to_list()) == ["c01", "c02", "c03", "c05", "c06"]
    assert dict(zip(rows["conversation_id"], rows["kind"], strict=True))["c03"] == "title_qa"
    assert set(rows["split"]) == {"validation", "test"}
    (tmp_path / "test-00000.parquet").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="failed verification"):
        heldout_rows([tmp_path], CONVERSATIONS)
