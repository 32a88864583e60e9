"""The loss mask of a located conversation, its token-level checks, and the length rule.

Content spans become token ranges only where token boundaries fall exactly on them (else no
exact mask exists), the end-of-turn token after each content is masked with it, and each
turn's serving prompt must tokenize to the training tokens before the content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.masking.reasons import MaskError
from core.masking.token_offsets import TokenOffsets
from core.masking.tokenizer_info import TokenizerInfo
from core.masking.work import Work


@dataclass(frozen=True)
class EncodedConversation:
    """One shard row's payload; ``truncated`` says max_length cut it (overlong="truncate")."""

    input_ids: list[int]
    loss_mask: list[int]
    truncated: bool = False


_TAIL_CACHE_MAX = 4096


def _token_span(offsets: TokenOffsets, start: int, end: int, turn: int, rendered: str) -> tuple[int, int]:
    """Token index range [first, stop) covering exactly the characters [start, end)."""
    n = offsets.n
    first = offsets.first_from(start)
    stop = offsets.first_from(end)
    if first >= n or offsets.start(first) != start or (first > 0 and offsets.end(first - 1) > start):
        around = rendered[max(0, start - 10) : start + 10]
        raise MaskError(
            "boundary_straddle",
            f"no token boundary where message {turn}'s content starts (text around it: {around!r}); a token "
            "merges template text with content",
        )
    if stop <= first or offsets.end(stop - 1) != end:
        around = rendered[max(0, end - 10) : end + 10]
        raise MaskError(
            "boundary_straddle",
            f"no token boundary where message {turn}'s content ends (text around it: {around!r})",
        )
    return first, stop


def finish_mask(
    info: TokenizerInfo,
    work: Work,
    ids: list[int],
    offsets: TokenOffsets,
    prompt_ids: list[tuple[int, list[int]]] | None,
    cut: int | None = None,
) -> tuple[list[int], list[int]]:
    """The loss mask of the checked turns (``work.spans``), with the token-level serving-prefix check.

    ``prompt_ids[k]`` is ``(keep, tail)``: turn k's serving prompt tokenizes to ``ids[:keep] + tail``;
    None: a segment-safe tokenizer, for which the tail after the last added token is tokenized here.

    ``cut``: the character where truncation will cut; the generation-marker comparison covers the text before it.
    """
    mask = [0] * len(ids)
    masked_chars: list[tuple[int, int]] = []
    for k, (turn, (start, end)) in enumerate(zip(work.turns, work.spans, strict=False)):
        first, stop = _token_span(offsets, start, end, turn, work.rendered)
        if not info.special_ids.isdisjoint(ids[first:stop]):
            t = next(t for t in range(first, stop) if ids[t] in info.special_ids)
            raise MaskError(
                "lookalike_unresolved",
                f"message {turn}'s content encodes to control token id {ids[t]} at token {t}",
            )
        char_end = end
        if stop < len(ids) and ids[stop] in info.added_ids and offsets.start(stop) == end:
            char_end = offsets.end(stop)
            stop += 1
        mask[first:stop] = [1] * (stop - first)
        masked_chars.append((start, char_end))

        # Serving prefix at the token level.
        if prompt_ids is not None:
            keep, tail_ids = prompt_ids[k]  # the prompt's tokens are ids[:keep] + tail_ids
            if keep > first or ids[keep:first] != tail_ids:
                _raise_token_mismatch(turn, ids[:first], ids[:keep] + tail_ids)
        else:
            # Segment-safe tokenizer: the prompt's tokens are ours up to the last added
            # token before the content, then the text after it tokenized on its own.
            last = first - 1
            while last >= 0 and ids[last] not in info.added_ids:
                last -= 1
            tail = work.rendered[(offsets.end(last) if last >= 0 else 0) : start]
            tail_ids = info.tail_cache.get(tail)
            if tail_ids is None:
                tail_ids = info.plain.encode(tail, add_special_tokens=False).ids
                if len(info.tail_cache) >= _TAIL_CACHE_MAX:
                    info.tail_cache.clear()
                info.tail_cache[tail] = tail_ids
            if ids[last + 1 : first] != tail_ids:
                _raise_token_mismatch(turn, ids[:first], ids[: last + 1] + tail_ids)

    if work.gen_spans is not None:
        marked = _merge_spans(work.gen_spans)
        if work.only_last and work.spans:  # the earlier turns are context here: only the last one is compared
            marked = [(a, b) for a, b in marked if b > work.spans[0][0]]
        implied = _merge_spans(masked_chars)
        if cut is not None:
            marked, implied = _clip_spans(marked, cut), _clip_spans(implied, cut)
        if marked != implied:
            at = next((k for k, (a, b) in enumerate(zip(marked, implied, strict=False)) if a != b), None)
            at = min(len(marked), len(implied)) if at is None else at
            raise MaskError(
                "generation_marker_mismatch",
                f"template marks characters {_brief_spans(marked)} as generated, the serving prompts imply "
                f"{_brief_spans(implied)}; first difference: span {at}, "
                f"{marked[at] if at < len(marked) else None} vs {implied[at] if at < len(implied) else None}",
            )
    return ids, mask


def _clip_spans(spans: list[tuple[int, int]], cut: int) -> list[tuple[int, int]]:
    """The parts of ``spans`` before character ``cut`` (what truncation keeps)."""
    return [(a, min(b, cut)) for a, b in spans if a < cut]


def _brief_spans(spans: list[tuple[int, int]]) -> str:
    """A span list for an error message, shortened so a long conversation gives a short detail."""
    if len(spans) <= 6:
        return str(spans)
    return f"[{', '.join(map(str, spans[:3]))}, ..., {', '.join(map(str, spans[-2:]))}] ({len(spans)} spans)"


def _merge_spans(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The same characters as sorted, non-empty, non-touching spans, so equal markings compare equal."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _raise_token_mismatch(turn: int, got: list[int], expected: list[int]) -> None:
    at = next(
        (k for k, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
        min(len(got), len(expected)),
    )
    raise MaskError(
        "token_prefix_mismatch",
        f"before message {turn}'s content the training tokens {got[at : at + 5]} differ from the serving "
        f"prompt's tokens {expected[at : at + 5]} at token {at} ({len(got)} vs {len(expected)} tokens)",
    )


def too_long(tokens: int, max_length: int) -> MaskError:
    """The ``too_long`` reject, built where the length rule runs (before any per-turn work) and here."""
    return MaskError(
        "too_long", f"{tokens} tokens > max_length={max_length}; raise max_length or use overlong='truncate'"
    )


def apply_length(ids: list[int], mask: list[int], max_length: int | None, overlong: str) -> EncodedConversation:
    """The finished row under the length rule: kept, cut to ``max_length`` (``truncate``), or rejected."""
    if max_length is None or len(ids) <= max_length:
        return EncodedConversation(ids, mask, False)
    if overlong == "quarantine":
        raise too_long(len(ids), max_length)
    ids, mask = ids[:max_length], mask[:max_length]
    if not any(mask):
        raise MaskError(
            "truncated_no_loss",
            f"the first assistant token is beyond max_length={max_length}; no loss token survives truncation",
        )
    return EncodedConversation(ids, mask, True)
