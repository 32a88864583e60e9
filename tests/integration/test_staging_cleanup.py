"""trained_checkpoint removes the staging directories of finished, idle run lineages, and nothing a run may resume."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import PARENT_RUN_ID_TAG, ROOT_RUN_ID_TAG
from dagster._core.test_utils import create_run_for_test
from test_training_run_config import RecordingLauncher, _base_model, _shards

from assets.training import trained_checkpoint
from core.atomic_io import STAGING_PREFIX
from resources.artifacts import ArtifactStore

HOURS = 3600


def _staging(root: Path, key: str, idle_hours: float) -> Path:
    """A run's staging dir with a checkpoint, untouched for `idle_hours`."""
    path = root / "trained_checkpoint" / f"{STAGING_PREFIX}{key}"
    (path / "checkpoints" / "step-00000004").mkdir(parents=True)
    (path / "checkpoints" / "step-00000004" / "model.safetensors").write_bytes(b"w" * 100)
    past = time.time() - idle_hours * HOURS
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (past, past))
    os.utime(path, (past, past))
    return path


def test_only_finished_idle_lineages_lose_their_staging_dir(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    _base_model(tmp_path)
    _shards(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    status = dg.DagsterRunStatus
    failed_long_ago = create_run_for_test(instance, status=status.FAILURE)
    failed_recently = create_run_for_test(instance, status=status.FAILURE)
    still_running = create_run_for_test(instance, status=status.STARTED)
    canceled = create_run_for_test(instance, status=status.CANCELED)
    # A failed run whose re-execution (same root run) is about to start: it will resume from the root's staging dir.
    retried_root = create_run_for_test(instance, status=status.FAILURE)
    lineage = {ROOT_RUN_ID_TAG: retried_root.run_id, PARENT_RUN_ID_TAG: retried_root.run_id}  # as Dagster tags it
    create_run_for_test(
        instance,
        status=status.NOT_STARTED,
        root_run_id=retried_root.run_id,
        parent_run_id=retried_root.run_id,
        tags=lineage,
    )
    dirs = {
        "failed_long_ago": _staging(root, failed_long_ago.run_id, idle_hours=100),
        "canceled": _staging(root, canceled.run_id, idle_hours=100),
        "failed_recently": _staging(root, failed_recently.run_id, idle_hours=1),
        "still_running": _staging(root, still_running.run_id, idle_hours=100),
        "retry_queued": _staging(root, retried_root.run_id, idle_hours=100),
        "unknown_run": _staging(root, "run-of-another-instance", idle_hours=1000),
    }
    result = dg.materialize(
        [trained_checkpoint],
        resources={
            "artifacts": ArtifactStore(root=str(root), staging_retention_hours=72),
            "trainer": RecordingLauncher(journal=str(tmp_path / "journal.jsonl")),
        },
        instance=instance,
    )
    assert result.success
    remaining = {name for name, path in dirs.items() if path.is_dir()}
    assert remaining == {"failed_recently", "still_running", "retry_queued", "unknown_run"}
    (event,) = result.get_asset_materialization_events()
    cleaned = event.materialization.metadata["cleaned_up"].value
    assert sorted((Path(c["path"]).name, c["reason"], c["removed"]) for c in cleaned) == sorted(
        (dirs[name].name, "run_finished", True) for name in ("failed_long_ago", "canceled")
    )
    # This run's own staging dir was published as the new version, not swept.
    assert len(ArtifactStore(root=str(root)).versions("trained_checkpoint")) == 1
