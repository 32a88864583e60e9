"""Benchmark 3's worker: the data half (curation + tokenization) over many daily partitions."""

from __future__ import annotations

import math
import time
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.harness import current_rss_mib


def write_day_shards(out: Path, day: date, tokenized: Any) -> dict[str, Any]:
    """One day's shard directory under `out` (what tokenized_shards writes); returns its manifest."""
    from core.shards import write_shard_directory

    day_dir = out / f"day={day.isoformat()}"
    day_dir.mkdir(parents=True, exist_ok=True)
    return write_shard_directory(
        day_dir,
        tokenized.rows,
        partition=day.isoformat(),
        tokenizer_fingerprint="benchmark",
        source_data_version="benchmark",
        quarantine=tokenized.quarantine,
    )


def scale(n: int, per_day: int, out: Path, seed: int, model: Path) -> dict[str, Any]:
    """Curation + tokenization of `n` generated conversations, one daily partition at a time.

    Each day is what the curated_conversations and tokenized_shards assets do for one
    partition: curate (dedupe against the hashes of earlier days), tokenize + mask, write
    the shard directory. Nothing of a finished day is kept but its content hashes.
    """
    import polars as pl
    from transformers import AutoTokenizer

    from benchmarks.workload import _CONVERSATIONS_PER_MEMBER_DAY, iter_candidate_days
    from core.curation import CurationConfig, curate
    from core.tokenize_partition import tokenize_conversations

    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    members = int(per_day / _CONVERSATIONS_PER_MEMBER_DAY)
    seen = pl.Series("content_hash", [], dtype=pl.String)
    totals = {"conversations": 0, "tokens": 0, "rejected": 0, "days": 0}
    timing = {"generate": 0.0, "curate": 0.0, "tokenize": 0.0, "write": 0.0}
    rss_by_day = []
    days = iter_candidate_days(members, seed)
    started = time.perf_counter()
    while totals["conversations"] < n:
        t0 = time.perf_counter()
        item = next(days)
        candidates = item.candidates.head(math.ceil((n - totals["conversations"]) * 1.02))
        t1 = time.perf_counter()
        curated, quarantine, _ = curate(candidates, item.day, CurationConfig(), seen_hashes=seen)
        curated = curated.head(n - totals["conversations"])
        seen = pl.concat([seen, curated["content_hash"]])
        t2 = time.perf_counter()
        tokenized = tokenize_conversations(tokenizer, curated, item.day, max_length=2048)
        t3 = time.perf_counter()
        manifest = write_day_shards(out, item.day, tokenized)
        t4 = time.perf_counter()
        timing["generate"] += t1 - t0
        timing["curate"] += t2 - t1
        timing["tokenize"] += t3 - t2
        timing["write"] += t4 - t3
        totals["conversations"] += curated.height
        totals["tokens"] += manifest["totals"]["tokens"]
        totals["rejected"] += quarantine.height + tokenized.quarantine.height
        totals["days"] += 1
        rss_by_day.append(round(current_rss_mib(), 1))
        del curated, tokenized, candidates, item
    wall = time.perf_counter() - started
    data_half = timing["curate"] + timing["tokenize"] + timing["write"]
    return {
        **totals,
        **{f"{k}_seconds": v for k, v in timing.items()},
        "data_half_seconds": data_half,
        "wall_seconds": wall,
        "conversations_per_second": totals["conversations"] / data_half,
        "rss_after_each_day_mib": rss_by_day,
    }
