"""Views of the encoder's internals, for benchmarks and diagnostics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer

from core.masking import rendering
from core.masking.messages import validate_messages
from core.masking.prefix_stability import prefix_bound
from core.masking.reasons import MaskError
from core.masking.tokenizer_info import info_for


def render_conversations(tokenizer: Any, conversations: Sequence[Any]) -> list[str]:
    """The chat template's rendering of each conversation, the text ``encode_batch`` tokenizes.

    Each conversation is validated as for training (MaskError on invalid messages or no
    assistant turn) and rendered without a generation prompt. With a ChatML template,
    ``[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]`` renders as
    ``"<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\nyo<|im_end|>\\n"``.
    """
    info = info_for(tokenizer)
    chats = [validate_messages(c, need_assistant=True) for c in conversations]
    out = []
    for rendered in rendering.render_many(info, chats, False, False):
        if isinstance(rendered, MaskError):
            raise rendered
        out.append(rendered[0])
    return out


def text_tokenizer(tokenizer: Any) -> Tokenizer:
    """The Rust tokenizer ``encode_batch`` encodes renderings with: a private copy of the
    tokenizer's backend without post-processor, truncation or padding (so one may time it
    or call it freely without touching the caller's tokenizer)."""
    return info_for(tokenizer).plain


def prefix_stable(tokenizer: Any) -> bool:
    """Whether the template provably renders each serving prompt as a prefix of the full
    rendering, so that ``encode_batch`` need not render every prompt separately."""
    return prefix_bound(info_for(tokenizer)) is not None
