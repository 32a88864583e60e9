"""Held-out evaluation of a checkpoint: masked loss by split and kind, recommendation hit@k, baselines.

Two families of numbers, both computed from data the checkpoint never trained on: the training loss on
the validation and test splits (``evaluate_loss_by``), and hit@k of the titles a model recommends when
served a held-out member's history (``evaluate_recommendations``), next to a popularity baseline
(``evaluate_popularity``). ``run_suite`` runs them all for a checkpoint, its base model and the champion.

Depends on ``core``, torch and transformers only, never on ``dagster`` or ``training``: the eval asset
calls these functions, and so can a notebook or a trainer pod.

The names below are loaded on first use (PEP 562), so importing one light piece (``SuiteSettings``, the
title matcher) does not import torch and transformers: the Dagster code location imports this package when
it loads, and the UI, the sensors and every ingestion run would otherwise wait for them.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "EVAL_SKIP_REASONS": "evaluation.skips",
    "HELDOUT_SPLITS": "evaluation.heldout",
    "LossTotals": "evaluation.loss",
    "RecoCase": "evaluation.recommendation",
    "Skipped": "evaluation.skips",
    "SuiteInputs": "evaluation.settings",
    "SuiteSettings": "evaluation.settings",
    "TitleMatch": "evaluation.titles",
    "TitleMatcher": "evaluation.titles",
    "encode_prompts": "evaluation.generation",
    "end_of_turn_ids": "evaluation.generation",
    "evaluate_loss_by": "evaluation.loss",
    "evaluate_model": "evaluation.suite",
    "evaluate_popularity": "evaluation.baselines",
    "evaluate_recommendations": "evaluation.generation",
    "generate_greedy": "evaluation.generation",
    "heldout_rows": "evaluation.heldout",
    "hit_at_k": "evaluation.recommendation",
    "load_for_eval": "evaluation.models",
    "loss_summary": "evaluation.loss",
    "masked_loss": "evaluation.loss",
    "match_titles": "evaluation.titles",
    "normalize_title": "evaluation.titles",
    "popularity_baseline": "evaluation.baselines",
    "popularity_ranking": "evaluation.baselines",
    "recommendation_prompts": "evaluation.recommendation",
    "run_suite": "evaluation.suite",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
