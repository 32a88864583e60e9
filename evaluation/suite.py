"""One evaluation pass: a checkpoint against its base model, popularity, co-occurrence and the champion.

Every system is judged on the same held-out cases (evaluation/heldout_cases.py) and ranks the same candidates
(evaluation/candidates.py); the baselines learn from the training members' events only. Plain functions over
paths and frames (no Dagster), so the asset stays thin and the same suite can run in a trainer pod.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from transformers.utils import logging as hf_logging

from core.conversation_builder import RECS_PER_ANSWER
from core.signals import WATCH_EVENTS, drop_negative_watches
from core.tokenizer_training import tokenizer_fingerprint
from evaluation.baselines import evaluate_popularity, popularity_ranking
from evaluation.candidates import candidate_sets, whole_catalog
from evaluation.cooccurrence import build_cooccurrence
from evaluation.generation import evaluate_recommendations
from evaluation.heldout import HELDOUT_SPLITS, heldout_rows
from evaluation.heldout_cases import CaseOptions, heldout_cases, member_splits
from evaluation.loss import evaluate_loss_by
from evaluation.models import load_for_eval
from evaluation.ranking import (
    EncodedCase,
    cooccurrence_ranks,
    encode_cases,
    model_ranks,
    popularity_ranks,
    ranking_summary,
)
from evaluation.recommendation import RecoCase
from evaluation.result_cache import ResultCache, data_fingerprint
from evaluation.settings import HEADLINE_SPLIT, SuiteInputs, SuiteSettings
from evaluation.skips import count_reasons
from evaluation.titles import TitleMatcher

GENERATION_KS = (1, RECS_PER_ANSWER)  # a model names RECS_PER_ANSWER titles, so hit@k is measured up to that


def training_events(events: pl.DataFrame, options: CaseOptions) -> pl.DataFrame:
    """Positive watch events of training-split members: what the popularity and co-occurrence baselines learn."""
    splits = member_splits(events["member_id"], options.split_config)
    train = events.join(splits.filter(pl.col("split") == "train").select("member_id"), on="member_id", how="semi")
    return drop_negative_watches(train, options.signals).filter(pl.col("event").is_in(WATCH_EVENTS))


def watch_counts(train: pl.DataFrame) -> dict[str, int]:
    """Title id -> number of training members who watched it."""
    return dict(train.unique(["member_id", "title_id"]).group_by("title_id").len().iter_rows())


@dataclass(frozen=True)
class Prepared:
    """The held-out data every system is judged on: loss rows, cases, their candidates, and the training events."""

    rows: pl.DataFrame
    matcher: TitleMatcher
    cases: list[RecoCase]
    skipped: list[Any]
    train: pl.DataFrame
    counts: dict[str, int]
    candidates: list[list[str]]


def evaluate_model(
    model_dir: Path,
    p: Prepared,
    settings: SuiteSettings,
    encoded: Callable[[Path, Any], Sequence[EncodedCase]],
) -> dict[str, Any]:
    """Held-out masked loss (by split and kind), candidate ranks, and hit@k of greedy generations for one model.

    ``encoded(model_dir, tokenizer)`` supplies the encoded candidates (ranking.encode_cases): Judge encodes once
    per tokenizer.
    """
    model, tokenizer = load_for_eval(model_dir, device=settings.device)
    candidate_tokens = encoded(model_dir, tokenizer)
    with torch.no_grad():
        loss = evaluate_loss_by(model, p.rows, batch_tokens=settings.batch_tokens, device=settings.device)
        ranks, skipped, timing = model_ranks(
            model, p.cases, p.candidates, candidate_tokens, batch_size=settings.candidate_batch_size
        )
        generation = evaluate_recommendations(
            model,
            tokenizer,
            p.cases,
            p.matcher,
            batch_size=settings.batch_size,
            max_new_tokens=settings.max_new_tokens,
            limit=settings.generation_cases,
            ks=GENERATION_KS,
            device=settings.device,
        )
    del model
    ranking = {"ranks": ranks, "skipped_by_reason": count_reasons(skipped), **timing}
    return {"loss": loss, "ranking": ranking, "generation": generation}


def prepare(inputs: SuiteInputs, settings: SuiteSettings) -> Prepared:
    rows = heldout_rows(inputs.shard_dirs, inputs.conversations)
    matcher = TitleMatcher(inputs.catalog)
    options = CaseOptions(history_size=settings.history_size, signals=settings.signals)
    cases, skipped = heldout_cases(inputs.events, matcher, options)
    train = training_events(inputs.events, options)
    counts = watch_counts(train)
    weights = (
        {t: counts.get(t, 0) + 1 for t in matcher.title_ids} if settings.ranking_negatives == "popularity" else None
    )
    candidates = candidate_sets(
        cases, matcher.title_ids, size=settings.ranking_candidates, seed=settings.seed, weights=weights
    )
    return Prepared(rows, matcher, cases, skipped, train, counts, candidates)


class Judge:
    """Evaluates models on one Prepared data set, reusing a model's results from ``cache_dir`` when its weights,
    the data, the settings and the evaluation code are all unchanged (evaluation/result_cache.py), and the
    encoded candidates of every model with the same tokenizer."""

    def __init__(self, p: Prepared, settings: SuiteSettings, cache_dir: Path | None) -> None:
        self.p, self.settings = p, settings
        self.cache = ResultCache(cache_dir) if cache_dir is not None else None
        self.data = data_fingerprint(p.rows, p.cases, p.candidates) if self.cache else ""
        self._encoded: dict[str, list[EncodedCase]] = {}

    def encoded(self, model_dir: Path, tokenizer: Any) -> list[EncodedCase]:
        fingerprint = tokenizer_fingerprint(model_dir)
        if fingerprint not in self._encoded:
            self._encoded[fingerprint] = encode_cases(tokenizer, self.p.cases, self.p.candidates, self.p.matcher)
        return self._encoded[fingerprint]

    def __call__(self, model_dir: Path) -> dict[str, Any]:
        if self.cache is None:
            return evaluate_model(model_dir, self.p, self.settings, self.encoded)
        key = self.cache.key(model_dir, self.data, self.settings)
        cached = self.cache.get(key)
        if cached is not None:
            return {**cached, "cached": True}
        result = evaluate_model(model_dir, self.p, self.settings, self.encoded)
        self.cache.put(key, result)
        return result


def run_suite(inputs: SuiteInputs, settings: SuiteSettings) -> dict[str, Any]:
    """Every system on the same held-out cases and candidates; see the module docstring."""
    hf_logging.disable_progress_bar()  # per-model "Loading weights" bars would clutter the run's logs
    p = prepare(inputs, settings)
    judge = Judge(p, settings, inputs.cache_dir)
    systems: dict[str, dict[str, Any]] = {
        "model": judge(inputs.checkpoint_dir),
        "base_model": judge(inputs.base_model_dir),
        "popularity": {
            "ranking": {"ranks": popularity_ranks(p.cases, p.candidates, p.counts)},
            "generation": evaluate_popularity(
                p.cases, popularity_ranking(p.counts), limit=settings.generation_cases, ks=GENERATION_KS
            ),
        },
        "cooccurrence": {
            "ranking": {
                "ranks": cooccurrence_ranks(p.cases, p.candidates, build_cooccurrence(p.train), settings.history_size)
            }
        },
    }
    # The champion is re-evaluated on the same cases and candidates, so the gate compares models, not data.
    if inputs.champion_dir is not None and inputs.champion_dir.is_dir():
        systems["champion"] = judge(inputs.champion_dir)
    summary, comparisons = summarize(p.cases, systems, settings)
    return {
        "heldout_rows": p.rows.height,
        "cases": case_summary(p.cases, p.skipped, p.matcher, settings),
        "systems": systems,
        "recommendation": summary,
        "comparisons": comparisons,
    }


def evaluate_champion(inputs: SuiteInputs, settings: SuiteSettings, champion_dir: Path) -> dict[str, Any]:
    """One more model (a champion promoted while an eval ran) on the same cases; shaped like run_suite's result."""
    p = prepare(inputs, settings)
    systems = {"champion": Judge(p, settings, inputs.cache_dir)(champion_dir)}
    summary, _ = summarize(p.cases, systems, settings)
    return {"systems": systems, "recommendation": summary}


def summarize(
    cases: Sequence[RecoCase], systems: dict[str, dict[str, Any]], settings: SuiteSettings
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Ranking metrics of every system (with n and intervals) and the model's paired comparisons."""
    return ranking_summary(
        cases,
        {name: s["ranking"]["ranks"] for name, s in systems.items()},
        splits=HELDOUT_SPLITS,
        headline_split=HEADLINE_SPLIT,
        min_n=settings.min_cases,
        resamples=settings.bootstrap_resamples,
        seed=settings.seed,
    )


def case_summary(
    cases: Sequence[RecoCase], skipped: Sequence[Any], matcher: TitleMatcher, settings: SuiteSettings
) -> dict[str, Any]:
    """How the cases and candidates were built, for the report: a reader must know what the numbers are over."""
    return {
        "n": len(cases),
        "by_split": {s: sum(c.split == s for c in cases) for s in HELDOUT_SPLITS},
        "skipped_by_reason": count_reasons(skipped),
        "construction": "one case per held-out member: the latest positive watch is the target, the watches before "
        f"it the history (the prompt names the last {settings.history_size})",
        "candidates": {
            "whole_catalog": whole_catalog(len(matcher), settings.ranking_candidates),
            "size": min(len(matcher), settings.ranking_candidates),
            "negatives": settings.ranking_negatives,
            "catalog_titles": len(matcher),
        },
        "min_cases": settings.min_cases,
        "bootstrap_resamples": settings.bootstrap_resamples,
    }
