"""A checkpoint's training data read back as it was, and snapshot expiry that keeps what lineage needs."""

from __future__ import annotations

import datetime as dt
import json
from datetime import timedelta
from pathlib import Path

import pytest
from support.warehouse_rows import conversation_rows

from resources.artifacts import ArtifactStore
from resources.warehouse import Warehouse
from resources.warehouse_history import conversations_as_trained, expire_snapshots

DAY = dt.date(2026, 1, 3)


def _curate(wh: Warehouse, ids: list[str]) -> int:
    commit = wh.replace_tables([("curated.conversations", conversation_rows(DAY, ids), "day = ?", [DAY])])
    assert commit.snapshot is not None
    return commit.snapshot


def _checkpoint(artifacts: ArtifactStore, snapshot: int | None) -> dict:
    """A published trained_checkpoint version whose lineage.json names `snapshot` for DAY."""
    lineage = {
        "base_model": "unused",
        "shards": [str(artifacts.asset_dir("tokenized_shards", DAY.isoformat()) / "v1")],
        "warehouse_snapshots": {DAY.isoformat(): snapshot} if snapshot is not None else {},
    }
    staging = artifacts.staging_dir("trained_checkpoint", "run-1")
    (staging / "lineage.json").write_text(json.dumps(lineage))
    artifacts.publish("trained_checkpoint", staging)
    return lineage


def test_a_checkpoints_data_reads_back_as_it_was_after_the_day_is_curated_again(
    lake_warehouse: Warehouse, tmp_path: Path
) -> None:
    wh, artifacts = lake_warehouse, ArtifactStore(root=str(tmp_path / "artifacts"))
    trained_on = _curate(wh, ["a", "b"])
    lineage = _checkpoint(artifacts, trained_on)
    _curate(wh, ["c"])

    assert sorted(conversations_as_trained(wh, lineage)["conversation_id"]) == ["a", "b"]
    lineage_without = {**lineage, "warehouse_snapshots": {}}
    assert conversations_as_trained(wh, lineage_without)["conversation_id"].to_list() == ["c"]


def _parquet_files(wh: Warehouse) -> int:
    return len(list(Path(wh.ducklake_data_path).rglob("*.parquet")))


def test_expiry_deletes_old_snapshots_and_files_but_never_one_a_lineage_needs(
    lake_warehouse: Warehouse, tmp_path: Path
) -> None:
    wh, artifacts = lake_warehouse, ArtifactStore(root=str(tmp_path / "artifacts"))
    many = [f"row{i}" for i in range(40)]  # past DuckLake's inlining limit: every version is a Parquet file
    snapshots = [_curate(wh, [f"{r}-v{v}" for r in many]) for v in range(5)]
    _checkpoint(artifacts, snapshots[1])
    files_before = _parquet_files(wh)

    planned = expire_snapshots(wh, artifacts, retention=timedelta(0), dry_run=True)
    assert planned.kept_for_lineage == [snapshots[1]] and snapshots[1] not in planned.expired
    assert _parquet_files(wh) == files_before  # a dry run changes nothing

    done = expire_snapshots(wh, artifacts, retention=timedelta(0))
    assert set(snapshots[:1] + snapshots[2:4]) <= set(done.expired)
    assert snapshots[1] not in done.expired and snapshots[4] not in done.expired
    assert done.files_deleted > 0 and _parquet_files(wh) < files_before
    # The pinned snapshot and the live tables still read; an expired snapshot is gone.
    assert wh.read_table("curated.conversations", snapshot=snapshots[1]).height == 40
    assert wh.read_table("curated.conversations")["conversation_id"][0].endswith("-v4")
    with pytest.raises(Exception, match="No snapshot found"):
        wh.read_table("curated.conversations", snapshot=snapshots[2])


def test_expiry_keeps_everything_younger_than_the_retention(lake_warehouse: Warehouse, tmp_path: Path) -> None:
    _curate(lake_warehouse, ["a"])
    _curate(lake_warehouse, ["b"])
    done = expire_snapshots(lake_warehouse, ArtifactStore(root=str(tmp_path / "a")), retention=timedelta(days=7))
    assert done.expired == [] and done.files_deleted == 0


def test_expiry_on_the_duckdb_file_says_there_is_nothing_to_expire(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keeps no snapshots"):
        expire_snapshots(Warehouse(path=str(tmp_path / "w.duckdb")), ArtifactStore(root=str(tmp_path)), timedelta(0))


def test_the_maintenance_job_expires_what_lineage_does_not_pin(lake_warehouse: Warehouse, tmp_path: Path) -> None:
    from dagster_project.maintenance import warehouse_maintenance_job

    artifacts = ArtifactStore(root=str(tmp_path / "artifacts"))
    snapshots = [_curate(lake_warehouse, [f"r{i}-v{v}" for i in range(20)]) for v in range(3)]
    _checkpoint(artifacts, snapshots[0])
    result = warehouse_maintenance_job.execute_in_process(
        run_config={"ops": {"expire_warehouse_snapshots": {"config": {"retention_hours": 0}}}},
        resources={"warehouse": lake_warehouse, "artifacts": artifacts},
    )
    assert result.success
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    meta = {k: getattr(v, "value", v) for k, v in event.event_specific_data.metadata.items()}
    assert snapshots[1] in meta["expired_ids"] and snapshots[0] not in meta["expired_ids"]
    assert meta["kept_for_lineage"] == {str(snapshots[0]): [str(artifacts.versions("trained_checkpoint")[0])]}
    assert meta["files_deleted"] > 0
