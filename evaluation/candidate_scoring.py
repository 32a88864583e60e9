"""Ranking candidate titles by the model's log-likelihood of each as the assistant's answer to a prompt.

A candidate's score is the sum of the log-probabilities of its answer tokens (the tokens training would put a
loss on: the answer and the end-of-turn token), given the prompt as served. Scoring reads the model's own
distribution instead of its one greedy answer, so every system is judged on the same candidate set.

All candidates of a prompt are scored in one forward pass: the prompt once, then the candidates end to end,
with an attention mask and positions under which each candidate sees the prompt and its own earlier tokens only
(and the model's sliding window where it has one), so the scores equal scoring each candidate alone (tests hold
this against the plain full-sequence computation for every supported model family).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from core.attention_layers import sliding_window
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
) -> list[float]:
    """Log-likelihood of each answer as the assistant's reply to `prompt_messages` (higher is likelier): one
    prompt's candidate_suffixes, scored by score_suffixes.

    With ``answer_lead``, of each answer as the start of a reply that begins with the lead (see
    candidate_suffixes); the scores then rank the answers against each other.
    """
    if not answers:
        return []
    drop = end_of_turn_ids(tokenizer) if answer_lead else ()
    context, completions = candidate_suffixes(
        tokenizer, prompt_messages, answers, answer_lead=answer_lead, drop_ids=drop
    )
    return score_suffixes(model, context, completions, batch_size=batch_size)


def _window(config: Any) -> int | None:
    """The sliding window of the model's windowed layers, None when it has none."""
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    unknown = kinds - {"full_attention", "sliding_attention"}
    if unknown:
        raise ValueError(
            f"candidate scoring packs candidates behind one attention mask and does not cover layers of type "
            f"{sorted(unknown)} ({type(config).__name__}); score with a model of a supported family"
        )
    return sliding_window(config)


def packed_sequence(
    context: Sequence[int], completions: Sequence[Sequence[int]], window: int | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """The context, then the completions end to end: (ids, positions, masks, first).

    Each completion's positions restart where the context ends, and ``masks["full_attention"][i, j]`` is true
    where token i may attend to token j: earlier context tokens for the context; the whole context and its own
    earlier tokens for a completion. ``masks["sliding_attention"]`` also keeps j within ``window`` positions of
    i (transformers' sliding layers). ``first`` marks, over the completions' tokens, each one's first token.
    """
    lengths = torch.tensor([len(context)] + [len(c) for c in completions], device=device)
    ids = torch.tensor([*context, *(t for c in completions for t in c)], device=device)
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)  # 0 is the context
    offsets = torch.cumsum(lengths, 0) - lengths
    within = torch.arange(len(ids), device=device) - offsets[owner]
    positions = torch.where(owner == 0, within, len(context) + within)
    earlier = torch.ones(len(ids), len(ids), dtype=torch.bool, device=device).tril()
    full = earlier & ((owner[None, :] == 0) | (owner[:, None] == owner[None, :]))
    masks = {"full_attention": full}
    if window is not None:
        masks["sliding_attention"] = full & (positions[:, None] - positions[None, :] < window)
    return ids, positions, masks, (within == 0)[len(context) :]


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A [1, 1, q, k] mask to add to attention scores: 0 where ``allowed``, the dtype's lowest value elsewhere."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


@torch.no_grad()
def score_suffixes(
    model: Any, context: Sequence[int], completions: Sequence[Sequence[int]], *, batch_size: int
) -> list[float]:
    """Sum of each completion's token log-probabilities after ``context`` (candidate_suffixes' two parts).

    Split from the tokenization so that models sharing a tokenizer score the same encoded candidates. Up to
    ``batch_size`` completions run in one forward pass: the context once, then the completions end to end, each
    seeing the context and its own earlier tokens only (packed_sequence), which is exactly what each would
    compute alone. Not a batch of completions over copies of the context's key/value cache: for titles of a few
    tokens, repeating that cache per completion cost more than the completions, and a batch pads each to the
    longest.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    window = _window(model.config)
    scores: list[float] = []
    for at in range(0, len(completions), batch_size):
        group = completions[at : at + batch_size]
        ids, positions, masks, first = packed_sequence(context, group, window, device)
        scored = len(ids) - len(context)
        # Additive masks: sdpa takes them like boolean ones, and eager attention adds whatever it is given.
        additive = {k: _additive(m, model.dtype) for k, m in masks.items()}
        attention_mask = additive if window is not None else additive["full_attention"]
        # Logits from the context's last position on, which predicts every completion's first token.
        logits = model(
            input_ids=ids[None],
            position_ids=positions[None],
            attention_mask=attention_mask,
            logits_to_keep=scored + 1,
        ).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        targets = ids[len(context) :]
        # Completion token k is predicted by row 0 (the context's end) when it is a first token, else by row k
        # (the token before it).
        rows = torch.where(first, 0, torch.arange(scored, device=device))
        token_lp = logprobs[rows, targets]
        owner = torch.cumsum(first.long(), 0) - 1
        sums = torch.zeros(len(group), dtype=token_lp.dtype, device=device).index_add_(0, owner, token_lp)
        scores.extend(sums.tolist())
    return scores


def rank_candidates(scores: Sequence[float], candidates: Sequence[str]) -> list[str]:
    """Candidates by score, best first (ties in the given order, so every system breaks them the same way)."""
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])
    return [candidates[i] for i in order]
