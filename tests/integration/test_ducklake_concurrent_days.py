"""Many day runs at once on DuckLake give the tables one run after another gives.

4 processes materialize 8 days (raw_interactions, then curated_conversations) at the same time against one
DuckLake; the reference is a serial run of the same days on the DuckDB file. A partner file dropped on every day
makes every day contest the same texts, so cross-day dedup is exercised under real concurrency.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from support.lake import new_lake_warehouse

from core.local_postgres import LocalPostgres
from resources.landing import LandingArea
from resources.warehouse import TABLES, Warehouse

DAYS = [(date(2026, 1, 1) + timedelta(days=i)).isoformat() for i in range(8)]
WORKERS = 4
PARTNER = [
    {
        "messages": [
            {"role": "user", "content": f"Partner question {i}: what is good tonight?"},
            {"role": "assistant", "content": f"Partner answer {i}: something from the catalog."},
        ]
    }
    for i in range(5)
]
DUPLICATE = "duplicate_of_earlier_day"
DUPLICATE_REASONS = [DUPLICATE, "duplicate"]


def _landing(root: Path) -> LandingArea:
    return LandingArea(root=str(root), synthetic_titles=60, synthetic_members=120, synthetic_days=len(DAYS))


def _assets() -> list:
    from assets.catalog import raw_catalog, raw_interactions
    from assets.conversations import curated_conversations

    return [raw_catalog, raw_interactions, curated_conversations]


def _materialize_days(warehouse: Warehouse, landing_root: Path, days: list[str]) -> list[dict]:
    """raw_interactions then curated_conversations for each day; the metadata of every materialization."""
    resources = {"warehouse": warehouse, "landing": _landing(landing_root)}
    metadata = []
    for day in days:
        result = dg.materialize(
            _assets(), selection=["raw_interactions", "curated_conversations"], partition_key=day, resources=resources
        )
        assert result.success, day
        for event in result.get_asset_materialization_events():
            meta = event.materialization.metadata
            metadata.append({k: getattr(v, "value", v) for k, v in meta.items() if k.startswith("warehouse/")})
    return metadata


def _worker(warehouse_json: str, landing_root: str, days: list[str], barrier, out: str) -> None:
    """Child process: wait for every worker, then materialize its days against the shared lake."""
    warehouse = Warehouse.model_validate_json(warehouse_json)
    barrier.wait(timeout=300)
    metadata = _materialize_days(warehouse, Path(landing_root), days)
    Path(out).write_text(json.dumps(metadata))
    sys.exit(0)


def _table(warehouse: Warehouse, table: str) -> pl.DataFrame:
    frame = warehouse.read_table(table)
    sortable = [c for c, t in TABLES[table].items() if not isinstance(t, pl.List | pl.Struct)]
    return frame.sort(sortable, nulls_last=True)


@pytest.mark.slow
def test_four_processes_materializing_eight_days_at_once_equal_a_serial_run(
    postgres_server: LocalPostgres, tmp_path: Path
) -> None:
    landing_root = tmp_path / "landing"
    serial = Warehouse(path=str(tmp_path / "serial.duckdb"))
    assert dg.materialize(
        _assets(), selection=["raw_catalog"], resources={"warehouse": serial, "landing": _landing(landing_root)}
    ).success
    for day in DAYS:
        folder = landing_root / "conversations" / f"day={day}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "partner.jsonl").write_text("".join(json.dumps(c) + "\n" for c in PARTNER))
    _materialize_days(serial, landing_root, DAYS)

    lakes = new_lake_warehouse(postgres_server, tmp_path / "lake")
    lake = next(lakes)
    assert dg.materialize(
        _assets(), selection=["raw_catalog"], resources={"warehouse": lake, "landing": _landing(landing_root)}
    ).success
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    workers = []
    for i in range(WORKERS):
        out = tmp_path / f"worker-{i}.json"
        days = DAYS[i::WORKERS]  # interleaved: neighbouring days run at the same time
        proc = ctx.Process(target=_worker, args=(lake.model_dump_json(), str(landing_root), days, barrier, str(out)))
        proc.start()
        workers.append((proc, out))
    for proc, _ in workers:
        proc.join(timeout=900)
    assert [proc.exitcode for proc, _ in workers] == [0] * WORKERS
    commits = [m for _, out in workers for m in json.loads(out.read_text())]
    assert len(commits) == 2 * len(DAYS) and all("warehouse/snapshot" in m for m in commits)

    # The raw layer is exactly the serial run's.
    for table in ("raw.catalog", "raw.interactions", "raw.quarantine"):
        assert _table(lake, table).equals(_table(serial, table)), table

    # Each text is kept once. A text several days offer is kept by the first day to commit it (by design), so only
    # those contested texts may sit on another day than in the serial run; every other row is identical.
    lake_rows, serial_rows = _table(lake, "curated.conversations"), _table(serial, "curated.conversations")
    for rows in (lake_rows, serial_rows):
        assert rows["content_hash"].is_duplicated().sum() == 0
    assert sorted(lake_rows["content_hash"]) == sorted(serial_rows["content_hash"])
    lake_q, serial_q = _table(lake, "curated.quarantine"), _table(serial, "curated.quarantine")
    contested = set(_duplicate_hashes(serial_q, [DUPLICATE]))
    assert len(contested) >= len(PARTNER) and contested == set(_duplicate_hashes(lake_q, [DUPLICATE]))
    # Whoever keeps a text, the same copies of it are quarantined (as repeated on another day or in one batch).
    assert _duplicate_hashes(lake_q, DUPLICATE_REASONS) == _duplicate_hashes(serial_q, DUPLICATE_REASONS)
    moved = lake_rows.join(serial_rows, on="content_hash", suffix="_serial").filter(
        pl.col("day") != pl.col("day_serial")
    )
    assert set(moved["content_hash"]) <= set(contested)
    assert lake_rows.filter(~pl.col("content_hash").is_in(list(contested))).equals(
        serial_rows.filter(~pl.col("content_hash").is_in(list(contested)))
    )
    others = ~pl.col("reason").is_in(DUPLICATE_REASONS)
    assert lake_q.filter(others).equals(serial_q.filter(others))
    retries = sum(m["warehouse/commit_retries"] for m in commits)
    print(f"{retries} commit retries over {len(commits)} commits; {moved.height} contested texts on another day")
    next(lakes, None)


def _duplicate_hashes(quarantine: pl.DataFrame, reasons: list[str]) -> dict[str, int]:
    """content_hash -> how many copies of it were quarantined with one of `reasons` (the detail names the hash)."""
    hashes = quarantine.filter(pl.col("reason").is_in(reasons))["detail"].str.extract(r"content_hash ([0-9a-f]+)")
    return dict(sorted(hashes.value_counts().iter_rows()))
