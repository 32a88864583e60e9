"""The warehouse benchmark's worker: the data half of some days, with the warehouse in the loop.

Per day, what curated_conversations and tokenized_shards do against the warehouse: read the hashes other days
hold, curate, commit the day (the curated serialize key, as the asset does), read the day back, tokenize and
write its shards. Several of these workers run at once against one DuckLake in the concurrent sides.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.worker.scale import write_day_shards


def warehouse_days(warehouse_json: str, day_files: list[Path], out: Path, model: Path) -> dict[str, Any]:
    import polars as pl
    from transformers import AutoTokenizer

    from core import schemas
    from core.curation import CurationConfig, curate
    from core.tokenize_partition import tokenize_conversations
    from resources.warehouse import SEEN_ELSEWHERE_SQL, Warehouse, fetch, replace_in

    warehouse = Warehouse.model_validate_json(warehouse_json)
    warehouse.ensure_tables()
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    timing = {"read_seen": 0.0, "curate": 0.0, "commit": 0.0, "read_day": 0.0, "tokenize": 0.0, "write": 0.0}
    totals = {"conversations": 0, "tokens": 0, "days": 0, "commit_retries": 0}
    started = time.perf_counter()
    for day_file in day_files:
        candidates = pl.read_parquet(day_file)
        day = candidates["day"][0]
        t0 = time.perf_counter()
        seen = warehouse.query(SEEN_ELSEWHERE_SQL, [day])["content_hash"]
        t1 = time.perf_counter()
        curated, rejected, _ = curate(candidates, day, CurationConfig(), seen_hashes=seen)
        t2 = time.perf_counter()

        def commit(con, curated=curated, rejected=rejected, day=day, seen=seen, candidates=candidates):
            kept, rejects = curated, rejected
            seen_now = fetch(con, SEEN_ELSEWHERE_SQL, [day])["content_hash"]
            raced = curated["content_hash"].is_in(seen_now.implode()).any()
            released = (~seen.is_in(seen_now.implode())).any()
            if raced or released:  # as the asset: curate again against what is committed now
                kept, rejects, _ = curate(candidates, day, CurationConfig(), seen_hashes=seen_now)
            replace_in(con, "curated.conversations", kept, "day = ?", [day])
            quarantine = schemas.conform(rejects, schemas.CONVERSATION_QUARANTINE_SCHEMA)
            replace_in(con, "curated.quarantine", quarantine, "day = ?", [day])

        done = warehouse.run_transaction(commit, serialize="curated.conversations", message=f"benchmark {day}")
        t3 = time.perf_counter()
        stored = warehouse.read_table("curated.conversations", "day = ?", [day])
        t4 = time.perf_counter()
        tokenized = tokenize_conversations(tokenizer, stored, day, max_length=2048)
        t5 = time.perf_counter()
        manifest = write_day_shards(out, day, tokenized)
        t6 = time.perf_counter()
        for key, seconds in zip(timing, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
            timing[key] += seconds
        totals["conversations"] += stored.height
        totals["tokens"] += manifest["totals"]["tokens"]
        totals["days"] += 1
        totals["commit_retries"] += done.retries
    wall = time.perf_counter() - started
    return {**totals, **{f"{k}_seconds": v for k, v in timing.items()}, "wall_seconds": wall}
