"""Rows of the warehouse's contracts for the warehouse tests (both backends)."""

from __future__ import annotations

import datetime as dt

import polars as pl

from core import schemas


def events(day: dt.date, members: list[str] | int) -> pl.DataFrame:
    """raw.interactions rows: one play of title t1 per member (`members` names them, or counts m0, m1, ...)."""
    names = [f"m{i}" for i in range(members)] if isinstance(members, int) else members
    n = len(names)
    return pl.DataFrame(
        {
            "member_id": names,
            "title_id": ["t1"] * n,
            "ts": [dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)] * n,
            "event": ["play"] * n,
            "value": [None] * n,
            "day": [day] * n,
        },
        schema=schemas.INTERACTIONS_SCHEMA,
    )


def conversation_rows(day: dt.date, ids: list[str]) -> pl.DataFrame:
    """curated.conversations rows: external one-exchange conversations whose content hash is h-<id>."""
    return pl.DataFrame(
        {
            "conversation_id": ids,
            "day": [day] * len(ids),
            "kind": ["external"] * len(ids),
            "member_id": [None] * len(ids),
            "messages": [[{"role": "user", "content": i}, {"role": "assistant", "content": "ok"}] for i in ids],
            "content_hash": [f"h-{i}" for i in ids],
            "split": ["train"] * len(ids),
        }
    )
