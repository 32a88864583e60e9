"""What to train on when the chat template rewrites the conversation: the rewrite policy.

Many open-weight templates render an assistant turn differently once later turns follow it:
reasoning templates drop ``<think>...</think>`` from turns before the last user turn, others
shorten or replace earlier replies. No single row then holds every turn as written *and*
each turn's prefix as the serving prompt, which is what an exact mask needs, so the whole
conversation is rejected (``content_not_rendered``, ``content_not_verbatim`` or
``serving_prefix_mismatch``). For those rows only, the policy decides:

- ``expand`` (default): one example per assistant turn, ``messages[:turn + 1]`` with only
  that last turn masked. Its target is the turn as written (reasoning kept) and its prefix
  is exactly the serving prompt at that turn, so training and serving agree on every token;
  the history is trained on once per turn instead of once per row.
- ``as_rendered``: one row, the full rendering, each turn masked as it shows there: a
  rewritten turn from its serving prompt to the next control token (what transformers'
  generation mask trains on). Earlier reasoning is then never trained on.
- ``quarantine``: the row is rejected (``turn_rewritten``), the detail naming the first
  turn the template rewrites.

A row counts as rewritten only when every assistant turn encodes exactly as the last turn of
its own prefix: that proves the template renders each turn faithfully until later turns
follow. Any other reject (a template that inserts text before the content, or alters it even
as the last turn) stays as it was. Templates that never rewrite (ChatML) never reach here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from core.masking.masks import EncodedConversation
from core.masking.messages import validate_messages
from core.masking.pipeline import encode_batch

RewritePolicy = Literal["expand", "as_rendered", "quarantine"]
REWRITE_POLICIES: tuple[str, ...] = ("expand", "as_rendered", "quarantine")
DEFAULT_REWRITE_POLICY: RewritePolicy = "expand"

# The rejects a rewriting template produces; only rows rejected for one of these are looked at.
_REWRITE_SIGNS = frozenset({"content_not_rendered", "content_not_verbatim", "serving_prefix_mismatch"})


@dataclass(frozen=True)
class Example:
    """One training row of conversation ``index``.

    ``target_turn``: under ``expand``, the message index of the one turn masked (the row is
    ``messages[:target_turn + 1]``); None when the row is the whole conversation.
    ``as_rendered``: the turns are masked as the full rendering shows them.
    """

    index: int
    encoded: EncodedConversation
    target_turn: int | None = None
    as_rendered: bool = False


@dataclass
class PolicyOutcome:
    """Every conversation's rows and rejects, and how many rows each way went."""

    examples: list[Example]  # in conversation order, an expanded row's turns in turn order
    rejects: list[tuple[int, str, str]]  # (index, reason, detail), in index order
    counts: dict[str, int] = field(default_factory=dict)  # kept, expanded, expanded_examples, as_rendered, quarantined


def encode_with_policy(
    tokenizer: Any,
    conversations: Sequence[Any],
    *,
    policy: RewritePolicy = DEFAULT_REWRITE_POLICY,
    max_length: int | None = None,
    overlong: Literal["quarantine", "truncate"] = "quarantine",
) -> PolicyOutcome:
    """``encode_batch``, then the rewrite policy on the rows a rewriting template rejected."""
    if policy not in REWRITE_POLICIES:
        raise ValueError(f"rewrite policy must be one of {REWRITE_POLICIES}, got {policy!r}")
    results, rejects = encode_batch(tokenizer, conversations, max_length=max_length, overlong=overlong)
    examples = [Example(i, e) for i, e in enumerate(results) if e is not None]
    counts = {"kept": len(examples), "expanded": 0, "expanded_examples": 0, "as_rendered": 0}
    candidates = {i: (reason, detail) for i, reason, detail in rejects if reason in _REWRITE_SIGNS}
    per_turn = _encode_each_turn(tokenizer, conversations, sorted(candidates), max_length, overlong)
    rewritten = sorted(per_turn)
    settled: dict[int, tuple[str, str] | None] = {}  # index -> new reject, or None when it has rows now
    if policy == "expand":
        for i in rewritten:
            examples.extend(Example(i, e, t) for t, e in per_turn[i])
            settled[i] = None
            counts["expanded"] += 1
            counts["expanded_examples"] += len(per_turn[i])
    elif policy == "as_rendered":
        got, failed = encode_batch(
            tokenizer, [conversations[i] for i in rewritten], max_length=max_length, overlong=overlong, as_rendered=True
        )
        for k, reason, detail in failed:
            settled[rewritten[k]] = (reason, detail)
        for i, e in zip(rewritten, got, strict=True):
            if e is not None:
                examples.append(Example(i, e, None, as_rendered=True))
                settled[i] = None
                counts["as_rendered"] += 1
    else:
        for i in rewritten:
            settled[i] = ("turn_rewritten", _rewritten_detail(*candidates[i]))
    remaining = [(i, reason, detail) for i, reason, detail in rejects if i not in settled]
    remaining += [(i, *new) for i, new in settled.items() if new is not None]
    remaining.sort(key=lambda r: r[0])
    examples.sort(key=lambda x: (x.index, -1 if x.target_turn is None else x.target_turn))
    counts["quarantined"] = len(remaining)
    return PolicyOutcome(examples, remaining, counts)


def _rewritten_detail(reason: str, detail: str) -> str:
    """The quarantine policy's detail: the cause, then the check that found it."""
    return (
        "the template rewrites an earlier assistant turn once later turns follow (each turn renders as "
        f"written when it is the last one), and rewrite_policy='quarantine'; {reason}: {detail}"
    )


def _encode_each_turn(
    tokenizer: Any,
    conversations: Sequence[Any],
    indices: list[int],
    max_length: int | None,
    overlong: Literal["quarantine", "truncate"],
) -> dict[int, list[tuple[int, EncodedConversation]]]:
    """For each conversation whose every assistant turn encodes as the last turn of its prefix: those encodings.

    Keyed by conversation index, each a list of ``(turn, encoding)`` in turn order; rows with a
    turn that fails are left out (they are not rewritten, or not only).
    """
    prefixes: list[list[dict[str, Any]]] = []
    owners: list[tuple[int, int]] = []  # (conversation index, turn) of each prefix
    for i in indices:
        messages = validate_messages(conversations[i], need_assistant=True)  # already passed once
        for t, m in enumerate(messages):
            if m["role"] == "assistant":
                prefixes.append(messages[: t + 1])
                owners.append((i, t))
    got, failed = encode_batch(tokenizer, prefixes, max_length=max_length, overlong=overlong, only_last=True)
    broken = {owners[k][0] for k, _, _ in failed}
    out: dict[int, list[tuple[int, EncodedConversation]]] = {}
    for (i, t), e in zip(owners, got, strict=True):
        if i not in broken and e is not None:
            out.setdefault(i, []).append((t, e))
    return out
