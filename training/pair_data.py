"""Preference training rows: an endless, resumable loader of packed pairs for one rank.

The rows themselves (each prompt computed once, each completion exact) are core/preferences/batches.py's, shared
with evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.packing import best_fit_decreasing
from core.preferences.batches import PairCorpus, build_batch, completion_logps, load_pairs
from core.shards import ShardDataError

__all__ = ["PairCorpus", "PairLoader", "PairLoaderState", "build_batch", "completion_logps", "load_pairs"]


@dataclass
class PairLoaderState:
    epoch: int = 0
    buffer: int = 0
    row: int = 0
    rows_emitted: int = 0
    tokens_emitted: int = 0
    pairs_packed: int = 0
    pairs_too_long: int = 0
    counted_buffers: list[int] = field(default_factory=lambda: [-1, -1])


class PairLoader:
    """Endless iterator of packed micro-batches of pairs for one rank (cycles epochs, reshuffling each).

    A pair longer than ``seq_len`` cannot be split (both completions need the whole prompt): it is skipped
    and counted (``pairs_too_long``).
    """

    def __init__(
        self,
        corpus: PairCorpus,
        *,
        seq_len: int,
        rows_per_batch: int,
        buffer_pairs: int,
        seed: int = 0,
        rank: int = 0,
        pad_id: int = 0,
    ) -> None:
        if len(corpus) == 0:
            raise ShardDataError(f"rank {rank} has no preference pairs to train on; use fewer processes or more data")
        self.corpus, self.seq_len, self.rows_per_batch = corpus, seq_len, rows_per_batch
        self.buffer_pairs, self.seed, self.rank, self.pad_id = buffer_pairs, seed, rank, pad_id
        self.state = PairLoaderState()
        self._rows: list[list[int]] | None = None
        if all(corpus.length(i) > seq_len for i in range(len(corpus))):
            raise ShardDataError(f"rank {rank}: every pair is longer than seq_len={seq_len}; raise seq_len")

    def _buffers_per_epoch(self) -> int:
        return -(-len(self.corpus) // self.buffer_pairs)

    def pack_buffer(self, epoch: int, buffer: int, count: bool = True) -> list[list[int]]:
        """Rows (lists of pair indices) of one buffer of pairs, in a seeded shuffled order."""
        order = np.random.default_rng([self.seed, epoch, self.rank]).permutation(len(self.corpus))
        window = order[buffer * self.buffer_pairs : (buffer + 1) * self.buffer_pairs].tolist()
        fits = [i for i in window if self.corpus.length(i) <= self.seq_len]
        if count:
            self.state.pairs_packed += len(fits)
            self.state.pairs_too_long += len(window) - len(fits)
        bins = best_fit_decreasing([self.corpus.length(i) for i in fits], self.seq_len)
        shuffle = np.random.default_rng([self.seed, epoch, self.rank, buffer, 1]).permutation(len(bins))
        return [[fits[i] for i in bins[b]] for b in shuffle.tolist()]

    def next_row(self) -> list[int]:
        state = self.state
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
                state.tokens_emitted += sum(self.corpus.length(i) for i in row)
                return row
            self._rows = None
            state.row = 0
            state.buffer += 1
            if state.buffer >= self._buffers_per_epoch():
                state.buffer, state.epoch = 0, state.epoch + 1

    def next_batch(self) -> dict[str, torch.Tensor]:
        return build_batch(
            self.corpus, [self.next_row() for _ in range(self.rows_per_batch)], self.seq_len, self.pad_id
        )

    @property
    def packing_efficiency(self) -> float:
        slots = self.state.rows_emitted * self.seq_len
        return self.state.tokens_emitted / slots if slots else 0.0

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self.state))

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.state = PairLoaderState(**data)
        self._rows = None
