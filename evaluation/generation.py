"""Recommendation hit@k of a model's own greedy answers.

The prompt is encoded with the checkpoint's own tokenizer through the platform's serving encoder
(``core.masking.encode_prompt``), the model answers greedily, and the titles it names are matched
back to the catalog.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig

from core.masking import MaskError, encode_prompt, end_of_turn_ids
from evaluation.models import model_device
from evaluation.recommendation import RecoCase, hit_rates, hits_by_split
from evaluation.skips import Skipped, count_reasons
from evaluation.titles import TitleMatcher


def encode_prompts(tokenizer: Any, cases: Sequence[RecoCase]) -> tuple[list[list[int] | None], list[Skipped]]:
    """Serving-path prompt ids per case (``core.masking.encode_prompt``, add_generation_prompt=True)."""
    out: list[list[int] | None] = []
    skipped: list[Skipped] = []
    for case in cases:
        try:
            out.append(encode_prompt(tokenizer, list(case.prompt_messages)))
        except MaskError as err:
            out.append(None)
            skipped.append(Skipped(case.conversation_id, "prompt_error", f"{err.reason}: {err.detail}"))
    return out, skipped


@torch.no_grad()
def generate_greedy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 96,
    device: str | torch.device | None = None,
) -> list[list[int]]:
    """Greedy continuations (new token ids, stop token excluded) of ``prompts``, batched.

    Prompts are sorted by length and left-padded, so every row's last prompt token is
    adjacent to its first generated token; decoding stops at the end-of-turn token.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) must be >= 1")
    device = torch.device(device) if device is not None else model_device(model)
    stops = end_of_turn_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad_id,
        use_cache=True,
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, i in enumerate(chunk):
                n = len(prompts[i])
                input_ids[j, width - n :] = torch.tensor(list(prompts[i]), dtype=torch.long)
                attention[j, width - n :] = 1
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
            )
            for j, i in enumerate(chunk):
                new = out[j, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in stops), len(new))
                results[i] = new[:cut]
    finally:
        model.train(was_training)
    return results


def evaluate_recommendations(
    model: Any,
    tokenizer: Any,
    cases: Sequence[RecoCase],
    matcher: TitleMatcher,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 96,
    limit: int | None = None,
    n_samples: int = 5,
    ks: Sequence[int] = (1, 5),
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """hit@k of greedy generations on ``cases`` (the first ``limit`` of them).

    Returns {hit@1, hit@5, n, by_split, no_title_outputs, mean_titles, skipped,
    skipped_by_reason, samples, per_case, generated_tokens, seconds}. Cases whose
    prompt cannot be served are skipped with a reason and left out of n.
    """
    start_time = time.perf_counter()
    cases = list(cases[:limit] if limit is not None else cases)
    prompts, skipped = encode_prompts(tokenizer, cases)
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    keep: list[int] = []
    for i, ids in enumerate(prompts):
        if ids is None:
            continue
        if isinstance(max_positions, int) and len(ids) + max_new_tokens > max_positions:
            skipped.append(
                Skipped(
                    cases[i].conversation_id,
                    "prompt_too_long",
                    f"{len(ids)} prompt tokens + {max_new_tokens} new > {max_positions} positions",
                )
            )
            continue
        keep.append(i)
    kept_prompts = [prompts[i] for i in keep]
    generated = generate_greedy(
        model, tokenizer, kept_prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, device=device
    )
    kept = [cases[i] for i in keep]
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in generated]
    recs = [matcher.match(text) for text in texts]
    targets = [c.target_title_id for c in kept]
    per_case = [
        {"conversation_id": c.conversation_id, "split": c.split, "target": c.target_title_id, "recommended": r}
        for c, r in zip(kept, recs, strict=True)
    ]
    samples = []
    for c, ids, text, r in list(zip(kept, kept_prompts, texts, recs, strict=True))[:n_samples]:
        samples.append(
            {
                "conversation_id": c.conversation_id,
                "prompt": tokenizer.decode(ids, skip_special_tokens=False),
                "generated": text,
                "target": c.target,
                "recommended": [matcher.display(t) for t in r[: max(ks)]],
                "hit@1": c.target_title_id in r[:1],
                f"hit@{max(ks)}": c.target_title_id in r[: max(ks)],
            }
        )
    return {
        **hit_rates(recs, targets, ks),
        "n": len(kept),
        "by_split": hits_by_split(kept, recs, ks),
        "no_title_outputs": sum(1 for r in recs if not r),
        "mean_titles": sum(len(r) for r in recs) / len(recs) if recs else 0.0,
        "skipped": [s.as_dict() for s in skipped],
        "skipped_by_reason": count_reasons(skipped),
        "samples": samples,
        "per_case": per_case,
        "generated_tokens": sum(len(g) for g in generated),
        "seconds": time.perf_counter() - start_time,
    }
