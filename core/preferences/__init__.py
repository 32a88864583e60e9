"""Preference pairs: a prompt, a chosen and a rejected completion, curated like conversations.

- ``from_signals``: pairs from member behaviour (a liked title over an abandoned or low-rated one, with the
  member's context);
- ``external_jsonl``: pairs dropped in the landing area in the conversational prompt/chosen/rejected format;
- ``curation``: ``curate_pairs``, the conversation rules on each side plus the pair rules, split by member.
"""

from core.preferences.curation import curate_pairs
from core.preferences.external_jsonl import PAIR_FIELDS, parse_preference_jsonl
from core.preferences.from_signals import (
    PAIR_CANDIDATE_SCHEMA,
    BehaviourPairs,
    PairBuilderConfig,
    behaviour_pairs,
)

__all__ = [
    "PAIR_CANDIDATE_SCHEMA",
    "PAIR_FIELDS",
    "BehaviourPairs",
    "PairBuilderConfig",
    "behaviour_pairs",
    "curate_pairs",
    "parse_preference_jsonl",
]
