"""Inputs left out of a metric, each with a reason code and a detail.

The codes and their meanings live in ``core.eval_report.EVAL_SKIP_REASONS``, next to the report that
counts them, so the generated reason-codes page (core/reason_docs.py, core only) can list them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from core.eval_report import EVAL_SKIP_REASONS

__all__ = ["EVAL_SKIP_REASONS", "Skipped", "count_reasons"]


@dataclass(frozen=True)
class Skipped:
    """One input left out of a metric, with a reason code from EVAL_SKIP_REASONS."""

    key: str  # conversation_id (or row index when there is none)
    reason: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"conversation_id": self.key, "reason": self.reason, "detail": self.detail}


def count_reasons(skipped: Iterable[Skipped]) -> dict[str, int]:
    return dict(sorted(Counter(s.reason for s in skipped).items()))
