"""The serving path: a prompt's token ids, tokenized exactly as training tokenizes them.

Training checks every turn against these ids, so a served prompt is token for token the
prefix the model was trained on; text that looks like a control token stays plain text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.masking import rendering
from core.masking.content_spans import content_spans
from core.masking.lookalikes import content_has_lookalike, segment_encode
from core.masking.messages import validate_messages
from core.masking.tokenizer_info import TokenizerInfo, info_for


def _encode_prompt_text(info: TokenizerInfo, messages: list[dict[str, Any]]) -> list[int]:
    """``messages`` (already validated) rendered with the generation prompt, then ``prompt_ids``."""
    prompt, _ = rendering.render_one(info, messages, True, False)
    return prompt_ids(info, messages, prompt)


def prompt_ids(info: TokenizerInfo, messages: list[dict[str, Any]], prompt: str) -> list[int]:
    """The serving path's tokens for ``prompt``, which is ``messages`` rendered with the generation prompt."""
    if any(content_has_lookalike(info, m["content"]) for m in messages):
        return segment_encode(info, prompt, content_spans(info, messages, prompt, True))[0]
    return info.plain.encode(prompt, add_special_tokens=False).ids


def encode_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """The serving path: token ids of ``messages`` rendered with ``add_generation_prompt=True``.

    Tokenized exactly as training does, so a served prompt is token-for-token the prefix
    the model was trained on; text that looks like a control token stays plain text.
    Raises MaskError when the messages are malformed or the template fails.
    """
    info = info_for(tokenizer)
    return _encode_prompt_text(info, validate_messages(messages, need_assistant=False))
