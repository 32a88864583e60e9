"""Why a conversation gets no loss mask: the reason codes, and the error that carries one.

Every reject names a code from ``MASK_REASONS`` so that quarantine rows can be counted by
reason and explained in the docs (core.reason_docs); an unknown code is a programming
error, caught when the error is built rather than when someone reads the quarantine.
"""

from __future__ import annotations

MASK_REASONS: dict[str, str] = {
    "invalid_messages": "the conversation is not a non-empty list of {'role': str, 'content': str} "
    "messages with non-empty content (a system message may be empty) and a user/system turn before the "
    "first assistant turn",
    "no_assistant_turn": "the conversation has no assistant turn, so it carries no loss",
    "template_error": "the chat template raised while rendering the conversation",
    "serving_prefix_mismatch": "the serving prompt for an assistant turn (the turns before it rendered with "
    "add_generation_prompt=True) is not exactly the text before that turn's content in the full rendering: "
    "the template rewrites earlier turns or inserts text between the generation prompt and the content",
    "content_not_rendered": "a message's content does not appear in the rendering where the template puts it",
    "content_not_verbatim": "the template alters a message's content (e.g. escapes it) or renders it more "
    "than once; whitespace it trims from an assistant turn is masked as rendered instead",
    "boundary_straddle": "a token spans the boundary between template text and assistant content, so no mask "
    "can be exact (e.g. content starting with whitespace that merges with the template's newline)",
    "token_prefix_mismatch": "the serving prompt's tokens differ from the training tokens before the "
    "assistant content, although the text matches (tokenizer merges across the boundary)",
    "generation_marker_mismatch": "the template's {% generation %} spans disagree with the content + "
    "end-of-turn spans derived from the serving prompts",
    "lookalike_unresolved": "text that looks like a control token still encodes to a control token inside "
    "message content",
    "turn_rewritten": "the template renders an assistant turn differently once later turns follow (e.g. strips "
    "its reasoning), although each turn renders as written when it is the last one; rewrite_policy='quarantine' "
    "rejects such rows ('expand' trains each turn as written, 'as_rendered' as the full rendering shows it)",
    "too_long": "the encoded conversation is longer than max_length",
    "truncated_no_loss": "truncating to max_length left no assistant token to train on",
}


class MaskError(Exception):
    """A conversation for which no exact loss mask exists; ``reason`` is a MASK_REASONS code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in MASK_REASONS:
            raise ValueError(f"unknown mask reason {reason!r}; add it to MASK_REASONS")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
