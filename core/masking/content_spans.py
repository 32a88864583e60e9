"""Where each message's content lies in a rendering, proven by a sentinel rendering (the shadow).

The conversation is rendered once more with a unique private-use sentinel in place of each
content; putting the contents back must reproduce the rendering exactly, so the spans are
proven rather than searched for, and templates that alter, repeat or drop content are
rejected by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from core.masking import rendering
from core.masking.compiled_template import TracedMessages
from core.masking.reasons import MaskError
from core.masking.tokenizer_info import TokenizerInfo


def sentinel(j: int) -> str:
    """The stand-in for message ``j``'s content.

    Private-use characters (plane 15): never produced by a template, and only ever
    compared against the sentinel rendering, which holds no user text.
    """
    return "\U000ffffd" + chr(0xF0000 + j) + "\U000ffffd"


_SENTINEL_RE = re.compile("(?=\U000ffffd([\U000f0000-\U000ffffc])\U000ffffd)")  # overlapping: see _count_apart


def _count_apart(starts: list[int], width: int) -> int:
    """How many of the (sorted) match starts str.count would count: leftmost first, never overlapping."""
    count, free = 0, -1
    for at in starts:
        if at >= free:
            count += 1
            free = at + width
    return count


def content_spans(
    info: TokenizerInfo, messages: list[dict[str, Any]], rendered: str, add_generation_prompt: bool
) -> list[tuple[int, int, int]]:
    """(message index, start, end) of every rendered content in ``rendered``, in text order.

    Renders once more with a unique sentinel in place of each content, then checks that
    putting the contents back reproduces ``rendered`` exactly, so the spans are proven.
    """
    return shadow_spans(info, messages, rendered, add_generation_prompt).spans


@dataclass
class Shadow:
    """``content_spans`` with what the sentinel rendering (the shadow) showed on the way."""

    spans: list[tuple[int, int, int]]  # (message index, start, end) in ``rendered``, in text order
    starts: list[int]  # where each span's sentinel is in the shadow
    text: str = ""  # the shadow
    positions: list[int] | None = None  # traced shadow: output length when the loop reached each message


def shadow_spans(
    info: TokenizerInfo,
    messages: list[dict[str, Any]],
    rendered: str,
    add_generation_prompt: bool,
    traced: bool = False,
) -> Shadow:
    """``content_spans``; ``traced`` renders the shadow through ``TracedMessages`` (plain chats only)."""
    if len(messages) >= 0xFFFD:
        raise MaskError("invalid_messages", f"{len(messages)} messages is more than sentinel rendering supports")
    marked = [{**m, "content": sentinel(j)} for j, m in enumerate(messages)]
    positions = None
    if traced:
        chat = TracedMessages(marked)
        got = rendering.render_many(info, [chat], add_generation_prompt, False)[0]
        if isinstance(got, MaskError):
            raise MaskError(got.reason, got.detail)
        shadow = got[0]
        positions = chat.positions if chat.passes == 1 else None
    else:
        shadow, _ = rendering.render_one(info, marked, add_generation_prompt, False)
    # Every sentinel occurrence in one scan (a search per message would be quadratic in the turns).
    occurrences: dict[int, list[int]] = {}
    for hit in _SENTINEL_RE.finditer(shadow):
        occurrences.setdefault(ord(hit.group(1)) - 0xF0000, []).append(hit.start())
    found: list[tuple[int, int]] = []
    for j, m in enumerate(messages):
        starts = occurrences.get(j, [])
        count = _count_apart(starts, 3)  # as str.count(sentinel(j)) counts: without overlaps
        if count > 1:
            raise MaskError(
                "content_not_verbatim", f"message {j} ({m['role']}) is rendered {count} times by the template"
            )
        if count == 1:
            found.append((starts[0], j))
        elif m["role"] == "assistant":
            raise MaskError("content_not_rendered", f"message {j} (assistant) does not appear in the rendering")
    found.sort()
    pieces: list[str] = []
    spans: list[tuple[int, int, int]] = []
    pos = out_len = 0
    for at, j in found:
        pieces.append(shadow[pos:at])
        out_len += at - pos
        content = messages[j]["content"]
        spans.append((j, out_len, out_len + len(content)))
        pieces.append(content)
        out_len += len(content)
        pos = at + len(sentinel(j))
    pieces.append(shadow[pos:])
    if "".join(pieces) != rendered:
        raise MaskError(
            "content_not_verbatim",
            "the template renders some content differently from the message text (e.g. trims, escapes or "
            "inspects it); rendering with the contents swapped out does not reproduce the rendering",
        )
    return Shadow(spans, [at for at, _ in found], shadow, positions)
