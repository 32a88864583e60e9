"""Retries of a training run resume from its checkpoint (op retries and run re-execution keep the staging dir)."""

import json
import os
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry

from assets.training import trained_checkpoint
from core.atomic_io import new_version_id
from core.shards import FORMAT_VERSION
from dagster_project.instance import INSTANCE_TEMPLATE
from resources.artifacts import ArtifactStore
from resources.launchers import LaunchResult, TrainingLauncher, wall_clock_failure

pytestmark = pytest.mark.slow  # the op retry waits for its RetryPolicy delay


class FlakyLauncher(TrainingLauncher):
    """Saves a checkpoint, then loses the node on its first `fail_attempts` launches; resumes when one exists."""

    journal: str
    fail_attempts: int = 1
    step_may_retry: bool = True

    @property
    def world_size(self) -> int:
        return 1

    def launch(self, context: dg.AssetExecutionContext, train_config: dict[str, Any], output_dir: Path) -> LaunchResult:
        checkpoint = output_dir / "checkpoints" / "step-00000004"
        entry = {"run_id": context.run.run_id, "output_dir": str(output_dir), "resumed": checkpoint.is_dir()}
        with open(self.journal, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        attempts = len(Path(self.journal).read_text().splitlines())
        if attempts <= self.fail_attempts:
            checkpoint.mkdir(parents=True, exist_ok=True)
            raise dg.Failure("rank 1 lost its node after the step-4 checkpoint", allow_retries=self.step_may_retry)
        summary = {"steps": 8, "resumed_from_step": 4 if entry["resumed"] else 0, "loss_curve": []}
        (output_dir / "summary.json").write_text(json.dumps(summary))
        return LaunchResult(output_dir=output_dir, summary=summary)


def _artifacts(home: Path) -> ArtifactStore:
    """The smallest artifact store trained_checkpoint accepts: a base model dir and one shard version."""
    base = home / "artifacts" / "base_model" / new_version_id()
    base.mkdir(parents=True)
    (base / "tokenizer.json").write_text("{}")
    shards = home / "artifacts" / "tokenized_shards" / "2026-01-01" / new_version_id()
    shards.mkdir(parents=True)
    manifest = {"format_version": FORMAT_VERSION, "splits": {"train": {"conversations": 3, "loss_tokens": 30}}}
    (shards / "manifest.json").write_text(json.dumps(manifest))
    return ArtifactStore(root=str(home / "artifacts"))


def _journal(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _lineage(home: Path) -> dict[str, Any]:
    (version,) = ArtifactStore(root=str(home / "artifacts")).versions("trained_checkpoint")
    return json.loads((version / "lineage.json").read_text())


def test_a_step_retry_resumes_in_the_same_staging_dir(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    resources = {"artifacts": _artifacts(tmp_path), "trainer": FlakyLauncher(journal=str(journal))}
    result = dg.materialize([trained_checkpoint], resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    first, second = _journal(journal)
    assert first["run_id"] == second["run_id"] == result.run_id
    assert second["output_dir"] == first["output_dir"] and second["resumed"] is True
    assert any(e.event_type_value == "STEP_RESTARTED" for e in result.all_events)
    published = ArtifactStore(root=str(tmp_path / "artifacts")).latest("trained_checkpoint")
    assert json.loads((published / "summary.json").read_text())["resumed_from_step"] == 4
    assert _lineage(tmp_path)["root_run_id"] == result.run_id


def retry_job() -> dg.JobDefinition:
    """A reconstructable job: trained_checkpoint whose first launch fails without a step retry."""
    home = Path(os.environ["RETRY_TEST_HOME"])
    launcher = FlakyLauncher(journal=str(home / "journal.jsonl"), step_may_retry=False)
    job = dg.define_asset_job("train", selection=["trained_checkpoint"])
    defs = dg.Definitions(
        assets=[trained_checkpoint],
        jobs=[job],
        resources={"artifacts": ArtifactStore(root=str(home / "artifacts")), "trainer": launcher},
    )
    return defs.resolve_job_def("train")


def test_a_run_retry_keeps_the_root_run_id_and_resumes(tmp_path: Path, monkeypatch) -> None:
    """What the run-retry daemon does (re-execute from the failed step) gives the trainer its checkpoints back."""
    monkeypatch.setenv("RETRY_TEST_HOME", str(tmp_path))
    _artifacts(tmp_path)
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copyfile(INSTANCE_TEMPLATE, dagster_home / "dagster.yaml")
    in_process = {"execution": {"config": {"in_process": {}}}}
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        assert instance.run_retries_enabled and instance.run_retries_max_retries >= 1
        job = dg.reconstructable(retry_job)
        with dg.execute_job(job, instance=instance, run_config=in_process) as failed:
            assert not failed.success
        options = dg.ReexecutionOptions.from_failure(failed.run_id, instance)
        with dg.execute_job(job, instance=instance, run_config=in_process, reexecution_options=options) as retried:
            assert retried.success
            assert retried.dagster_run.root_run_id == failed.run_id != retried.run_id
    finally:
        instance.dispose()
    first, second = _journal(tmp_path / "journal.jsonl")
    assert (first["run_id"], second["run_id"]) == (failed.run_id, retried.run_id)
    assert second["output_dir"] == first["output_dir"] and second["resumed"] is True
    assert _lineage(tmp_path)["root_run_id"] == failed.run_id


class OutOfTimeLauncher(TrainingLauncher):
    """Fails the way LocalTorchrunLauncher does at its wall-clock limit (after leaving a checkpoint)."""

    journal: str

    @property
    def world_size(self) -> int:
        return 1

    def launch(self, context: dg.AssetExecutionContext, train_config: dict[str, Any], output_dir: Path) -> LaunchResult:
        with open(self.journal, "a") as fh:
            fh.write(json.dumps({"run_id": context.run.run_id}) + "\n")
        (output_dir / "checkpoints" / "step-00000004").mkdir(parents=True, exist_ok=True)
        raise wall_clock_failure(5.0, output_dir, [-15], output_dir / "torchrun_logs")


def test_a_launch_stopped_at_its_wall_clock_limit_is_retried_neither_by_step_nor_by_run(tmp_path: Path) -> None:
    """Another try would spend the same budget again: the step's RetryPolicy and run_retries both pass."""
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copyfile(INSTANCE_TEMPLATE, dagster_home / "dagster.yaml")
    journal = tmp_path / "journal.jsonl"
    resources = {"artifacts": _artifacts(tmp_path), "trainer": OutOfTimeLauncher(journal=str(journal))}
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        result = dg.materialize([trained_checkpoint], resources=resources, instance=instance, raise_on_error=False)
        assert not result.success
        assert len(_journal(journal)) == 1  # trained_checkpoint's RetryPolicy (2 retries) did not run it again
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and not should_retry(run, instance)  # what the run-retry daemon decides


def test_a_run_failed_for_a_dead_worker_is_retried_by_run_retries(tmp_path: Path) -> None:
    """What run monitoring reports for a dead worker (no step failure) is what run_retries re-executes."""
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copyfile(INSTANCE_TEMPLATE, dagster_home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        run = instance.create_run_for_job(dg.GraphDefinition(name="g").to_job(), run_config={})
        instance.handle_run_event(run.run_id, dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, run.job_name))
        instance.report_run_failed(run, "the run worker (pid 123) that started this run is gone")
        failed = instance.get_run_by_id(run.run_id)
        assert failed is not None and failed.status == dg.DagsterRunStatus.FAILURE
        assert should_retry(failed, instance)
