"""The ids that end an assistant turn, found from the tokenizer's own chat template.

Generation stops on them, candidate scoring leaves them off an answer scored as the first item of a longer one,
and preference pairs whose answer goes on after the compared title leave them out of the loss.
"""

from __future__ import annotations

from typing import Any

from core.masking.pipeline import encode_conversation
from core.masking.reasons import MaskError


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn: the template's end-of-turn token, then eos.

    The end-of-turn token is found the way loss masks find it: the added token the
    template places right after an assistant turn's content (the last masked token).
    """
    ids: list[int] = []
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    try:
        encoded = encode_conversation(tokenizer, probe)
        last = max(i for i, m in enumerate(encoded.loss_mask) if m == 1)
        candidate = encoded.input_ids[last]
        if candidate in tokenizer.added_tokens_decoder:
            ids.append(int(candidate))
    except (MaskError, ValueError, TypeError):
        pass
    eos = tokenizer.eos_token_id
    for tid in eos if isinstance(eos, list) else [eos]:
        if tid is not None and tid not in ids:
            ids.append(int(tid))
    if not ids:
        raise ValueError(
            "the tokenizer has no end-of-turn or eos token, so generation could not stop; set "
            "tokenizer.eos_token to the token the chat template puts after an assistant turn"
        )
    return ids


def open_end(ids: list[int], mask: list[int], end_ids: set[int]) -> list[int]:
    """``mask`` with the end-of-turn ids at the end of its last masked run unmasked (at least one token stays):
    the turn is scored as the start of a longer answer, not as a whole one."""
    out = list(mask)
    last = max((i for i, m in enumerate(out) if m), default=-1)
    while last > 0 and out[last - 1] and ids[last] in end_ids:
        out[last] = 0
        last -= 1
    return out


def close_end(ids: list[int], mask: list[int], end_ids: set[int]) -> list[int]:
    """The inverse of ``open_end``: the end-of-turn ids right after the last masked token masked again."""
    out = list(mask)
    last = max((i for i, m in enumerate(out) if m), default=-1)
    while last >= 0 and last + 1 < len(out) and ids[last + 1] in end_ids:
        out[last + 1] = 1
        last += 1
    return out
