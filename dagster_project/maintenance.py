"""Warehouse maintenance: expire old DuckLake snapshots and delete the Parquet files nobody reads any more.

DuckLake keeps every file an old snapshot can read, so a busy lake grows with every re-curated day. The job
keeps snapshots younger than the retention and every snapshot a live lineage record names (see
resources/warehouse_history.py), expires the rest, then deletes the files no remaining snapshot reads.
"""

from datetime import timedelta

import dagster as dg

from core.settings import warehouse_snapshot_retention_hours
from resources.artifacts import ArtifactStore
from resources.warehouse import Warehouse
from resources.warehouse_history import expire_snapshots


class ExpiryConfig(dg.Config):
    # Keep snapshots younger than this many hours; unset: DUCKLAKE_SNAPSHOT_RETENTION_HOURS (default 168).
    retention_hours: float | None = None
    dry_run: bool = False


@dg.op(description="Expire DuckLake snapshots older than the retention that no lineage needs; delete unread files.")
def expire_warehouse_snapshots(
    context: dg.OpExecutionContext, config: ExpiryConfig, warehouse: Warehouse, artifacts: ArtifactStore
) -> None:
    if warehouse.backend != "ducklake":
        context.log.info(f"the warehouse is {warehouse.describe()}, which keeps no snapshots: nothing to expire")
        return
    hours = config.retention_hours if config.retention_hours is not None else warehouse_snapshot_retention_hours()
    if hours < 0:
        raise dg.Failure(f"retention_hours={hours} must be >= 0", allow_retries=False)
    done = expire_snapshots(warehouse, artifacts, timedelta(hours=hours), dry_run=config.dry_run)
    context.log.info(
        f"{'would expire' if done.dry_run else 'expired'} {len(done.expired)} of {done.snapshots_before} snapshots, "
        f"kept {len(done.kept_for_lineage)} old ones that lineage names, deleted {done.files_deleted} files"
    )
    context.add_output_metadata(
        {
            "snapshots_before": done.snapshots_before,
            "expired": len(done.expired),
            "expired_ids": dg.MetadataValue.json(done.expired),
            "kept_for_lineage": dg.MetadataValue.json({str(k): v for k, v in done.pinned_by.items()}),
            "files_deleted": done.files_deleted,
            "dry_run": done.dry_run,
        }
    )


@dg.job(description="DuckLake upkeep: expire old snapshots (never one a checkpoint's lineage needs), delete files.")
def warehouse_maintenance_job() -> None:
    expire_warehouse_snapshots()
