"""Candidate scoring with a shared prompt cache equals scoring each candidate alone."""

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.masking import encode_prompt
from core.model_families import FAMILIES, GEMMA3_SLIDING_WINDOW
from evaluation.candidate_scoring import answer_tokens, rank_candidates, score_candidates

PROMPT = [
    {"role": "system", "content": "You recommend titles from the catalog."},
    {"role": "user", "content": "I watched The Silent Harbor (1991). What next?"},
]
ANSWERS = ["The Silent Harbor (1995)", "Drama 3", "Member 12 watched", "x", "The Silent Harbor (1990) and more"]


@torch.no_grad()
def _alone(model: Any, tokenizer: Any, answer: str, prompt: list[dict[str, str]] = PROMPT) -> float:
    """The plain computation: the whole conversation in one forward pass, no packing, no mask of ours."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    (tokens,) = answer_tokens(tokenizer, prompt, [answer], prompt_ids)
    ids = torch.tensor([prompt_ids + tokens])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    n = len(prompt_ids)
    return sum(float(logprobs[n + i - 1, t]) for i, t in enumerate(tokens))


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_batched_scores_with_a_shared_prompt_equal_scoring_each_alone(
    model: Any, tokenizer: Any, batch_size: int
) -> None:
    scores = score_candidates(model, tokenizer, PROMPT, ANSWERS, batch_size=batch_size)
    expected = [_alone(model, tokenizer, a) for a in ANSWERS]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert all(s < 0 for s in scores)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_scores_candidates_packed_together_as_it_scores_each_alone(
    family_dirs: dict[str, Path], family: str, attention: str
) -> None:
    """Gemma 3's sliding layers included: the prompt is longer than its window, so the window must hold."""
    model = AutoModelForCausalLM.from_pretrained(
        family_dirs[family], dtype=torch.float32, attn_implementation=attention
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(family_dirs[family])
    prompt = [*PROMPT[:1], {"role": "user", "content": "I watched " + ", ".join(ANSWERS * 3) + ". What next?"}]
    assert len(encode_prompt(tokenizer, prompt)) > 2 * GEMMA3_SLIDING_WINDOW
    scores = score_candidates(model, tokenizer, prompt, ANSWERS, batch_size=3)
    assert scores == pytest.approx([_alone(model, tokenizer, a, prompt) for a in ANSWERS], abs=1e-4)


def test_answer_tokens_are_the_answer_and_its_end_of_turn(tokenizer: Any) -> None:
    prompt_ids = encode_prompt(tokenizer, PROMPT)
    (tokens,) = answer_tokens(tokenizer, PROMPT, ["Drama 3"], prompt_ids)
    assert tokenizer.decode(tokens[:-1]).strip() == "Drama 3"
    assert tokens[-1] in tokenizer.added_tokens_decoder  # the template's end-of-turn token is scored too


def test_ranking_is_by_score_with_ties_in_the_given_order() -> None:
    assert rank_candidates([-3.0, -1.0, -1.0, -9.0], ["a", "b", "c", "d"]) == ["b", "c", "a", "d"]
    assert score_candidates(None, None, PROMPT, []) == []


LEAD = "Here are a few picks for you:\n1. "


@torch.no_grad()
def _as_first_item(model: Any, tokenizer: Any, answer: str) -> float:
    """log p(lead + answer) from one plain forward pass, end-of-turn left out."""
    from evaluation.generation import end_of_turn_ids

    prompt_ids = encode_prompt(tokenizer, PROMPT)
    (tokens,) = answer_tokens(tokenizer, PROMPT, [LEAD + answer], prompt_ids)
    while tokens[-1] in end_of_turn_ids(tokenizer):
        tokens.pop()
    logprobs = torch.log_softmax(model(input_ids=torch.tensor([prompt_ids + tokens])).logits[0].float(), dim=-1)
    n = len(prompt_ids)
    return sum(float(logprobs[n + i - 1, t]) for i, t in enumerate(tokens))


def test_scores_after_a_lead_rank_like_the_whole_first_item(model: Any, tokenizer: Any) -> None:
    """With a lead, scores leave out what every answer shares; differences between answers are exact."""
    answers = ["The Silent Harbor (1995)", "Drama 3", "The Silent Harbor (1990)"]
    scores = score_candidates(model, tokenizer, PROMPT, answers, batch_size=2, answer_lead=LEAD)
    full = [_as_first_item(model, tokenizer, a) for a in answers]
    assert [s - scores[0] for s in scores] == pytest.approx([f - full[0] for f in full], abs=1e-4)
    assert all(s > f for s, f in zip(scores, full, strict=True))  # the shared lead's cost is left out
