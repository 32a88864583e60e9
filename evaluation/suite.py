"""One evaluation pass: a checkpoint against the base model, popularity, and the champion.

Plain functions over paths and frames (no Dagster), so the asset stays thin and the
same suite can run in a trainer pod.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import torch
from transformers.utils import logging as hf_logging

from evaluation.baselines import evaluate_popularity, popularity_ranking
from evaluation.generation import evaluate_recommendations
from evaluation.heldout import HELDOUT_SPLITS, heldout_rows
from evaluation.loss import evaluate_loss_by
from evaluation.models import load_for_eval
from evaluation.recommendation import RecoCase, recommendation_prompts
from evaluation.settings import SuiteInputs, SuiteSettings
from evaluation.titles import TitleMatcher


def evaluate_model(
    model_dir: Path, rows: pl.DataFrame, cases: list[RecoCase], matcher: TitleMatcher, settings: SuiteSettings
) -> dict[str, Any]:
    """Held-out masked loss (by split and kind) and greedy-generation hit@k for one model dir."""
    model, tokenizer = load_for_eval(model_dir, device=settings.device)
    with torch.no_grad():
        loss = evaluate_loss_by(model, rows, batch_tokens=settings.batch_tokens, device=settings.device)
        reco = evaluate_recommendations(
            model,
            tokenizer,
            cases,
            matcher,
            batch_size=settings.batch_size,
            max_new_tokens=settings.max_new_tokens,
            limit=settings.generation_cases,
            device=settings.device,
        )
    del model
    return {"loss": loss, "recommendation": reco}


def run_suite(inputs: SuiteInputs, settings: SuiteSettings) -> dict[str, Any]:
    """The checkpoint, the base model, popularity and (when given) the champion, all on the same held-out data."""
    hf_logging.disable_progress_bar()  # per-model "Loading weights" bars would clutter the run's logs
    rows = heldout_rows(inputs.shard_dirs, inputs.conversations)
    matcher = TitleMatcher(inputs.catalog)
    heldout = inputs.conversations.filter(pl.col("split").is_in(list(HELDOUT_SPLITS)))
    cases, skipped = recommendation_prompts(heldout, matcher)
    results: dict[str, Any] = {
        "heldout_rows": rows.height,
        "reco_cases": len(cases),
        "reco_skipped": [s.as_dict() for s in skipped],
        "model": evaluate_model(inputs.checkpoint_dir, rows, cases, matcher, settings),
        "base_model": evaluate_model(inputs.base_model_dir, rows, cases, matcher, settings),
        "popularity": evaluate_popularity(
            cases, popularity_ranking(inputs.train_events), limit=settings.generation_cases
        ),
    }
    # The champion is re-evaluated on the same held-out data, so the gate compares models, not data.
    if inputs.champion_dir is not None and inputs.champion_dir.is_dir():
        results["champion"] = evaluate_model(inputs.champion_dir, rows, cases, matcher, settings)
    return results
