"""Exact assistant-only loss masks from a tokenizer's own chat template.

DESIGN.md's loss-mask rule: ``loss_mask`` is 1 exactly on the tokens of each assistant
turn's content and on the end-of-turn token the template places right after it; 0 on
system/user turns, role headers and scaffolding. The tokenizer's chat template is the
single source of truth, for training shards and for serving prompts alike.

How a conversation is encoded (``encode_batch``, in pipeline and chunks):

1. Render it with the template (rendering) and tokenize the rendering with the fast (Rust)
   tokenizer (segments). Where a message contains text that looks like a control token
   (``"<|im_end|>"`` typed by a user; lookalikes), the rendering is instead split at the
   control tokens that lie *outside* message contents (located by rendering once more with
   private-use sentinels in place of each content; content_spans) and the text in between is
   tokenized with special-token matching off, so content is always plain text. Without
   lookalikes both ways give the same ids.
2. Apply the length rule on those tokens before any per-turn work: with
   ``overlong="quarantine"`` a conversation longer than ``max_length`` is rejected
   (``too_long``) without rendering a single serving prompt; with ``"truncate"`` only the
   turns whose content starts before the cut are checked and masked below.
3. For every assistant turn ``i``, the serving prompt ``messages[:i]`` rendered with
   ``add_generation_prompt=True`` must be a string prefix of the full rendering and the
   turn's content must follow it verbatim; that pins the content's character span without
   trusting any marker (locate_turns). Templates that rewrite earlier turns, insert text
   between the generation prompt and the content, or alter the content are rejected here
   (whitespace a template trims off the content is masked as rendered instead).
   Rendering every prompt costs time quadratic in the turns, so for templates whose syntax
   proves the prompts are prefixes (prefix_stability) the full rendering records where its
   loop reached each message and one exact prompt gives the generation prompt; other
   templates have each prompt rendered.
4. Map the content span to tokens with offset mappings (masks, token_offsets). A token that
   straddles the content boundary means no exact mask exists: reject. The next token, when
   it is an added token, is the end-of-turn token and is masked too.
5. Check the serving prefix at the token level: the tokens of each turn's serving
   prompt must equal the full encoding up to the turn's first content token (no
   train/serve skew); only the text after the last control token before the content is
   tokenized per turn where the tokenizer allows it. For templates with
   ``{% generation %}`` markers, the masked character spans must also equal the marked spans.

Templates that rewrite the conversation (strip earlier reasoning, replace earlier replies)
are handled by a policy on top of this (rewrites: ``encode_with_policy``): one example per
turn (``expand``), the turns as rendered (``as_rendered``), or quarantine.

Anything that cannot be made exact raises ``MaskError`` with a reason code from
``MASK_REASONS``; nothing is masked wrongly in silence. ``verify_masks`` and
``verify_serving_prefix`` re-check finished encodings by independent means (decoding,
and transformers' stock ``apply_chat_template``) for asset checks and tests.
"""

from core.masking.diagnostics import prefix_stable, render_conversations, text_tokenizer
from core.masking.end_of_turn import close_end, end_of_turn_ids, open_end
from core.masking.lookalikes import has_special_token_lookalike
from core.masking.masks import EncodedConversation
from core.masking.pipeline import encode_batch, encode_conversation, paused_gc
from core.masking.reasons import MASK_REASONS, MaskError
from core.masking.rewrites import (
    DEFAULT_REWRITE_POLICY,
    REWRITE_POLICIES,
    Example,
    PolicyOutcome,
    RewritePolicy,
    encode_with_policy,
)
from core.masking.serving_prompt import encode_prompt
from core.masking.verify import verify_masks, verify_serving_prefix

__all__ = [
    "DEFAULT_REWRITE_POLICY",
    "MASK_REASONS",
    "REWRITE_POLICIES",
    "EncodedConversation",
    "Example",
    "MaskError",
    "PolicyOutcome",
    "RewritePolicy",
    "close_end",
    "encode_batch",
    "encode_conversation",
    "encode_prompt",
    "encode_with_policy",
    "end_of_turn_ids",
    "has_special_token_lookalike",
    "open_end",
    "paused_gc",
    "prefix_stable",
    "render_conversations",
    "text_tokenizer",
    "verify_masks",
    "verify_serving_prefix",
]
