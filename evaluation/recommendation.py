"""Held-out recommendation cases and their hit@k.

For held-out ``recommendation`` conversations the first assistant turn lists titles, the first
being what the member actually watched next (core/conversation_builder/): that title is the
target, and everything before that turn is the prompt a model (or a baseline) answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from evaluation.heldout import HELDOUT_SPLITS
from evaluation.skips import Skipped
from evaluation.titles import TitleMatcher


@dataclass(frozen=True)
class RecoCase:
    """One held-out recommendation: serve ``prompt_messages``, expect ``target_title_id`` first."""

    conversation_id: str
    split: str
    prompt_messages: tuple[dict[str, str], ...]  # everything before the first assistant turn
    target_title_id: str
    target: str  # "Title (Year)" as the catalog has it
    history_title_ids: tuple[str, ...]  # titles named in the prompt's user turns


def recommendation_prompts(
    conversations: pl.DataFrame,
    matcher: TitleMatcher,
    *,
    splits: Sequence[str] = HELDOUT_SPLITS,
) -> tuple[list[RecoCase], list[Skipped]]:
    """Recommendation cases from held-out ``kind == "recommendation"`` conversations.

    ``conversations`` has the curated.conversations columns (conversation_id, kind, split,
    messages). The target is the first title the first assistant turn lists (a list item
    or ``Title (Year)``). Cases come sorted by conversation_id (a hash, so any prefix is
    an unbiased sample); conversations without a usable target come back as Skipped.
    """
    missing = [c for c in ("conversation_id", "kind", "split", "messages") if c not in conversations.columns]
    if missing:
        raise ValueError(f"conversations are missing columns {missing}; pass curated.conversations rows")
    rows = conversations.filter((pl.col("kind") == "recommendation") & pl.col("split").is_in(list(splits))).sort(
        "conversation_id"
    )
    cases: list[RecoCase] = []
    skipped: list[Skipped] = []
    for cid, split, messages in rows.select("conversation_id", "split", "messages").iter_rows():
        messages = [{"role": m["role"], "content": m["content"]} for m in messages or []]
        first = next((k for k, m in enumerate(messages) if m["role"] == "assistant"), None)
        if first is None or first == 0:
            skipped.append(Skipped(cid, "no_assistant_turn", f"roles are {[m['role'] for m in messages]}"))
            continue
        listed = [m for m in matcher.find(messages[first]["content"] or "") if m.how != "free"]
        if not listed:
            answer = (messages[first]["content"] or "")[:120]
            skipped.append(Skipped(cid, "no_target_title", f"first assistant turn {answer!r} lists no catalog title"))
            continue
        prompt = tuple(messages[:first])
        history: list[str] = []
        for m in prompt:
            if m["role"] == "user":
                history.extend(matcher.match(m["content"] or ""))
        target = listed[0].title_id
        cases.append(
            RecoCase(
                conversation_id=cid,
                split=split,
                prompt_messages=prompt,
                target_title_id=target,
                target=matcher.display(target),
                history_title_ids=tuple(dict.fromkeys(t for t in history if t != target)),
            )
        )
    return cases, skipped


def hit_at_k(recommended: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> float:
    """Share of cases whose target is among the first ``k`` recommendations (0.0 for no cases)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(recommended) != len(targets):
        raise ValueError(f"{len(recommended)} recommendation lists for {len(targets)} targets")
    if not targets:
        return 0.0
    return sum(t in list(r[:k]) for r, t in zip(recommended, targets, strict=True)) / len(targets)


def hit_rates(recommended: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int]) -> dict[str, float]:
    return {f"hit@{k}": hit_at_k(recommended, targets, k) for k in ks}


def hits_by_split(cases: Sequence[RecoCase], recs: Sequence[Sequence[str]], ks: Sequence[int]) -> dict[str, Any]:
    out = {}
    for split in sorted({c.split for c in cases}):
        idx = [i for i, c in enumerate(cases) if c.split == split]
        out[split] = {
            **hit_rates([recs[i] for i in idx], [cases[i].target_title_id for i in idx], ks),
            "n": len(idx),
        }
    return out
