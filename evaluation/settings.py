"""What a suite run reads and how it runs: plain dataclasses, importable without torch.

The eval asset's run config takes its defaults from ``SuiteSettings`` when the Dagster code location loads,
which must not import torch or transformers (see ``evaluation/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from core.signals import SignalThresholds

NEGATIVE_SAMPLING = ("popularity", "uniform")
HEADLINE_SPLIT = "test"  # report.json's top-level ranking numbers; the champion gate decides on validation


@dataclass(frozen=True)
class SuiteSettings:
    """How held-out cases are built and ranked, how much each model generates, and how it is batched.

    The single home of these defaults: the eval asset's run config (``assets.evals.EvalConfig``) takes its
    defaults from here, so a notebook, a trainer pod and a Dagster run evaluate alike unless told otherwise.
    """

    generation_cases: int = 100  # held-out recommendation prompts generated per model (the ranking covers all)
    max_new_tokens: int = 64
    batch_size: int = 16
    batch_tokens: int = 8192
    device: str = "cpu"
    # Ranking: a catalog up to this size is ranked whole; a larger one as the target + (size - 1) negatives.
    ranking_candidates: int = 100
    ranking_negatives: str = "popularity"  # negatives drawn in proportion to training watches, or "uniform"
    candidate_batch_size: int = 64
    history_size: int = 5  # titles of the member's history the prompt names
    min_cases: int = 30  # a metric over fewer cases is insufficient: no value, the gate does not decide on it
    bootstrap_resamples: int = 1000
    seed: int = 0
    signals: SignalThresholds = field(default_factory=SignalThresholds)

    def __post_init__(self) -> None:
        if self.ranking_negatives not in NEGATIVE_SAMPLING:
            raise ValueError(f"ranking_negatives={self.ranking_negatives!r}: use one of {list(NEGATIVE_SAMPLING)}")
        if self.ranking_candidates < 2 or self.min_cases < 1 or self.history_size < 1:
            raise ValueError(
                f"ranking_candidates={self.ranking_candidates} must be >= 2, min_cases={self.min_cases} and "
                f"history_size={self.history_size} >= 1"
            )


@dataclass
class SuiteInputs:
    """Everything one suite run reads, gathered by the caller (the eval asset reads it from the warehouse)."""

    checkpoint_dir: Path
    base_model_dir: Path
    shard_dirs: list[Path]
    conversations: pl.DataFrame  # curated.conversations rows of the shard days (loss by kind)
    catalog: pl.DataFrame  # raw.catalog
    events: pl.DataFrame  # raw.interactions of the shard days, every member (the suite splits them by member)
    champion_dir: Path | None = None
    cache_dir: Path | None = None  # reuse a model's results when nothing they depend on changed (result_cache.py)
