"""Training data: verified shard loading, rank sharding and best-fit-decreasing packing.

Shards hold one unpacked conversation per row (token ids + loss mask), so the
row length `seq_len` is a training choice. Each packed row concatenates whole
conversations (or seq_len chunks of an overlong one) with `position_ids` that
restart at 0 per conversation and no attention mask: transformers 5 detects the
restarts (`masking_utils.find_packed_sequence_indices`) and builds a
block-diagonal causal mask on sdpa/eager/flex, so packed conversations never
attend to each other. Labels are computed per conversation *before* packing,
so a conversation's first token is never a target of the previous one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.packing import best_fit_decreasing
from core.shards import MANIFEST, ShardDataError, read_split, read_verified_manifest

IGNORE_INDEX = -100


@dataclass
class Corpus:
    """Conversations of one split as flat arrays (compact: no Python object per token)."""

    conversation_ids: list[str]
    tokens: np.ndarray  # int64, all conversations concatenated
    loss_mask: np.ndarray  # uint8, aligned with tokens
    offsets: np.ndarray  # int64, len = conversations + 1

    def __len__(self) -> int:
        return len(self.conversation_ids)

    def length(self, index: int) -> int:
        return int(self.offsets[index + 1] - self.offsets[index])

    def labels(self, index: int) -> np.ndarray:
        """Next-token targets of one conversation: labels[t] = ids[t+1] where mask[t+1] == 1."""
        lo, hi = self.offsets[index], self.offsets[index + 1]
        ids, mask = self.tokens[lo:hi], self.loss_mask[lo:hi]
        labels = np.full(hi - lo, IGNORE_INDEX, dtype=np.int64)
        labels[:-1] = np.where(mask[1:] == 1, ids[1:], IGNORE_INDEX)
        return labels

    def subset(self, indices: np.ndarray) -> Corpus:
        lengths = np.diff(self.offsets)[indices]
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        take = (
            np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in indices])
            if len(indices)
            else np.zeros(0, dtype=np.int64)
        )
        return Corpus([self.conversation_ids[i] for i in indices], self.tokens[take], self.loss_mask[take], offsets)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_corpus(
    shard_dirs: list[str | Path],
    split: str,
    *,
    tokenizer_fingerprint: str | None = None,
    vocab_size: int | None = None,
) -> tuple[Corpus, list[dict[str, Any]]]:
    """Read `split` from every shard dir after verifying checksums; returns corpus + data fingerprints.

    Refuses (ShardDataError) a dir whose files do not match the manifest's sha256,
    whose tokenizer fingerprint differs from `tokenizer_fingerprint` (when given),
    or whose rows are malformed (mask length != ids length, ids >= vocab_size).
    """
    ids: list[str] = []
    token_parts, mask_parts, length_parts = [], [], []
    fingerprints = []
    for shard_dir in map(Path, shard_dirs):
        manifest = read_verified_manifest(shard_dir)
        if tokenizer_fingerprint is not None and manifest.get("tokenizer_fingerprint") != tokenizer_fingerprint:
            raise ShardDataError(
                f"{shard_dir / MANIFEST} was tokenized with tokenizer {manifest.get('tokenizer_fingerprint')}, "
                f"but the base model's tokenizer is {tokenizer_fingerprint}; re-tokenize the shards with this "
                "base model (or set check_tokenizer_fingerprint=false if you know they are identical)"
            )
        frame = read_split(shard_dir, split, manifest)
        lengths = frame["input_ids"].list.len().to_numpy().astype(np.int64)
        mask_lengths = frame["loss_mask"].list.len().to_numpy().astype(np.int64)
        bad = np.nonzero(lengths != mask_lengths)[0]
        if len(bad):
            raise ShardDataError(
                f"{shard_dir}: conversation {frame['conversation_id'][int(bad[0])]!r} has "
                f"{lengths[bad[0]]} input_ids but {mask_lengths[bad[0]]} loss_mask entries"
            )
        tokens = frame["input_ids"].to_arrow().flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        if vocab_size is not None and len(tokens) and (tokens.max() >= vocab_size or tokens.min() < 0):
            raise ShardDataError(
                f"{shard_dir}: token id {int(tokens.max())} is outside the model's vocabulary of {vocab_size}; "
                "the shards were tokenized for a different model"
            )
        token_parts.append(tokens)
        mask_parts.append(frame["loss_mask"].to_arrow().flatten().to_numpy(zero_copy_only=False).astype(np.uint8))
        length_parts.append(lengths)
        ids.extend(frame["conversation_id"].to_list())
        fingerprints.append(
            {
                "shard_dir": str(shard_dir),
                "partition": manifest.get("partition"),
                "manifest_sha256": _sha256(shard_dir / MANIFEST),
                "source_data_version": manifest.get("source_data_version"),
                "tokenizer_fingerprint": manifest.get("tokenizer_fingerprint"),
                "conversations": len(frame),
            }
        )
    lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    corpus = Corpus(
        ids,
        np.concatenate(token_parts) if token_parts else np.zeros(0, dtype=np.int64),
        np.concatenate(mask_parts) if mask_parts else np.zeros(0, dtype=np.uint8),
        offsets,
    )
    return corpus, fingerprints


def rank_indices(n: int, rank: int, world_size: int, seed: int) -> np.ndarray:
    """This rank's conversations: a seeded permutation dealt round-robin (disjoint, covering, balanced).

    The assignment is fixed for the run, so each rank only keeps its own 1/world of the data.
    """
    return np.random.default_rng(seed).permutation(n)[rank::world_size]


def split_overlong(length: int, seq_len: int, overlong: str) -> list[tuple[int, int]]:
    """(start, length) pieces of one conversation: itself, seq_len chunks, or nothing when dropped."""
    if length <= seq_len:
        return [(0, length)]
    if overlong == "drop":
        return []
    return [(start, min(seq_len, length - start)) for start in range(0, length, seq_len)]


@dataclass
class PackedRow:
    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    tokens: int  # non-pad tokens
    segments: list[tuple[int, int, int]]  # (conversation index in the local corpus, start, length)


@dataclass
class LoaderState:
    """Where the loader is (resume point) and what it has counted so far."""

    epoch: int = 0
    buffer: int = 0
    row: int = 0  # rows of the current buffer already emitted
    rows_emitted: int = 0
    tokens_emitted: int = 0
    loss_tokens_emitted: int = 0
    conversations_packed: int = 0
    overlong_split: int = 0
    overlong_dropped: int = 0
    skipped_no_loss: int = 0
    counted_buffers: list[int] = field(default_factory=lambda: [-1, -1])  # (epoch, buffer) last counted


class PackedLoader:
    """Endless iterator of packed micro-batches for one rank (cycles epochs, reshuffling each)."""

    def __init__(
        self,
        corpus: Corpus,
        *,
        seq_len: int,
        rows_per_batch: int,
        buffer_conversations: int,
        overlong: str = "split",
        seed: int = 0,
        rank: int = 0,
        pad_id: int = 0,
    ) -> None:
        if len(corpus) == 0:
            raise ShardDataError(f"rank {rank} has no conversations to train on; use fewer processes or more data")
        self.corpus, self.seq_len, self.rows_per_batch = corpus, seq_len, rows_per_batch
        self.buffer_conversations, self.overlong = buffer_conversations, overlong
        self.seed, self.rank, self.pad_id = seed, rank, pad_id
        self.state = LoaderState()
        self._rows: list[PackedRow] | None = None

    # -- packing -------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, self.rank]).permutation(len(self.corpus))

    def _buffers_per_epoch(self) -> int:
        return -(-len(self.corpus) // self.buffer_conversations)

    def pack_buffer(self, epoch: int, buffer: int, count: bool = True) -> list[PackedRow]:
        """Rows of one buffer of conversations, in a seeded shuffled order."""
        state = self.state
        window = self._epoch_order(epoch)[buffer * self.buffer_conversations : (buffer + 1) * self.buffer_conversations]
        pieces: list[tuple[int, int, int]] = []
        for conv in window.tolist():
            length = self.corpus.length(conv)
            labels = self.corpus.labels(conv)
            parts = split_overlong(length, self.seq_len, self.overlong)
            if count:
                state.conversations_packed += 1
                state.overlong_split += int(length > self.seq_len and self.overlong == "split")
                state.overlong_dropped += int(length > self.seq_len and self.overlong == "drop")
            for start, size in parts:
                if (labels[start : start + size] != IGNORE_INDEX).any():
                    pieces.append((conv, start, size))
                elif count:
                    state.skipped_no_loss += 1
        bins = best_fit_decreasing([p[2] for p in pieces], self.seq_len)
        order = np.random.default_rng([self.seed, epoch, self.rank, buffer, 1]).permutation(len(bins))
        return [self._build_row([pieces[i] for i in bins[b]]) for b in order.tolist()]

    def _build_row(self, segments: list[tuple[int, int, int]]) -> PackedRow:
        n = self.seq_len
        input_ids = np.full(n, self.pad_id, dtype=np.int64)
        labels = np.full(n, IGNORE_INDEX, dtype=np.int64)
        position_ids = np.zeros(n, dtype=np.int64)
        cursor = 0
        for conv, start, size in segments:
            lo = int(self.corpus.offsets[conv]) + start
            input_ids[cursor : cursor + size] = self.corpus.tokens[lo : lo + size]
            labels[cursor : cursor + size] = self.corpus.labels(conv)[start : start + size]
            position_ids[cursor : cursor + size] = np.arange(size)
            cursor += size
        # Padding is its own "sequence" (positions restart at 0) and carries no labels.
        position_ids[cursor:] = np.arange(n - cursor)
        return PackedRow(input_ids, labels, position_ids, cursor, segments)

    # -- iteration -----------------------------------------------------------------------
    def next_row(self) -> PackedRow:
        state = self.state
        empty_buffers = 0
        while True:
            if self._rows is None:
                key = [state.epoch, state.buffer]
                fresh = state.counted_buffers != key
                self._rows = self.pack_buffer(state.epoch, state.buffer, count=fresh)
                state.counted_buffers = key
            if state.row < len(self._rows):
                row = self._rows[state.row]
                state.row += 1
                state.rows_emitted += 1
                state.tokens_emitted += row.tokens
                state.loss_tokens_emitted += int((row.labels != IGNORE_INDEX).sum())
                return row
            empty_buffers = 0 if self._rows else empty_buffers + 1
            if empty_buffers > self._buffers_per_epoch():
                raise ShardDataError(
                    f"rank {self.rank}: no conversation has a loss token within seq_len={self.seq_len} "
                    f"(overlong={self.overlong!r}); check the loss masks or raise seq_len"
                )
            self._rows = None
            state.row = 0
            state.buffer += 1
            if state.buffer >= self._buffers_per_epoch():
                state.buffer, state.epoch = 0, state.epoch + 1

    def next_batch(self) -> dict[str, torch.Tensor]:
        """`rows_per_batch` packed rows as int64 tensors: input_ids, labels, position_ids, and
        tokens (non-pad tokens per row, for throughput accounting; not a model input)."""
        rows = [self.next_row() for _ in range(self.rows_per_batch)]
        return {
            "input_ids": torch.from_numpy(np.stack([r.input_ids for r in rows])),
            "labels": torch.from_numpy(np.stack([r.labels for r in rows])),
            "position_ids": torch.from_numpy(np.stack([r.position_ids for r in rows])),
            "tokens": torch.tensor([r.tokens for r in rows], dtype=torch.int64),
        }

    @property
    def packing_efficiency(self) -> float:
        """Non-pad tokens / token slots over every row emitted so far."""
        slots = self.state.rows_emitted * self.seq_len
        return self.state.tokens_emitted / slots if slots else 0.0

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self.state))

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.state = LoaderState(**data)
        self._rows = None  # re-packed (deterministically, without re-counting) on the next row


def segment_table(position_ids: torch.Tensor, batch: int) -> torch.Tensor:
    """(row, start, length) of every conversation of a packed batch, one int64 row each, in row order.

    The inverse of packing, for the attention kernels: a segment starts at every row start and
    wherever a position does not follow its predecessor by one (the rule transformers applies to
    detect packed sequences). Tensor ops over the whole batch: it runs for every layer, forward
    and backward.
    """
    positions = position_ids.detach().to("cpu", torch.int64).expand(batch, position_ids.shape[-1])
    seq_len = positions.shape[1]
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    row, start = torch.nonzero(starts).unbind(1)
    end = torch.full_like(start, seq_len)
    same_row = row[1:] == row[:-1]
    end[:-1] = torch.where(same_row, start[1:], end[:-1])
    return torch.stack([row, start, end - start], dim=1)
