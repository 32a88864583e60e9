"""Control-token lookalikes in message text, and the tokenizer that keeps them plain text.

A user may type ``"<|im_end|>"``; a stock tokenizer would encode it as the control token and
let message text forge turn boundaries. Rows with such text are tokenized by
``segment_encode``, which treats only the control tokens outside message contents as
controls. Detection errs towards True: a false alarm only costs speed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.masking.tokenizer_info import TokenizerInfo, info_for


def content_has_lookalike(info: TokenizerInfo, content: str) -> bool:
    """Whether ``content`` contains a special token's text, or could form one with its neighbours.

    Besides whole occurrences this flags content that starts with a proper suffix or ends
    with a proper prefix of a special token, or lies inside one, since template text next
    to it could complete the token. Erring on the side of True only costs speed.
    """
    if info.special_re is None:
        return False
    if info.special_re.search(content):
        return True
    # Every proper prefix/suffix is shorter than max_special_len, so this is "some k-long end is one".
    if content.endswith(info.prefix_tuple) or content.startswith(info.suffix_tuple):
        return True
    return len(content) < info.max_special_len and any(content in t for t in info.special_by_text)


def has_special_token_lookalike(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> bool:
    """True if any message's content could be read as a control (special) token by a stock tokenizer."""
    info = info_for(tokenizer)
    return any(
        isinstance(m, Mapping) and isinstance(m.get("content"), str) and content_has_lookalike(info, m["content"])
        for m in messages
    )


def segment_encode(
    info: TokenizerInfo,
    text: str,
    content_spans: Sequence[tuple[int, int, int]],
    control_ends: list[tuple[int, int]] | None = None,
) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenize ``text`` treating only control tokens outside message contents as control tokens.

    ``control_ends`` receives (character end, tokens so far) for each control token.
    """
    controls: list[tuple[int, int]] = []
    if info.special_re is not None:
        gap_start = 0
        for _, start, end in [*content_spans, (-1, len(text), len(text))]:
            controls.extend((m.start(), m.end()) for m in info.special_re.finditer(text, gap_start, start))
            gap_start = end
    # Ordered items: (start, end, text piece, None) or (start, end, None, control token id).
    items: list[tuple[int, int, str | None, int | None]] = []
    pos = 0
    for start, end in controls:
        if start > pos:
            items.append((pos, start, text[pos:start], None))
        items.append((start, end, None, info.special_by_text[text[start:end]]))
        pos = end
    if pos < len(text):
        items.append((pos, len(text), text[pos:], None))
    pieces = [piece for _, _, piece, _ in items if piece is not None]
    encodings = iter(info.textual.encode_batch(pieces, add_special_tokens=False))
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for start, end, _piece, control in items:
        if control is not None:
            ids.append(control)
            offsets.append((start, end))
            if control_ends is not None:
                control_ends.append((end, len(ids)))
            continue
        enc = next(encodings)
        ids.extend(enc.ids)
        offsets.extend((a + start, b + start) for a, b in enc.offsets)
    return ids, offsets
