"""Greedy generation through the serving encoder, and hit@k parsed from what a model answers."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from support.evaluation_fixtures import CONVERSATIONS, MATCHER

from core.masking import encode_prompt
from evaluation import RecoCase, end_of_turn_ids, evaluate_recommendations, generate_greedy, recommendation_prompts


def test_end_of_turn_is_the_templates_token(tokenizer: Any) -> None:
    assert end_of_turn_ids(tokenizer)[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_generation_end_to_end_serves_add_generation_prompt_prompts(model: Any, tokenizer: Any) -> None:
    cases, _ = recommendation_prompts(CONVERSATIONS, MATCHER)
    seen: list[list[int]] = []
    original = model.generate

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        for ids, att in zip(kwargs["input_ids"], kwargs["attention_mask"], strict=True):
            assert att.tolist() == sorted(att.tolist())  # left padding
            seen.append(ids[att.bool()].tolist())
        assert kwargs["generation_config"].do_sample is False
        return original(*args, **kwargs)

    model.generate = spy
    try:
        out = evaluate_recommendations(model, tokenizer, cases, MATCHER, batch_size=2, max_new_tokens=12, n_samples=2)
    finally:
        del model.generate
    expected = [
        tokenizer.apply_chat_template(
            list(c.prompt_messages), add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for c in cases
    ]
    assert sorted(seen) == sorted(expected)
    assert out["n"] == 3 and 0.0 <= out["hit@1"] <= out["hit@5"] <= 1.0
    assert [r["conversation_id"] for r in out["per_case"]] == ["c01", "c02", "c05"]
    assert all(isinstance(r["recommended"], list) for r in out["per_case"])
    assert len(out["samples"]) == 2 and out["samples"][0]["prompt"].endswith("<|im_start|>assistant\n")
    assert out["generated_tokens"] <= 3 * 12


def test_batched_greedy_generation_equals_one_at_a_time(model: Any, tokenizer: Any) -> None:
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for text in ["Hi", "I just watched Night Train (2001). What should I watch next?", "What year did Up come out?"]
    ]
    batched = generate_greedy(model, tokenizer, prompts, batch_size=3, max_new_tokens=8)
    single = [generate_greedy(model, tokenizer, [p], batch_size=1, max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert all(len(g) <= 8 for g in batched)


class _Oracle(torch.nn.Module):
    """Answers each prompt with a fixed text: checks parsing and hit@k end to end."""

    def __init__(self, tokenizer: Any, answers: dict[tuple[int, ...], str]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tok = tokenizer
        self.answers = answers
        self.eot = end_of_turn_ids(tokenizer)[0]

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generation_config: Any) -> torch.Tensor:
        rows = []
        for ids, att in zip(input_ids, attention_mask, strict=True):
            text = self.answers[tuple(ids[att.bool()].tolist())]
            rows.append(ids.tolist() + self.tok.encode(text, add_special_tokens=False) + [self.eot])
        width = max(map(len, rows))
        return torch.tensor([r + [self.eot] * (width - len(r)) for r in rows])


def test_hits_come_from_parsed_generations(tokenizer: Any) -> None:
    cases, _ = recommendation_prompts(CONVERSATIONS, MATCHER)
    answers = {
        "c01": "Here are a few picks for you:\n1. The Silent Harbor (2010)\n2. Up (2009)",  # hit@1
        "c02": "You might enjoy these next:\n1. Night Train (2001)\n2. Amélie (2001)",  # hit@5 only
        "c05": "Sorry, nothing comes to mind.",  # miss, no titles
    }
    oracle = _Oracle(
        tokenizer, {tuple(encode_prompt(tokenizer, list(c.prompt_messages))): answers[c.conversation_id] for c in cases}
    )
    out = evaluate_recommendations(oracle, tokenizer, cases, MATCHER, batch_size=2)
    assert out["hit@1"] == pytest.approx(1 / 3) and out["hit@5"] == pytest.approx(2 / 3)
    assert out["no_title_outputs"] == 1
    assert out["by_split"]["test"] == {"hit@1": 0.0, "hit@5": 1.0, "n": 1}
    assert out["samples"][0]["recommended"] == ["The Silent Harbor (2010)", "Up (2009)"]
    assert out["samples"][0]["hit@1"] is True
    limited = evaluate_recommendations(oracle, tokenizer, cases, MATCHER, limit=1)
    assert limited["n"] == 1 and limited["hit@1"] == 1.0


def test_unservable_prompts_are_skipped_with_a_reason(model: Any, tokenizer: Any) -> None:
    bad = RecoCase("bad", "validation", ({"role": "user", "content": ""},), "T1", "x", ())
    good = RecoCase("good", "validation", ({"role": "user", "content": "Hi"},), "T1", "x", ())
    out = evaluate_recommendations(model, tokenizer, [bad, good], MATCHER, max_new_tokens=4)
    assert out["n"] == 1 and out["skipped_by_reason"] == {"prompt_error": 1}
    assert out["skipped"][0]["conversation_id"] == "bad"
