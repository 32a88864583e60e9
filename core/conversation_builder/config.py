"""How conversations are generated: the system prompt, the candidate schema and the builder's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from core.schemas import MESSAGES_DTYPE
from core.signals import SignalThresholds

DEFAULT_SYSTEM_PROMPT = (
    "You are the catalog assistant of a streaming service. Recommend, find and describe titles "
    "from the catalog only. Name every title exactly as the catalog lists it, followed by its "
    "release year in parentheses, and do not invent titles or facts."
)

CANDIDATE_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.String,
    "day": pl.Date,
    "kind": pl.String,
    "member_id": pl.String,
    "messages": MESSAGES_DTYPE,
}


@dataclass(frozen=True)
class BuilderConfig:
    """How conversations are generated.

    ``seed`` changes which templates and which target a row gets (all derived from a
    hash of seed + row key), not the grounding rules.
    """

    seed: int = 7
    max_exchanges: int = 4
    history_size: int = 5
    search_results: int = 5
    max_synopsis_chars: int = 600
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    # Low ratings and abandons are not watches (core/signals.py).
    signals: SignalThresholds = field(default_factory=SignalThresholds)

    def __post_init__(self) -> None:
        if not 1 <= self.max_exchanges <= 4:
            raise ValueError(f"max_exchanges={self.max_exchanges} must be between 1 and 4")
        if self.history_size < 1 or self.search_results < 1:
            raise ValueError(f"history_size={self.history_size} and search_results={self.search_results} must be >= 1")
        if self.max_synopsis_chars < 20:
            raise ValueError(f"max_synopsis_chars={self.max_synopsis_chars} must be >= 20")
