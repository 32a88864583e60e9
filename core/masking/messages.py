"""Input validation: a conversation is checked before the chat template sees it.

Bad rows are rejected with the index of the offending message, which says more than
whatever the template would raise on them, and lone surrogates never reach the tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from core.masking.reasons import MaskError

_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def validate_messages(messages: Any, *, need_assistant: bool) -> list[dict[str, Any]]:
    """Plain dict copies of ``messages``; MaskError("invalid_messages") naming the bad message."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or len(messages) == 0:
        raise MaskError(
            "invalid_messages",
            f"expected a non-empty list of {{'role', 'content'}} dicts, got {type(messages).__name__}",
        )
    out = []
    for j, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise MaskError("invalid_messages", f"message {j} is a {type(message).__name__}, not a dict")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise MaskError(
                "invalid_messages",
                f"message {j} needs string 'role' and 'content', got role={role!r}, "
                f"content of type {type(content).__name__}",
            )
        if not content and role != "system":
            # An empty system message is a real instruction ("no system prompt") that the
            # template renders as it likes; an empty user or assistant turn is a broken row.
            raise MaskError("invalid_messages", f"message {j} ({role}) has empty content")
        if not (content.isascii() and role.isascii()) and (_SURROGATE_RE.search(content) or _SURROGATE_RE.search(role)):
            raise MaskError(
                "invalid_messages",
                f"message {j} ({role[:20]!r}) holds lone surrogates, which are not valid text",
            )
        out.append(dict(message))
    if need_assistant:
        if not any(m["role"] == "assistant" for m in out):
            raise MaskError("no_assistant_turn", f"roles are {[m['role'] for m in out]}; nothing to train on")
        if out[0]["role"] == "assistant":
            raise MaskError(
                "invalid_messages",
                "the conversation starts with an assistant turn, which has no prompt to be served from; "
                "start it with a user (or system) turn",
            )
    return out
