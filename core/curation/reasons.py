"""Reason codes of curation and their one-line meanings.

Every rejected row carries exactly one of these codes, so the tables are the contract
between the rules, the quarantine tables and docs/reason-codes.md.
"""

from __future__ import annotations

# Reason codes -> one-line meaning, in the order they are checked: a row gets the first that applies.
# (Rendered into docs/reason-codes.md by core.reason_docs.)
REASONS: dict[str, str] = {
    "missing_id": "conversation_id is null or empty",
    "empty_conversation": "messages is null or an empty list",
    "too_many_turns": "more messages than max_turns (the cost of tokenizing grows with the turn count)",
    "bad_role": "a role other than system, user or assistant",
    "empty_turn": "a message whose content is empty after normalization",
    "bad_alternation": "not an optional leading system turn followed by user/assistant turns alternating from user",
    "no_assistant_turn": "no assistant message at all",
    "ends_with_user": "the last message is a user turn, so there is nothing to learn from it",
    "too_long": "a message over max_message_chars or the whole conversation over max_conversation_chars",
    "duplicate": "the same normalized content (content hash) as an earlier row of this batch (the day)",
    "duplicate_of_earlier_day": "the text is already kept by another day: the first day to commit a text keeps "
    "it (the name predates days being curated in any order)",
    "duplicate_id": "different content under a conversation_id already used in this batch",
}
# Only produced by parse_external_jsonl (external JSONL conversations), checked in this order.
PARSE_REASONS: dict[str, str] = {
    "encoding_error": "a line's bytes do not decode with CONVERSATION_ENCODING",
    "invalid_unicode": "a string holds a lone surrogate (half of a UTF-16 pair, e.g. a \\ud800 JSON escape)",
    "invalid_json": "the line is not valid JSON",
    "bad_schema": "the JSON is not a conversation: no messages list of role/content strings",
}
# Only produced by core.preferences.curate_pairs, checked after the conversation rules on prompt + each side.
PAIR_REASONS: dict[str, str] = {
    "bad_completion": "chosen or rejected is not exactly one assistant message",
    "same_completion": "chosen and rejected are the same text after normalization, so there is nothing to prefer",
}
