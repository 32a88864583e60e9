"""Preference pairs as model inputs: verified pair shards, and packed rows that compute each prompt once.

A pair is laid out in a row as ``prompt | chosen | rejected``. Position ids run on from the prompt into each
completion (``0..p-1``, then ``p..`` for the chosen and again ``p..`` for the rejected one), and the attention
mask lets every completion token see the prompt and the earlier tokens of its own completion, never the other
completion. Each completion's log-probabilities are then exactly those of ``prompt + completion`` on its own, with
the prompt's keys and values computed once for both. Several pairs share a row, each blind to the others.

The first token of each completion is predicted from the prompt's last position, so its target is gathered
there; the other targets sit at the position before them, as in causal training. Training (training/dpo.py) and
evaluation (evaluation/preference.py) both score pairs through ``completion_logps``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.packing import best_fit_decreasing
from core.preferences.tokenize import PAIR_LAYOUT
from core.shards import MANIFEST, ShardDataError, read_split, read_verified_manifest

_PARTS = ("prompt", "chosen", "rejected")


@dataclass
class PairCorpus:
    """Pairs of one split as flat arrays: per part, tokens (and masks for completions) with offsets."""

    pair_ids: list[str]
    tokens: dict[str, np.ndarray]  # part -> int64 tokens of every pair, concatenated
    masks: dict[str, np.ndarray]  # "chosen"/"rejected" -> uint8, aligned with tokens
    offsets: dict[str, np.ndarray]  # part -> int64, len = pairs + 1

    def __len__(self) -> int:
        return len(self.pair_ids)

    def part(self, part: str, index: int) -> np.ndarray:
        return self.tokens[part][self.offsets[part][index] : self.offsets[part][index + 1]]

    def mask(self, part: str, index: int) -> np.ndarray:
        return self.masks[part][self.offsets[part][index] : self.offsets[part][index + 1]]

    def length(self, index: int) -> int:
        return sum(int(self.offsets[p][index + 1] - self.offsets[p][index]) for p in _PARTS)

    def subset(self, indices: np.ndarray) -> PairCorpus:
        tokens, masks, offsets = {}, {}, {}
        for part in _PARTS:
            lengths = np.diff(self.offsets[part])[indices]
            off = np.zeros(len(indices) + 1, dtype=np.int64)
            np.cumsum(lengths, out=off[1:])
            take = (
                np.concatenate([np.arange(self.offsets[part][i], self.offsets[part][i + 1]) for i in indices])
                if len(indices)
                else np.zeros(0, dtype=np.int64)
            )
            tokens[part], offsets[part] = self.tokens[part][take], off
            if part in self.masks:
                masks[part] = self.masks[part][take]
        return PairCorpus([self.pair_ids[i] for i in indices], tokens, masks, offsets)


def _flat(frame: Any, column: str, dtype: type) -> np.ndarray:
    return frame[column].to_arrow().flatten().to_numpy(zero_copy_only=False).astype(dtype)


def load_pairs(
    shard_dirs: list[str | Path],
    split: str,
    *,
    tokenizer_fingerprint: str | None = None,
    vocab_size: int | None = None,
) -> tuple[PairCorpus, list[dict[str, Any]]]:
    """Read ``split`` of every preference shard dir after verifying checksums; returns pairs + data fingerprints.

    Refuses (ShardDataError) conversation shards, a different tokenizer, a mask whose length differs from its
    completion's, a completion without loss tokens, and ids outside the vocabulary.
    """
    ids: list[str] = []
    parts: dict[str, list[np.ndarray]] = {f"{p}_{k}": [] for p in _PARTS for k in ("tokens", "lengths", "mask")}
    fingerprints = []
    for shard_dir in map(Path, shard_dirs):
        manifest = read_verified_manifest(shard_dir)
        if tokenizer_fingerprint is not None and manifest.get("tokenizer_fingerprint") != tokenizer_fingerprint:
            raise ShardDataError(
                f"{shard_dir / MANIFEST} was tokenized with tokenizer {manifest.get('tokenizer_fingerprint')}, "
                f"but the model's tokenizer is {tokenizer_fingerprint}; re-materialize preference_shards with it"
            )
        frame = read_split(shard_dir, split, manifest, layout=PAIR_LAYOUT)
        for part in _PARTS:
            lengths = frame[f"{part}_ids"].list.len().to_numpy().astype(np.int64)
            if part != "prompt":
                mask_lengths = frame[f"{part}_mask"].list.len().to_numpy().astype(np.int64)
                masked = frame[f"{part}_mask"].list.sum().to_numpy()
                bad = np.nonzero((lengths != mask_lengths) | (masked == 0))[0]
                if len(bad):
                    raise ShardDataError(
                        f"{shard_dir}: pair {frame['pair_id'][int(bad[0])]!r} has a {part} completion of "
                        f"{lengths[bad[0]]} ids with {mask_lengths[bad[0]]} mask entries, {masked[bad[0]]} of them 1; "
                        "re-materialize preference_shards"
                    )
                parts[f"{part}_mask"].append(_flat(frame, f"{part}_mask", np.uint8))
            tokens = _flat(frame, f"{part}_ids", np.int64)
            if vocab_size is not None and len(tokens) and (tokens.max() >= vocab_size or tokens.min() < 0):
                raise ShardDataError(
                    f"{shard_dir}: token id {int(tokens.max())} is outside the model's vocabulary of {vocab_size}"
                )
            parts[f"{part}_tokens"].append(tokens)
            parts[f"{part}_lengths"].append(lengths)
        ids.extend(frame["pair_id"].to_list())
        fingerprints.append(
            {
                "shard_dir": str(shard_dir),
                "partition": manifest.get("partition"),
                "manifest_sha256": manifest_sha256(shard_dir),
                "source_data_version": manifest.get("source_data_version"),
                "tokenizer_fingerprint": manifest.get("tokenizer_fingerprint"),
                "pairs": len(frame),
            }
        )
    tokens, masks, offsets = {}, {}, {}
    for part in _PARTS:
        lengths = np.concatenate(parts[f"{part}_lengths"]) if ids else np.zeros(0, dtype=np.int64)
        offsets[part] = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[part][1:])
        tokens[part] = np.concatenate(parts[f"{part}_tokens"]) if ids else np.zeros(0, dtype=np.int64)
        if part != "prompt":
            masks[part] = np.concatenate(parts[f"{part}_mask"]) if ids else np.zeros(0, dtype=np.uint8)
    return PairCorpus(ids, tokens, masks, offsets), fingerprints


def manifest_sha256(shard_dir: Path) -> str:
    return hashlib.sha256((Path(shard_dir) / MANIFEST).read_bytes()).hexdigest()


def pair_attention_mask(seq_len: int, starts: list[list[tuple[int, int, int, int]]]) -> torch.Tensor:
    """[rows, 1, seq, seq] boolean mask, True where a query may attend.

    ``starts[row]`` lists each pair's (start, prompt, chosen, rejected) lengths in the row. Padding attends
    only to itself, so no softmax row is empty.
    """
    allowed = torch.eye(seq_len, dtype=torch.bool).repeat(len(starts), 1, 1)
    for row, pairs in enumerate(starts):
        for start, p, c, r in pairs:
            first = start + p + c  # the rejected completion's first position
            allowed[row, start:first, start:first] = torch.ones(p + c, p + c, dtype=torch.bool).tril()
            allowed[row, first : first + r, start : start + p] = True
            allowed[row, first : first + r, first : first + r] = torch.ones(r, r, dtype=torch.bool).tril()
    return allowed.unsqueeze(1)


def build_batch(corpus: PairCorpus, rows: list[list[int]], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Tensors of packed rows of pairs.

    input_ids, position_ids [rows, seq]; attention_mask [rows, 1, seq, seq] (bool, True = attend);
    keep [rows, seq] bool, the positions whose logits are needed; per loss token target_index (into the kept
    positions), target_id and target_slot (2 * local pair + 0 chosen / 1 rejected); pair_index (the corpus
    index of each local pair); tokens (non-pad tokens per row).
    """
    n = len(rows)
    input_ids = np.full((n, seq_len), pad_id, dtype=np.int64)
    position_ids = np.zeros((n, seq_len), dtype=np.int64)
    starts: list[list[tuple[int, int, int, int]]] = []
    predictor_rows, predictors, target_ids, target_slots, pair_index = [], [], [], [], []
    tokens = np.zeros(n, dtype=np.int64)
    for r, pairs in enumerate(rows):
        cursor, row_starts = 0, []
        for i in pairs:
            prompt, chosen, rejected = (corpus.part(p, i) for p in _PARTS)
            p, c, k = len(prompt), len(chosen), len(rejected)
            input_ids[r, cursor : cursor + p + c + k] = np.concatenate([prompt, chosen, rejected])
            position_ids[r, cursor : cursor + p + c] = np.arange(p + c)
            position_ids[r, cursor + p + c : cursor + p + c + k] = np.arange(p, p + k)
            local = len(pair_index)
            pair_index.append(i)
            for side, (start, ids) in enumerate(((cursor + p, chosen), (cursor + p + c, rejected))):
                mask = corpus.mask(_PARTS[1 + side], i)
                # Each completion token is predicted at the position before it; the first at the prompt's last.
                prev = np.arange(start - 1, start - 1 + len(ids))
                prev[0] = cursor + p - 1
                on = np.nonzero(mask)[0]
                predictor_rows.append(np.full(len(on), r))
                predictors.append(prev[on])
                target_ids.append(ids[on])
                target_slots.append(np.full(len(on), 2 * local + side))
            row_starts.append((cursor, p, c, k))
            cursor += p + c + k
        position_ids[r, cursor:] = np.arange(seq_len - cursor)
        tokens[r] = cursor
        starts.append(row_starts)
    keep = np.zeros((n, seq_len), dtype=bool)
    pr, pc = np.concatenate(predictor_rows), np.concatenate(predictors)
    keep[pr, pc] = True
    # Index of each predictor among the kept positions (row-major, as transformers flattens a boolean keep mask).
    rank_of = np.cumsum(keep.reshape(-1)) - 1
    target_index = rank_of[pr * seq_len + pc]
    return {
        "input_ids": torch.from_numpy(input_ids),
        "position_ids": torch.from_numpy(position_ids),
        "attention_mask": pair_attention_mask(seq_len, starts),
        "keep": torch.from_numpy(keep),
        "target_index": torch.from_numpy(target_index.astype(np.int64)),
        "target_id": torch.from_numpy(np.concatenate(target_ids).astype(np.int64)),
        "target_slot": torch.from_numpy(np.concatenate(target_slots).astype(np.int64)),
        "pair_index": torch.tensor(pair_index, dtype=torch.int64),
        "tokens": torch.from_numpy(tokens),
    }


def completion_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], real_vocab_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs [pairs, 2] of chosen and rejected, loss tokens [pairs, 2]) of a packed batch.

    A model with the trainer's block-wise pair attention (``pair_sdpa``) reads the blocks from the position ids;
    any other attention gets the batch's explicit mask.
    """
    mask = None if _attention_of(model) == PAIR_ATTENTION else batch["attention_mask"]
    out = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=mask,
        logits_to_keep=batch["keep"],
        use_cache=False,
    )
    logits = out.logits.float()
    if real_vocab_size is not None and real_vocab_size < logits.shape[-1]:
        logits = logits[..., :real_vocab_size]
    picked = logits[batch["target_index"]]
    logp = picked.gather(1, batch["target_id"].unsqueeze(1)).squeeze(1) - torch.logsumexp(picked, dim=-1)
    slots = 2 * len(batch["pair_index"])
    sums = torch.zeros(slots, dtype=logp.dtype, device=logp.device).index_add(0, batch["target_slot"], logp)
    counts = torch.zeros(slots, dtype=logp.dtype, device=logp.device).index_add(
        0, batch["target_slot"], torch.ones_like(logp)
    )
    return sums.view(-1, 2), counts.view(-1, 2)


PAIR_ATTENTION = "pair_sdpa"  # the block-wise pair attention training/attention.py registers with transformers


def _attention_of(model: torch.nn.Module) -> str | None:
    """The attention implementation of a (DDP- or peft-wrapped) transformers model."""
    inner = model
    while hasattr(inner, "module"):
        inner = inner.module
    return getattr(getattr(inner, "config", None), "_attn_implementation", None)


def pack_pairs(corpus: PairCorpus, seq_len: int) -> tuple[list[list[int]], int]:
    """(rows of pair indices packed best-fit-decreasing, pairs left out for being longer than ``seq_len``)."""
    fits = [i for i in range(len(corpus)) if corpus.length(i) <= seq_len]
    bins = best_fit_decreasing([corpus.length(i) for i in fits], seq_len)
    return [[fits[i] for i in b] for b in bins], len(corpus) - len(fits)


@torch.no_grad()
def pair_logps(
    model: torch.nn.Module,
    corpus: PairCorpus,
    *,
    seq_len: int,
    rows_per_batch: int,
    pad_id: int = 0,
    real_vocab_size: int | None = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """[pairs, 2] summed log-probs of every pair's chosen and rejected completion under ``model``; NaN for a pair
    longer than ``seq_len``."""
    values = np.full((len(corpus), 2), np.nan)
    rows, _ = pack_pairs(corpus, seq_len)
    for start in range(0, len(rows), rows_per_batch):
        batch = build_batch(corpus, rows[start : start + rows_per_batch], seq_len, pad_id)
        on_device = {k: v.to(device) if k != "pair_index" else v for k, v in batch.items()}
        sums, _ = completion_logps(model, on_device, real_vocab_size)
        values[batch["pair_index"].numpy()] = sums.double().cpu().numpy()
    return values
