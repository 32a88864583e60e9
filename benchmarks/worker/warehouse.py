"""The warehouse benchmark's worker: the data half of some days, with the warehouse in the loop.

Per day, what curated_conversations and tokenized_shards do against the warehouse: curate and commit the day
with the asset's own function (resources/curation_commit.py), read the day back, tokenize and write its shards.
Several of these workers run at once against one DuckLake in the concurrent sides.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.worker.scale import write_day_shards


def warehouse_days(warehouse_json: str, day_files: list[Path], out: Path, model: Path) -> dict[str, Any]:
    import polars as pl
    from transformers import AutoTokenizer

    from core.curation import CurationConfig
    from core.tokenize_partition import tokenize_conversations
    from resources.curation_commit import curate_and_commit
    from resources.warehouse import Warehouse

    warehouse = Warehouse.model_validate_json(warehouse_json)
    warehouse.ensure_tables()
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    timing = {"curate": 0.0, "commit": 0.0, "read_day": 0.0, "tokenize": 0.0, "write": 0.0}
    totals = {"conversations": 0, "tokens": 0, "days": 0, "commit_retries": 0, "recurations": 0}
    started = time.perf_counter()
    for day_file in day_files:
        candidates = pl.read_parquet(day_file)
        day = candidates["day"][0]
        done = curate_and_commit(warehouse, day, candidates, CurationConfig(), [])
        t3 = time.perf_counter()
        stored = warehouse.read_table("curated.conversations", "day = ?", [day])
        t4 = time.perf_counter()
        tokenized = tokenize_conversations(tokenizer, stored, day, max_length=2048)
        t5 = time.perf_counter()
        manifest = write_day_shards(out, day, tokenized)
        t6 = time.perf_counter()
        for key, seconds in zip(
            timing, (done.curate_seconds, done.commit_seconds, t4 - t3, t5 - t4, t6 - t5), strict=True
        ):
            timing[key] += seconds
        totals["conversations"] += stored.height
        totals["tokens"] += manifest["totals"]["tokens"]
        totals["days"] += 1
        totals["commit_retries"] += done.commit.retries
        totals["recurations"] += done.rounds - 1
    wall = time.perf_counter() - started
    return {**totals, **{f"{k}_seconds": v for k, v in timing.items()}, "wall_seconds": wall}
