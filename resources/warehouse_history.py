"""DuckLake history: reading a checkpoint's training data as it was, and expiring snapshots nobody needs.

DuckLake keeps every old Parquet file that some snapshot can still read. The maintenance job expires snapshots
older than a retention, except those a live lineage record (a tokenized_shards manifest, a trained_checkpoint
lineage.json) names, then deletes the files no remaining snapshot reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from core.shards import MANIFEST
from core.warehouse_lineage import lineage_snapshots, shard_snapshots, snapshots_to_expire
from resources import ducklake
from resources.artifacts import ArtifactStore
from resources.warehouse import Warehouse


def conversations_as_trained(warehouse: Warehouse, lineage: dict[str, Any]) -> pl.DataFrame:
    """The curated conversations of a checkpoint's shard days, each day as of the snapshot its shards read.

    Days without a recorded snapshot (shards read from the DuckDB file) are read as they are now.
    """
    days = sorted({Path(p).parent.name for p in lineage["shards"]})
    snapshots = lineage_snapshots(lineage)
    frames = [
        warehouse.read_table("curated.conversations", "CAST(day AS VARCHAR) = ?", [day], snapshot=snapshots.get(day))
        for day in days
    ]
    return pl.concat(frames) if frames else warehouse.read_table("curated.conversations", "FALSE")


def live_lineage_snapshots(artifacts: ArtifactStore) -> dict[int, list[str]]:
    """snapshot -> the artifact versions whose lineage names it (every published shard and checkpoint version)."""
    pinned: dict[int, list[str]] = {}
    for day in artifacts.partitions("tokenized_shards"):
        for version in artifacts.version_ids("tokenized_shards", day):
            manifest = json.loads(artifacts.read_text("tokenized_shards", version, MANIFEST, day) or "{}")
            for n in shard_snapshots({day: manifest}).values():
                pinned.setdefault(n, []).append(str(artifacts.version_path("tokenized_shards", version, day)))
    for version in artifacts.version_ids("trained_checkpoint"):
        lineage = json.loads(artifacts.read_text("trained_checkpoint", version, "lineage.json") or "{}")
        for n in lineage_snapshots(lineage).values():
            pinned.setdefault(n, []).append(str(artifacts.version_path("trained_checkpoint", version)))
    return pinned


@dataclass
class Expiry:
    """What a maintenance pass did (or, with dry_run, would do)."""

    snapshots_before: int
    expired: list[int]
    kept_for_lineage: list[int]
    files_deleted: int
    dry_run: bool
    pinned_by: dict[int, list[str]] = field(default_factory=dict)


def expire_snapshots(
    warehouse: Warehouse, artifacts: ArtifactStore, retention: timedelta, *, dry_run: bool = False
) -> Expiry:
    """Expire DuckLake snapshots older than `retention` that no live lineage names; delete unreferenced files."""
    if warehouse.backend != "ducklake":
        raise ValueError(
            f"snapshot expiry needs the ducklake backend; {warehouse.describe()} keeps no snapshots (nothing to do)"
        )
    pinned = live_lineage_snapshots(artifacts)
    warehouse.ensure_tables()
    with warehouse.connect() as con:
        snapshots = con.execute(f"SELECT snapshot_id, snapshot_time FROM {ducklake.LAKE}.snapshots()").fetchall()
    cutoff = datetime.now(UTC) - retention
    expired = snapshots_to_expire(snapshots, set(pinned), cutoff)
    old_pinned = sorted(n for n, at in snapshots if at < cutoff and n in pinned)
    files = 0
    if not dry_run:
        with warehouse.connect() as con:
            if expired:
                con.execute(f"CALL ducklake_expire_snapshots('{ducklake.LAKE}', versions => ?)", [expired])
            files = len(
                con.execute(f"CALL ducklake_cleanup_old_files('{ducklake.LAKE}', cleanup_all => true)").fetchall()
            )
    return Expiry(len(snapshots), expired, old_pinned, files, dry_run, {n: pinned[n] for n in old_pinned})
