"""One day's curation committed against what other days hold: cross-day dedup under concurrent day runs.

A text (content_hash) is kept by one day only, the first to commit it. A day curates against a snapshot of the
hashes other days hold (no transaction open while the CPU-heavy rules run), then commits only if that snapshot is
still what is committed, checked inside the transaction where no concurrent writer commits unseen (the DuckDB
file's lock; on DuckLake the serialize key). When another day committed one of its texts (that day wins it) or
gave one up (it is this day's to keep) meanwhile, it curates again outside the transaction against the new hashes
and retries, so a transaction stays a short check-and-write and concurrent days do not collide with each other's
long ones. The last attempt curates inside the transaction instead, so even a day that keeps losing finishes.

Used by the curated_conversations asset and by the warehouse benchmark, which measures exactly this.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import duckdb
import polars as pl

from core import schemas
from core.curation import CurationConfig, curate
from resources.warehouse import SEEN_ELSEWHERE_SQL, Commit, Warehouse, fetch, replace_in

CURATION_ATTEMPTS = 5  # curate-then-commit rounds before a day curates inside its transaction


class StaleHashes(Exception):
    """Other days changed the committed hashes since this day curated: curate again against `seen_now`."""

    def __init__(self, seen_now: pl.Series, raced: int, released: int) -> None:
        super().__init__(f"{raced} texts taken and {released} given up by other days")
        self.seen_now, self.raced, self.released = seen_now, raced, released


@dataclass(frozen=True)
class CuratedDay:
    quarantine: pl.DataFrame  # what the day quarantined, parse rejects included
    stats: dict[str, Any]  # curation's counters of the committed pass
    raced: int  # texts other days committed while this day curated (they kept them)
    commit: Commit[Any]
    rounds: int  # curation passes: 1, plus one per stale snapshot
    curate_seconds: float  # reading other days' hashes and curating, every round
    commit_seconds: float  # inside transactions, commit conflicts and stale checks included


def curate_and_commit(
    warehouse: Warehouse,
    day: date,
    candidates: pl.DataFrame,
    cfg: CurationConfig,
    parse_rejects: list[pl.DataFrame],
    *,
    log: Callable[[str], None] = lambda _: None,
    attempts: int | None = None,
) -> CuratedDay:
    """Curate `candidates` for `day` and replace its curated rows and quarantine in one transaction."""
    rounds = attempts if attempts is not None else CURATION_ATTEMPTS
    started = time.perf_counter()
    seen = warehouse.query(SEEN_ELSEWHERE_SQL, [day])["content_hash"]
    raced_before, curating, committing = 0, 0.0, 0.0
    for attempt in range(rounds):
        curated, rejected, stats = curate(candidates, day, cfg, seen_hashes=seen)
        work = _commit_day(day, candidates, cfg, (curated, rejected, stats), seen, parse_rejects, attempt + 1 == rounds)
        curating += time.perf_counter() - started
        started = time.perf_counter()
        try:
            commit = warehouse.run_transaction(work, serialize="curated.conversations", message=f"curated {day}")
        except StaleHashes as stale:
            committing += time.perf_counter() - started
            started = time.perf_counter()
            log(
                f"while {day} was curated, other days committed {stale.raced} of its texts and gave up "
                f"{stale.released} texts it had seen; curating again against the committed hashes"
            )
            seen, raced_before = stale.seen_now, raced_before + stale.raced
            continue
        committing += time.perf_counter() - started
        quarantine, final_stats, raced = commit.value
        return CuratedDay(quarantine, final_stats, raced + raced_before, commit, attempt + 1, curating, committing)
    raise AssertionError("unreachable: the last attempt curates inside its transaction")


def _commit_day(
    day: date,
    candidates: pl.DataFrame,
    cfg: CurationConfig,
    result: tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]],
    seen: pl.Series,
    parse_rejects: list[pl.DataFrame],
    inside: bool,
) -> Callable[[duckdb.DuckDBPyConnection], tuple[pl.DataFrame, dict[str, Any], int]]:
    """The day's transaction: check the hashes it curated against, then write; stale hashes raise StaleHashes
    (nothing written) unless `inside`, which curates again here."""

    def commit_day(con: duckdb.DuckDBPyConnection) -> tuple[pl.DataFrame, dict[str, Any], int]:
        curated, rejected, stats = result
        seen_now = fetch(con, SEEN_ELSEWHERE_SQL, [day])["content_hash"]
        raced = int(curated["content_hash"].is_in(seen_now.implode()).sum())
        released = int((~seen.is_in(seen_now.implode())).sum())
        if raced or released:
            if not inside:
                raise StaleHashes(seen_now, raced, released)
            curated, rejected, stats = curate(candidates, day, cfg, seen_hashes=seen_now)
        quarantine = pl.concat(
            [schemas.conform(q, schemas.CONVERSATION_QUARANTINE_SCHEMA) for q in [*parse_rejects, rejected]]
        )
        replace_in(con, "curated.conversations", curated, "day = ?", [day])
        replace_in(con, "curated.quarantine", quarantine, "day = ?", [day])
        return quarantine, stats, raced

    return commit_day
