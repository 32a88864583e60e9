"""Ranking candidate titles by the model's log-likelihood of each as the assistant's answer to a prompt.

A candidate's score is the sum of the log-probabilities of its answer tokens (the tokens training would put a
loss on: the answer and the end-of-turn token), given the prompt as served. Scoring reads the model's own
distribution instead of its one greedy answer, so every system is judged on the same candidate set.

The prompt is run once; its key/value cache is repeated across a batch of candidates, which then only pay for
their own few tokens. Candidates are right-padded: with causal attention a padded position never affects an
earlier one, and padded positions are left out of the sum, so the scores equal scoring each candidate alone
(tests hold this against the plain full-sequence computation).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from core.masking import MaskError, encode_batch, encode_prompt
from evaluation.generation import end_of_turn_ids
from evaluation.models import model_device


def answer_tokens(
    tokenizer: Any, prompt_messages: Sequence[Mapping[str, str]], answers: Sequence[str], prompt_ids: Sequence[int]
) -> list[list[int]]:
    """Each answer's loss-masked tokens after the served prompt (the answer and its end-of-turn token).

    All answers go through the masking engine in one batch: it renders and tokenizes them together and reuses
    the shared prompt's segments, which costs a fraction of one call per answer.
    """
    conversations = [[*map(dict, prompt_messages), {"role": "assistant", "content": a}] for a in answers]
    encoded, rejects = encode_batch(tokenizer, conversations)
    if rejects:
        index, reason, detail = rejects[0]
        raise MaskError(reason, f"answer {answers[index]!r}: {detail}")
    n = len(prompt_ids)
    out = []
    for result in encoded:
        assert result is not None
        if list(result.input_ids[:n]) != list(prompt_ids):
            raise ValueError(
                "the rendered conversation does not start with the served prompt (train/serve skew in the chat "
                "template): candidate scores would not be what the model sees at serving time"
            )
        out.append([tid for tid, m in zip(result.input_ids[n:], result.loss_mask[n:], strict=True) if m])
    return out


def candidate_suffixes(
    tokenizer: Any,
    prompt_messages: Sequence[Mapping[str, str]],
    answers: Sequence[str],
    *,
    answer_lead: str = "",
    drop_ids: Sequence[int] = (),
) -> tuple[list[int], list[list[int]]]:
    """The shared context (served prompt and the tokens all answers start with) and each answer's own tokens.

    With an ``answer_lead`` each answer is ``answer_lead + answer`` and the end-of-turn tokens (``drop_ids``) are
    left off: the candidate is scored as the first item of a longer answer, where training put it, not as the
    whole reply. Tokens every answer then shares (the lead) are moved into the context (at least one token stays
    per answer), so they run once and a candidate's score is the log-probability of what distinguishes it given
    the lead: comparable within one call only. Without a lead each whole answer is scored.
    """
    prompt_ids = encode_prompt(tokenizer, [dict(m) for m in prompt_messages])
    drop = set(drop_ids)
    full = answer_tokens(tokenizer, prompt_messages, [answer_lead + a for a in answers], prompt_ids)
    for answer, tokens in zip(answers, full, strict=True):
        while answer_lead and tokens and tokens[-1] in drop:
            tokens.pop()
        if not tokens:
            raise ValueError(f"answer {answer!r} has no tokens to score after the served prompt")
    shared = min(len(t) for t in full) - 1 if answer_lead else 0
    for k in range(shared):
        if any(t[k] != full[0][k] for t in full[1:]):
            shared = k
            break
    return list(prompt_ids) + full[0][:shared], [t[shared:] for t in full]


@torch.no_grad()
def score_candidates(
    model: Any,
    tokenizer: Any,
    prompt_messages: Sequence[Mapping[str, str]],
    answers: Sequence[str],
    *,
    batch_size: int = 64,
    answer_lead: str = "",
    end_of_turn: Sequence[int] | None = None,
) -> list[float]:
    """Log-likelihood of each answer as the assistant's reply to `prompt_messages` (higher is likelier).

    With ``answer_lead``, of each answer as the start of a reply that begins with the lead (see
    candidate_suffixes); the scores then rank the answers against each other. ``end_of_turn`` (the template's
    end-of-turn ids, found when not given) lets a caller scoring many prompts look them up once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not answers:
        return []
    device = model_device(model)
    drop = (end_of_turn if end_of_turn is not None else end_of_turn_ids(tokenizer)) if answer_lead else ()
    context, completions = candidate_suffixes(
        tokenizer, prompt_messages, answers, answer_lead=answer_lead, drop_ids=drop
    )
    prompt = torch.tensor([context], device=device)
    out = model(input_ids=prompt, use_cache=True)
    first_logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # predicts each answer's first token
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    start = len(context)
    scores: list[float] = []
    for at in range(0, len(completions), batch_size):
        batch = completions[at : at + batch_size]
        width = max(len(c) for c in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        keep = torch.zeros((len(batch), width), dtype=torch.bool, device=device)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens, device=device)
            keep[row, : len(tokens)] = True
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(len(batch))
        positions = torch.arange(start, start + width, device=device).expand(len(batch), width)
        extra = {cache_arg: batch_cache}  # transformers renamed past_key_values to cache within 5.x
        logits = model(input_ids=ids, position_ids=positions, use_cache=True, **extra).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        # Token i of an answer is predicted at position i - 1; token 0 by the prompt's last position.
        token_lp = torch.empty((len(batch), width), device=device)
        token_lp[:, 0] = first_logprobs[ids[:, 0]]
        if width > 1:
            token_lp[:, 1:] = logprobs[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        scores.extend((token_lp * keep).sum(dim=1).tolist())
    return scores


def rank_candidates(scores: Sequence[float], candidates: Sequence[str]) -> list[str]:
    """Candidates by score, best first (ties in the given order, so every system breaks them the same way)."""
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])
    return [candidates[i] for i in order]
