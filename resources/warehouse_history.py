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

from core.shards import read_manifest
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
    shards_root = Path(artifacts.asset_dir("tokenized_shards"))
    for day_dir in sorted(p for p in shards_root.glob("*") if p.is_dir()):
        for version in artifacts.versions("tokenized_shards", day_dir.name):
            for n in shard_snapshots({day_dir.name: read_manifest(version)}).values():
                pinned.setdefault(n, []).append(str(version))
    for version in artifacts.versions("trained_checkpoint"):
        lineage_file = version / "lineage.json"
        if lineage_file.is_file():
            for n in lineage_snapshots(json.loads(lineage_file.read_text())).values():
                pinned.setdefault(n, []).append(str(version))
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
