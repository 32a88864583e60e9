"""Held-out evaluation of a checkpoint: masked loss by split and kind, recommendation hit@k, baselines.

Two families of numbers, both computed from data the checkpoint never trained on: the training loss on
the validation and test splits (``evaluate_loss_by``), and hit@k of the titles a model recommends when
served a held-out member's history (``evaluate_recommendations``), next to a popularity baseline
(``evaluate_popularity``). ``run_suite`` runs them all for a checkpoint, its base model and the champion.

Depends on ``core``, torch and transformers only, never on ``dagster`` or ``training``: the eval asset
calls these functions, and so can a notebook or a trainer pod.
"""

from evaluation.baselines import evaluate_popularity, popularity_baseline, popularity_ranking
from evaluation.generation import encode_prompts, end_of_turn_ids, evaluate_recommendations, generate_greedy
from evaluation.heldout import HELDOUT_SPLITS, heldout_rows
from evaluation.loss import LossTotals, evaluate_loss_by, loss_summary, masked_loss
from evaluation.models import load_for_eval
from evaluation.recommendation import RecoCase, hit_at_k, recommendation_prompts
from evaluation.skips import EVAL_SKIP_REASONS, Skipped
from evaluation.suite import SuiteInputs, SuiteSettings, evaluate_model, hits, run_suite
from evaluation.titles import TitleMatch, TitleMatcher, match_titles, normalize_title

__all__ = [
    "EVAL_SKIP_REASONS",
    "HELDOUT_SPLITS",
    "LossTotals",
    "RecoCase",
    "Skipped",
    "SuiteInputs",
    "SuiteSettings",
    "TitleMatch",
    "TitleMatcher",
    "encode_prompts",
    "end_of_turn_ids",
    "evaluate_loss_by",
    "evaluate_model",
    "evaluate_popularity",
    "evaluate_recommendations",
    "generate_greedy",
    "heldout_rows",
    "hit_at_k",
    "hits",
    "load_for_eval",
    "loss_summary",
    "masked_loss",
    "match_titles",
    "normalize_title",
    "popularity_baseline",
    "popularity_ranking",
    "recommendation_prompts",
    "run_suite",
]
