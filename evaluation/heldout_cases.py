"""Held-out recommendation cases built from members' events: each held-out member's latest watch is the target.

Why from events and not from the curated conversations: a conversation exists only where a member watched two
titles on one day, so a sparse source (a public ratings dump, a quiet week) can leave the validation and test
splits with no recommendation conversation at all. Every held-out member with two positive watches gives a case:

- members are in the split curation gives them (the salted hash of member_id), so no case's member ever
  trained the model;
- their positive watches (core/signals.py: low ratings and abandons are not watches) of catalog titles, over all
  the evaluated days, ordered by first watch; the latest is the target, the ones before it the history;
- the prompt is what a member would send: the builder's first request naming the last ``history_size`` titles
  of the history as ``Title (Year)``, after the system prompt.

One case per member, so a very active member weighs as much as any other and the cases are independent, which
the bootstrap intervals assume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from core.conversation_builder import DEFAULT_SYSTEM_PROMPT, REQUESTS
from core.curation import CurationConfig, assign_splits
from core.signals import SignalThresholds, member_title_signals
from evaluation.heldout import HELDOUT_SPLITS
from evaluation.recommendation import RecoCase
from evaluation.skips import Skipped
from evaluation.titles import TitleMatcher

CASE_PREFIX = "member:"  # case ids are "member:<member_id>": one case per member


@dataclass(frozen=True)
class CaseOptions:
    """How held-out cases are built: history shown in the prompt, the system prompt, the signal thresholds."""

    history_size: int = 5
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    signals: SignalThresholds = field(default_factory=SignalThresholds)
    split_config: CurationConfig = field(default_factory=CurationConfig)

    def __post_init__(self) -> None:
        if self.history_size < 1:
            raise ValueError(f"history_size={self.history_size} must be >= 1: a case's prompt names its history")


def member_splits(member_ids: pl.Series, cfg: CurationConfig) -> pl.DataFrame:
    """(member_id, split) for the distinct non-null ids, as curation assigns them."""
    ids = member_ids.drop_nulls().unique().sort().cast(pl.String)
    return pl.DataFrame({"member_id": ids, "split": assign_splits(ids, cfg)})


def heldout_members_events(events: pl.DataFrame, cfg: CurationConfig, splits: Sequence[str]) -> pl.DataFrame:
    """The events of members in ``splits``, with their split as a column."""
    assigned = member_splits(events["member_id"], cfg).filter(pl.col("split").is_in(list(splits)))
    return events.join(assigned, on="member_id", how="inner", maintain_order="left")


def request_prompt(history: Sequence[str], system_prompt: str) -> tuple[dict[str, str], ...]:
    """The served prompt for a history of display names: the builder's first request, after the system prompt."""
    user = {"role": "user", "content": REQUESTS[0].format(h=", ".join(history))}
    return (({"role": "system", "content": system_prompt},) if system_prompt else ()) + (user,)


def heldout_cases(
    events: pl.DataFrame,
    matcher: TitleMatcher,
    options: CaseOptions | None = None,
    *,
    splits: Sequence[str] = HELDOUT_SPLITS,
) -> tuple[list[RecoCase], list[Skipped]]:
    """One case per held-out member with at least two positive watches of catalog titles.

    ``events`` are raw.interactions rows (member_id, title_id, ts, event, value) of the evaluated days. Members
    with too little history come back as Skipped (reason ``too_little_history``), so the report can count them.
    Cases are sorted by member id.
    """
    options = options or CaseOptions()
    held = heldout_members_events(events, options.split_config, splits)
    signals = member_title_signals(held, options.signals)
    known = pl.Series(list(matcher.title_ids), dtype=pl.String)
    watches = signals.filter((pl.col("signal") == "watch") & pl.col("title_id").is_in(known.implode()))
    watches = watches.sort("member_id", "first_ts", "title_id")
    per_member = watches.group_by("member_id", maintain_order=True).agg(pl.col("title_id").alias("titles"))
    split_of = dict(held.select("member_id", "split").unique().iter_rows())
    cases: list[RecoCase] = []
    skipped: list[Skipped] = []
    with_watches = set(per_member["member_id"].to_list())
    for member in sorted(set(held["member_id"].drop_nulls().to_list()) - with_watches):
        skipped.append(Skipped(CASE_PREFIX + member, "too_little_history", "no positive watch of a catalog title"))
    for member, titles in per_member.iter_rows():
        if len(titles) < 2:
            detail = f"one positive watch ({titles[0]}); a case needs a history and a target"
            skipped.append(Skipped(CASE_PREFIX + member, "too_little_history", detail))
            continue
        history, target = tuple(titles[:-1]), titles[-1]
        shown = [matcher.display(t) for t in history[-options.history_size :]]
        cases.append(
            RecoCase(
                conversation_id=CASE_PREFIX + member,
                split=split_of[member],
                prompt_messages=request_prompt(shown, options.system_prompt),
                target_title_id=target,
                target=matcher.display(target),
                history_title_ids=history,
            )
        )
    return cases, skipped
