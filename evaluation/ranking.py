"""Every system ranks the same candidates of the same held-out cases; the report compares them fairly.

Systems:
- a model (the checkpoint, its base model, the champion): candidates by log-likelihood as the first title of its
  answer to the served prompt, after the builder's answer lead (evaluation/candidate_scoring.py);
- popularity: candidates by how many training members watched them (positive watches only);
- co-occurrence: candidates by summed similarity to the titles the prompt names (the same history the model is
  shown), ties by popularity.

A case a model could not score (a prompt the chat template refuses) leaves its target unranked for that model,
counted in the skips, so the systems stay paired over the same cases.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from core.conversation_builder import ANSWER_LEADS
from core.masking import MaskError
from evaluation.candidate_scoring import candidate_suffixes, score_suffixes
from evaluation.cooccurrence import CoOccurrence
from evaluation.generation import end_of_turn_ids
from evaluation.ranking_metrics import beats, ranking_report
from evaluation.recommendation import RecoCase
from evaluation.skips import Skipped
from evaluation.titles import TitleMatcher

ANSWER_LEAD = ANSWER_LEADS[0] + "\n1. "  # the candidate is scored where training puts the first recommended title
COMPARED = ("popularity", "cooccurrence", "base_model")  # the baselines the model is compared with, paired
RANKING_METRICS = ("hit@1", "hit@5", "hit@10", "ndcg@10", "mrr")


def target_rank(keys: Sequence[Any], candidates: Sequence[str], target: str) -> int:
    """1-based rank of `target` when candidates are sorted by key, highest first, ties in the given order."""
    order = sorted(range(len(candidates)), key=lambda i: _negate(keys[i]))  # stable: ties keep their order
    return [candidates[i] for i in order].index(target) + 1


def _negate(key: Any) -> Any:
    return tuple(-k for k in key) if isinstance(key, tuple) else -key


EncodedCase = tuple[list[int], list[list[int]]] | Skipped


def encode_cases(
    tokenizer: Any, cases: Sequence[RecoCase], candidates: Sequence[Sequence[str]], matcher: TitleMatcher
) -> list[EncodedCase]:
    """Each case's candidates as model_ranks scores them (candidate_suffixes), or why the case cannot be scored.

    Depends on the tokenizer only, so every model with the same tokenizer is ranked from one encoding.
    """
    end_of_turn = end_of_turn_ids(tokenizer)
    encoded: list[EncodedCase] = []
    for case, cands in zip(cases, candidates, strict=True):
        answers = [matcher.display(t) for t in cands]
        try:
            encoded.append(
                candidate_suffixes(
                    tokenizer, case.prompt_messages, answers, answer_lead=ANSWER_LEAD, drop_ids=end_of_turn
                )
            )
        except (MaskError, ValueError) as exc:
            encoded.append(Skipped(case.conversation_id, "prompt_error", str(exc)[:300]))
    return encoded


def model_ranks(
    model: Any,
    cases: Sequence[RecoCase],
    candidates: Sequence[Sequence[str]],
    encoded: Sequence[EncodedCase],
    *,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[int | None], list[Skipped], dict[str, float]]:
    """Each case's target rank by the model's scores of its encoded candidates, the cases it could not score,
    and the scoring time."""
    ranks: list[int | None] = []
    skipped: list[Skipped] = []
    scored = 0
    started = time.perf_counter()
    for k, (case, cands, enc) in enumerate(zip(cases, candidates, encoded, strict=True)):
        if isinstance(enc, Skipped):
            skipped.append(enc)
            ranks.append(None)
            continue
        scores = score_suffixes(model, *enc, batch_size=batch_size)
        scored += len(cands)
        ranks.append(target_rank(scores, cands, case.target_title_id))
        if progress is not None:
            progress(k + 1, len(cases))
    seconds = time.perf_counter() - started
    timing = {"seconds": seconds, "candidates": scored, "seconds_per_1000": 1000 * seconds / scored if scored else 0}
    return ranks, skipped, timing


def popularity_ranks(
    cases: Sequence[RecoCase], candidates: Sequence[Sequence[str]], counts: Mapping[str, int]
) -> list[int | None]:
    return [
        target_rank([counts.get(t, 0) for t in cands], cands, c.target_title_id)
        for c, cands in zip(cases, candidates, strict=True)
    ]


def cooccurrence_ranks(
    cases: Sequence[RecoCase], candidates: Sequence[Sequence[str]], model: CoOccurrence, history_size: int
) -> list[int | None]:
    popularity = {t: len(model.popularity) - i for i, t in enumerate(model.popularity)}
    out: list[int | None] = []
    for case, cands in zip(cases, candidates, strict=True):
        similarity = model.similarity(case.history_title_ids[-history_size:], cands)
        keys = [(s, popularity.get(t, 0)) for s, t in zip(similarity, cands, strict=True)]
        out.append(target_rank(keys, cands, case.target_title_id))
    return out


def _estimates(ranks: Sequence[int | None], *, min_n: int, resamples: int, seed: int) -> dict[str, Any]:
    report = ranking_report(ranks, min_n=min_n, resamples=resamples, seed=seed)
    out: dict[str, Any] = {name: report[name].value for name in RANKING_METRICS}
    out["n"] = len(ranks)
    out["ci"] = {name: [report[name].ci_low, report[name].ci_high] for name in RANKING_METRICS}
    out["insufficient"] = [name for name in RANKING_METRICS if report[name].insufficient]
    return out


def ranking_summary(
    cases: Sequence[RecoCase],
    ranks: Mapping[str, Sequence[int | None]],
    *,
    splits: Sequence[str],
    headline_split: str,
    min_n: int,
    resamples: int,
    seed: int = 0,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Per system: the headline split's metrics (n, intervals, insufficient) and ``by_split``; and the model's
    paired differences with each compared system, per split (``beats``: the interval lies above 0)."""
    index = {s: [i for i, c in enumerate(cases) if c.split == s] for s in splits}
    systems: dict[str, dict[str, Any]] = {}
    for name, system_ranks in ranks.items():
        by_split = {
            s: _estimates([system_ranks[i] for i in idx], min_n=min_n, resamples=resamples, seed=seed)
            for s, idx in index.items()
        }
        systems[name] = {**by_split[headline_split], "by_split": by_split}
    comparisons: dict[str, dict[str, Any]] = {}
    model = ranks.get("model")
    for s, idx in index.items() if model is not None else ():
        comparisons[s] = {}
        for other in (o for o in COMPARED if o in ranks):
            entry: dict[str, Any] = {}
            for metric in RANKING_METRICS:
                if len(idx) < min_n:
                    entry[metric] = {"difference": None, "ci": [None, None], "beats": None, "insufficient": True}
                    continue
                diff = beats(
                    [model[i] for i in idx], [ranks[other][i] for i in idx], metric, resamples=resamples, seed=seed
                )
                entry[metric] = {
                    "difference": diff.value,
                    "ci": [diff.ci_low, diff.ci_high],
                    "beats": bool(diff.ci_low is not None and diff.ci_low > 0),
                    "insufficient": False,
                }
            comparisons[s][other] = entry
    return systems, comparisons
