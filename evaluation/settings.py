"""What a suite run reads and how it runs: plain dataclasses, importable without torch.

The eval asset's run config takes its defaults from ``SuiteSettings`` when the Dagster code location loads,
which must not import torch or transformers (see ``evaluation/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl


@dataclass(frozen=True)
class SuiteSettings:
    """How much of the held-out data each model answers, and how it is batched.

    The single home of these defaults: the eval asset's run config (``assets.evals.EvalConfig``) takes its
    defaults from here, so a notebook, a trainer pod and a Dagster run evaluate alike unless told otherwise.
    """

    generation_cases: int = 200  # held-out recommendation prompts generated per model
    max_new_tokens: int = 64
    batch_size: int = 16
    batch_tokens: int = 8192
    device: str = "cpu"


@dataclass
class SuiteInputs:
    """Everything one suite run reads, gathered by the caller (the eval asset reads it from the warehouse)."""

    checkpoint_dir: Path
    base_model_dir: Path
    shard_dirs: list[Path]
    conversations: pl.DataFrame  # curated.conversations rows of the shard days
    catalog: pl.DataFrame  # raw.catalog
    train_events: pl.DataFrame  # raw.interactions of the shard days (popularity baseline)
    champion_dir: Path | None = None
