"""Preference metrics on held-out pairs: does the model prefer what members preferred?

For each held-out pair (validation and test splits of ``preference_shards``), with the summed log-probabilities
of the chosen and rejected completions under the model (``pc``, ``pr``) and under a reference (``rc``, ``rr``):

- ``accuracy``: the share of pairs whose implicit reward margin ``beta * ((pc - rc) - (pr - rr))`` is above 0,
  the quantity DPO trains; the reference is the model the preference run started from (an SFT checkpoint's is its
  base model);
- ``reward_margin``: the mean of that margin;
- ``likelihood_accuracy``: the share of pairs where the model itself gives the chosen completion the higher
  log-probability. It needs no reference, so it compares any two checkpoints, before and after preference
  training alike, and the champion gate uses it.

Each comes with its n and a bootstrap interval, and is insufficient (null) below ``min_n`` pairs, like the
ranking metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.preferences.batches import PairCorpus, load_pairs, pair_logps
from evaluation.heldout import HELDOUT_SPLITS
from evaluation.ranking_metrics import Estimate, bootstrap_indices, estimate

PREFERENCE_KEYS = ("accuracy", "reward_margin", "likelihood_accuracy")


@dataclass(frozen=True)
class PreferenceSettings:
    beta: float = 0.1
    seq_len: int = 1024
    rows_per_batch: int = 8
    min_n: int = 30
    resamples: int = 1000
    seed: int = 0


def heldout_pairs(shard_dirs: list[Path], tokenizer_fingerprint: str | None) -> dict[str, PairCorpus]:
    """The held-out splits of the preference shards (empty corpora where a split has no pairs)."""
    return {
        split: load_pairs(shard_dirs, split, tokenizer_fingerprint=tokenizer_fingerprint)[0] for split in HELDOUT_SPLITS
    }


def scored(model: torch.nn.Module, corpus: PairCorpus, settings: PreferenceSettings, device: str) -> np.ndarray:
    """[pairs, 2] summed log-probs of chosen and rejected (NaN for a pair longer than seq_len)."""
    if len(corpus) == 0:
        return np.zeros((0, 2))
    return pair_logps(
        model,
        corpus,
        seq_len=settings.seq_len,
        rows_per_batch=settings.rows_per_batch,
        pad_id=model.config.pad_token_id or 0,
        device=device,
    )


def preference_estimates(
    policy: np.ndarray, reference: np.ndarray, settings: PreferenceSettings
) -> dict[str, Estimate]:
    """The three metrics of one split from [pairs, 2] log-probs of the model and of the reference."""
    keep = ~(np.isnan(policy).any(axis=1) | np.isnan(reference).any(axis=1))
    policy, reference = policy[keep], reference[keep]
    margin = settings.beta * ((policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1]))
    values = {
        "accuracy": (margin > 0).astype(np.float64),
        "reward_margin": margin,
        "likelihood_accuracy": (policy[:, 0] > policy[:, 1]).astype(np.float64),
    }
    indices = bootstrap_indices(len(margin), settings.resamples, settings.seed) if settings.resamples else None
    return {name: estimate(v, min_n=settings.min_n, indices=indices) for name, v in values.items()}


def preference_report(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    pairs: dict[str, PairCorpus],
    settings: PreferenceSettings,
    device: str = "cpu",
) -> dict[str, dict[str, object]]:
    """Per held-out split: n, pairs left out for length, and each metric's value, interval and insufficiency."""
    out: dict[str, dict[str, object]] = {}
    for split, corpus in pairs.items():
        policy = scored(model, corpus, settings, device)
        ref = scored(reference, corpus, settings, device)
        estimates = preference_estimates(policy, ref, settings)
        n = next(iter(estimates.values())).n
        out[split] = {
            "n": n,
            "too_long": len(corpus) - n,
            **{k: e.value for k, e in estimates.items()},
            "ci": {k: [e.ci_low, e.ci_high] for k, e in estimates.items()},
            "insufficient": sorted(k for k, e in estimates.items() if e.insufficient),
        }
    return out


def evaluate_preference(
    checkpoint_dir: Path,
    reference_dir: Path,
    shard_dirs: list[Path],
    settings: PreferenceSettings,
    device: str = "cpu",
) -> dict[str, dict[str, object]]:
    """``preference_report`` of a checkpoint against a reference model on the held-out pairs of ``shard_dirs``.

    The shards must have been tokenized by the checkpoint's tokenizer (checked by fingerprint).
    """
    from core.tokenizer_training import tokenizer_fingerprint
    from evaluation.models import load_for_eval

    pairs = heldout_pairs(shard_dirs, tokenizer_fingerprint(Path(checkpoint_dir)))
    model, _ = load_for_eval(checkpoint_dir, device=device)
    reference = model if Path(reference_dir) == Path(checkpoint_dir) else load_for_eval(reference_dir, device=device)[0]
    return preference_report(model, reference, pairs, settings, device)
