"""Bounds and split settings of curation, validated once when the config is built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.schemas import SPLITS


@dataclass(frozen=True)
class CurationConfig:
    """Bounds and split settings of curation.

    ``split_salt`` is part of the split hash: changing it reshuffles every member, so
    it is versioned ("split-v1") and should only change together with a new dataset
    version.
    """

    max_message_chars: int = 4000
    max_conversation_chars: int = 16000
    # Messages per conversation, system turn included. The character bounds do not bound the turn count
    # (10,000 one-word turns fit in 16,000 characters), and per-turn work downstream (serving-prompt
    # checks, masks) grows with it. 64 is far above what the demo builds (system + 4 exchanges = 9).
    max_turns: int = 64
    min_content_chars: int = 1
    split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
    split_salt: str = "split-v1"

    def __post_init__(self) -> None:
        fr = self.split_fractions
        if len(fr) != len(SPLITS) or any(f < 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-9):
            raise ValueError(
                f"split_fractions={fr!r} must be {len(SPLITS)} non-negative numbers for {SPLITS} that sum to 1.0"
            )
        if self.min_content_chars < 1:
            raise ValueError(f"min_content_chars={self.min_content_chars} must be >= 1 (empty turns are rejects)")
        if self.max_turns < 2:
            raise ValueError(f"max_turns={self.max_turns} must be >= 2 (a user and an assistant message)")
        if self.max_message_chars < self.min_content_chars or self.max_conversation_chars < 1:
            raise ValueError(
                f"max_message_chars={self.max_message_chars} and max_conversation_chars="
                f"{self.max_conversation_chars} must be positive and >= min_content_chars"
            )
