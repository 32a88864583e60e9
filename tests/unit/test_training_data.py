from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.shards import write_shard_directory
from training.data import (
    IGNORE_INDEX,
    Corpus,
    PackedLoader,
    ShardDataError,
    best_fit_decreasing,
    load_corpus,
    rank_indices,
)

FP = "tok-fp"


def _shards(tmp_path: Path, rows: pl.DataFrame, name: str = "s", rows_per_file: int = 3) -> Path:
    out = tmp_path / name
    out.mkdir()
    write_shard_directory(
        out,
        rows,
        partition="2026-01-01",
        tokenizer_fingerprint=FP,
        source_data_version="v1",
        rows_per_file=rows_per_file,
    )
    return out


def _rows(lengths: list[int], seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, 100, n).tolist() for n in lengths]
    masks = [[0] * (n // 2) + [1] * (n - n // 2) for n in lengths]
    return pl.DataFrame(
        {
            "conversation_id": [f"c{i}" for i in range(len(lengths))],
            "split": ["train"] * len(lengths),
            "input_ids": ids,
            "loss_mask": masks,
        }
    )


def _corpus(lengths: list[int], seed: int = 0) -> Corpus:
    frame = _rows(lengths, seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Corpus(
        frame["conversation_id"].to_list(),
        np.concatenate(frame["input_ids"].to_list()).astype(np.int64),
        np.concatenate(frame["loss_mask"].to_list()).astype(np.uint8),
        offsets,
    )


# -- best-fit-decreasing ----------------------------------------------------------------------
def test_best_fit_decreasing_puts_each_item_in_the_fullest_bin_that_fits() -> None:
    # 6 -> bin0 (4 free), 5 -> bin1 (5 free), 4 -> bin0 (full), 3 -> bin1 (2 free), 2 -> bin1 (full)
    assert best_fit_decreasing([3, 6, 2, 5, 4], capacity=10) == [[1, 4], [3, 0, 2]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=80))
def test_best_fit_decreasing_places_everything_once_without_overflow(lengths: list[int]) -> None:
    bins = best_fit_decreasing(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    # Best fit never leaves two bins that could have been merged: at most one is <= half full.
    assert sum(sum(lengths[i] for i in b) <= 32 for b in bins) <= 1
    assert bins == best_fit_decreasing(lengths, 64)


# -- labels and rows -----------------------------------------------------------------------
def test_labels_are_next_tokens_under_the_mask_and_never_cross_conversations() -> None:
    corpus = _corpus([6, 9, 4, 7, 5])
    loader = PackedLoader(corpus, seq_len=16, rows_per_batch=1, buffer_conversations=8)
    rows = [loader.next_row() for _ in range(len(loader.pack_buffer(0, 0, count=False)))]
    seen = []
    for row in rows:
        cursor = 0
        for conv, _start, size in row.segments:
            lo = corpus.offsets[conv]
            ids = corpus.tokens[lo : lo + size]
            mask = corpus.loss_mask[lo : lo + size]
            labels = row.labels[cursor : cursor + size]
            assert np.array_equal(row.input_ids[cursor : cursor + size], ids)
            assert np.array_equal(row.position_ids[cursor : cursor + size], np.arange(size))
            expected = np.where(mask[1:] == 1, ids[1:], IGNORE_INDEX)
            assert np.array_equal(labels[:-1], expected)
            # The last token of a conversation predicts nothing (not the next conversation's first token).
            assert labels[-1] == IGNORE_INDEX
            seen.append(corpus.conversation_ids[conv])
            cursor += size
        assert row.tokens == cursor
        assert (row.labels[cursor:] == IGNORE_INDEX).all() and (row.input_ids[cursor:] == 0).all()
        assert row.position_ids[cursor:].tolist() == list(range(16 - cursor))
    assert sorted(seen) == sorted(corpus.conversation_ids)


def test_overlong_split_keeps_every_target_and_drop_counts_it() -> None:
    corpus = _corpus([40, 5])
    total_targets = sum(int((corpus.labels(i) != IGNORE_INDEX).sum()) for i in range(2))
    split = PackedLoader(corpus, seq_len=16, rows_per_batch=1, buffer_conversations=8, overlong="split")
    rows = split.pack_buffer(0, 0)
    # 40 tokens -> chunks 16+16+8; the first chunk is all prompt (mask 0 on tokens 0..19), so it
    # carries no target and is skipped (counted); no target is lost by splitting.
    assert sorted(size for r in rows for _, _, size in r.segments) == [5, 8, 16]
    assert sum(int((r.labels != IGNORE_INDEX).sum()) for r in rows) == total_targets
    assert (split.state.overlong_split, split.state.skipped_no_loss) == (1, 1)
    drop = PackedLoader(corpus, seq_len=16, rows_per_batch=1, buffer_conversations=8, overlong="drop")
    rows = drop.pack_buffer(0, 0)
    assert [c for r in rows for c, _, _ in r.segments] == [1]
    assert drop.state.overlong_dropped == 1


def test_packing_fills_rows_and_reports_efficiency() -> None:
    corpus = _corpus(list(np.random.default_rng(1).integers(3, 30, 200)))
    loader = PackedLoader(corpus, seq_len=64, rows_per_batch=4, buffer_conversations=200)
    batch = loader.next_batch()
    assert set(batch) == {"input_ids", "labels", "position_ids", "tokens"}
    assert batch["input_ids"].shape == (4, 64)
    for _ in range(10):
        loader.next_batch()
    assert loader.packing_efficiency > 0.9  # one conversation per row would be ~0.26


# -- determinism, rank split, resume ----------------------------------------------------------
def test_rank_split_is_disjoint_covering_and_seeded() -> None:
    parts = [set(rank_indices(101, r, 3, seed=7).tolist()) for r in range(3)]
    assert set.union(*parts) == set(range(101)) and sum(map(len, parts)) == 101
    assert rank_indices(101, 0, 3, seed=7).tolist() == rank_indices(101, 0, 3, seed=7).tolist()
    assert rank_indices(101, 0, 3, seed=7).tolist() != rank_indices(101, 0, 3, seed=8).tolist()


def _stream(loader: PackedLoader, n: int) -> list[list[tuple[int, int, int]]]:
    return [loader.next_row().segments for _ in range(n)]


def test_order_is_deterministic_per_seed_and_reshuffled_per_epoch() -> None:
    corpus = _corpus([5] * 30)
    a = _stream(PackedLoader(corpus, seq_len=10, rows_per_batch=1, buffer_conversations=30, seed=1), 30)
    b = _stream(PackedLoader(corpus, seq_len=10, rows_per_batch=1, buffer_conversations=30, seed=1), 30)
    c = _stream(PackedLoader(corpus, seq_len=10, rows_per_batch=1, buffer_conversations=30, seed=2), 30)
    assert a == b and a != c
    assert a[:15] != a[15:]  # epoch 2 (rows 15..29) is a different order of the same conversations
    assert sorted(s for r in a[:15] for s in r) == sorted(s for r in a[15:] for s in r)


def test_loader_resumes_mid_buffer_without_recounting() -> None:
    corpus = _corpus(list(np.random.default_rng(3).integers(3, 40, 50)))
    kwargs = {"seq_len": 32, "rows_per_batch": 1, "buffer_conversations": 8, "overlong": "split", "seed": 5}
    straight = PackedLoader(corpus, **kwargs)
    expected = _stream(straight, 60)
    first = PackedLoader(corpus, **kwargs)
    head = _stream(first, 23)
    saved = first.state_dict()
    second = PackedLoader(corpus, **kwargs)
    second.load_state_dict(saved)
    assert head + _stream(second, 37) == expected
    assert second.state_dict() == straight.state_dict()


# -- loading -------------------------------------------------------------------------------
def test_load_corpus_reads_every_shard_dir_and_fingerprints_them(tmp_path: Path) -> None:
    a = _shards(tmp_path, _rows([4, 5, 6, 7]), "a")
    b = _shards(tmp_path, _rows([8, 9], seed=1).with_columns(pl.col("conversation_id") + "b"), "b")
    corpus, prints = load_corpus([a, b], "train", tokenizer_fingerprint=FP, vocab_size=100)
    assert len(corpus) == 6 and corpus.length(5) == 9
    assert [p["source_data_version"] for p in prints] == ["v1", "v1"]
    assert all(len(p["manifest_sha256"]) == 64 for p in prints)


def test_corrupt_shard_is_refused_naming_the_file(tmp_path: Path) -> None:
    shard = _shards(tmp_path, _rows([4, 5, 6, 7]))
    target = shard / "train-00001.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ShardDataError, match=r"train-00001\.parquet: sha256 differs"):
        load_corpus([shard], "train")


def test_shards_from_another_tokenizer_or_vocab_are_refused(tmp_path: Path) -> None:
    shard = _shards(tmp_path, _rows([4, 5]))
    with pytest.raises(ShardDataError, match="tokenized with tokenizer tok-fp"):
        load_corpus([shard], "train", tokenizer_fingerprint="other")
    with pytest.raises(ShardDataError, match="outside the model's vocabulary of 50"):
        load_corpus([shard], "train", vocab_size=50)


def test_rank_with_no_data_fails_clearly() -> None:
    with pytest.raises(ShardDataError, match="rank 3 has no conversations"):
        PackedLoader(
            _corpus([4]).subset(np.array([], dtype=np.int64)),
            seq_len=8,
            rows_per_batch=1,
            buffer_conversations=4,
            rank=3,
        )
