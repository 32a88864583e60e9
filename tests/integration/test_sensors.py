"""Sensor and schedule logic through Dagster's testing API (build_sensor_context / build_schedule_context)."""

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from core import synthetic
from core.atomic_io import new_version_id
from dagster_project.schedules import nightly_retrain_schedule
from dagster_project.sensors import (
    landing_sensor,
    retrain_run_config,
    retraining_sensor,
    scan_landing,
    training_delta,
)
from resources.artifacts import ArtifactStore
from resources.landing import LandingArea

SMALL = synthetic.SyntheticConfig(n_titles=60, n_members=80)
DAY1, DAY2 = "2026-01-01", "2026-01-02"


@pytest.fixture
def instance(tmp_path_factory: pytest.TempPathFactory):
    inst = dg.DagsterInstance.from_config(str(tmp_path_factory.mktemp("dagster_home")))
    yield inst
    inst.dispose()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "landing").mkdir()
    (tmp_path / "artifacts").mkdir()
    return tmp_path


def _resources(home: Path) -> dict:
    return {
        "landing": LandingArea(root=str(home / "landing")),
        "artifacts": ArtifactStore(root=str(home / "artifacts")),
    }


def _tick(instance, home: Path, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=_resources(home)) as context:
        return landing_sensor(context)


def _drop(home: Path, day: str) -> None:
    synthetic.ensure_drop(home / "landing", SMALL, datetime.fromisoformat(day).date())


def _base_model(home: Path) -> None:
    (home / "artifacts" / "base_model" / new_version_id()).mkdir(parents=True)


def _run(instance, job_name: str, status: dg.DagsterRunStatus, **kwargs) -> dg.DagsterRun:
    """A run record in the instance with the given status (queued runs need a code origin)."""
    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=InProcessCodeLocationOrigin(
                loadable_target_origin=LoadableTargetOrigin(module_name="dagster_project.definitions")
            ),
            repository_name="__repository__",
        ),
        job_name=job_name,
    )
    return create_run_for_test(instance, job_name=job_name, status=status, remote_job_origin=origin, **kwargs)


def _materialized(instance, day: str) -> None:
    for key in ("raw_interactions", "curated_conversations"):
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=day))


# ----------------------------------------------------------------------------------------------- landing


def test_a_new_drop_is_requested_once_and_remembered_in_the_cursor(instance, home: Path) -> None:
    _base_model(home)
    first = _tick(instance, home, None)
    assert first.run_requests == [] and first.skip_reason.skip_message

    _drop(home, DAY1)
    second = _tick(instance, home, first.cursor)
    assert [r.partition_key for r in second.run_requests] == [DAY1]
    request = second.run_requests[0]
    signature = scan_landing(home / "landing")[DAY1].signature
    assert request.run_key == f"landing:{DAY1}:{signature}"
    assert request.asset_selection is None  # the whole ingestion job: raw -> curated -> tokenized
    assert json.loads(second.cursor) == {DAY1: signature}

    # Next tick, nothing changed: no duplicate request, even before any run has happened.
    third = _tick(instance, home, second.cursor)
    assert third.run_requests == [] and third.cursor == second.cursor

    # Another day lands: only that day is requested.
    _drop(home, DAY2)
    fourth = _tick(instance, home, third.cursor)
    assert [r.partition_key for r in fourth.run_requests] == [DAY2]
    assert set(json.loads(fourth.cursor)) == {DAY1, DAY2}


def test_a_late_external_conversation_file_is_a_new_drop_for_its_day(instance, home: Path) -> None:
    _base_model(home)
    _drop(home, DAY1)
    first = _tick(instance, home, None)
    _materialized(instance, DAY1)  # the requested run ran
    late = home / "landing" / "conversations" / f"day={DAY1}" / "partner-b.jsonl"
    late.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    mtime = datetime.now(UTC).timestamp() + 5  # written after the materialization above
    os.utime(late, (mtime, mtime))
    second = _tick(instance, home, first.cursor)
    assert [r.partition_key for r in second.run_requests] == [DAY1]
    assert second.run_requests[0].run_key != first.run_requests[0].run_key
    assert second.run_requests[0].tags["platform/drop_files"] == "3"


def test_an_unreadable_cursor_is_rebuilt_and_run_keys_still_identify_the_drop(instance, home: Path) -> None:
    _base_model(home)
    _drop(home, DAY1)
    first = _tick(instance, home, None)
    again = _tick(instance, home, "{not json")
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]  # Dagster dedupes
    assert json.loads(again.cursor) == json.loads(first.cursor)


def test_hidden_and_temporary_files_are_not_part_of_a_drop(home: Path) -> None:
    folder = home / "landing" / "interactions" / f"day={DAY1}"
    folder.mkdir(parents=True)
    (folder / ".tmp-events.parquet-1234").write_bytes(b"partial")
    (folder / ".DS_Store").write_bytes(b"")
    assert scan_landing(home / "landing") == {}
    (folder / "events.parquet").write_bytes(b"x")
    assert [f[0] for f in scan_landing(home / "landing")[DAY1].files] == [f"interactions/day={DAY1}/events.parquet"]


def test_drops_already_ingested_after_they_landed_are_not_requested(instance, home: Path) -> None:
    """E.g. a backfill run whose synthetic source generated the drop itself: no second run for it."""
    _base_model(home)
    _drop(home, DAY1)
    _materialized(instance, DAY1)
    result = _tick(instance, home, None)
    assert result.run_requests == []
    assert DAY1 in json.loads(result.cursor)  # remembered, so it is not looked at again


def test_a_day_being_processed_is_deferred_not_requested(instance, home: Path) -> None:
    _base_model(home)
    _drop(home, DAY1)
    run = _run(instance, "ingestion_job", dg.DagsterRunStatus.STARTED, tags={"dagster/partition": DAY1})
    deferred = _tick(instance, home, None)
    assert deferred.run_requests == [] and DAY1 not in json.loads(deferred.cursor)
    # The run finishes without materializing the drop's day (say it failed): the drop is requested.
    instance.report_run_failed(instance.get_run_by_id(run.run_id))
    after = _tick(instance, home, deferred.cursor)
    assert [r.partition_key for r in after.run_requests] == [DAY1]


def test_without_a_base_model_only_raw_and_curated_are_requested(instance, home: Path) -> None:
    _drop(home, DAY1)
    result = _tick(instance, home, None)
    (request,) = result.run_requests
    assert set(request.asset_selection) == {dg.AssetKey("raw_interactions"), dg.AssetKey("curated_conversations")}
    assert request.tags["platform/tokenize"] == "skipped"


def test_days_outside_the_partitions_are_ignored(instance, home: Path) -> None:
    _base_model(home)
    synthetic.ensure_drop(home / "landing", SMALL, datetime(2025, 12, 31).date())  # before PLATFORM_PARTITION_START
    result = _tick(instance, home, None)
    assert result.run_requests == [] and "2025-12-31" in json.loads(result.cursor)


# -------------------------------------------------------------------------------------------- retraining


def _shards(home: Path, day: str, loss_tokens: int, when: datetime) -> Path:
    path = home / "artifacts" / "tokenized_shards" / day / new_version_id(when)
    path.mkdir(parents=True)
    manifest = {"splits": {"train": {"loss_tokens": loss_tokens}, "validation": {"loss_tokens": 999_999}}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def _checkpoint(home: Path, shards: list[Path], when: datetime) -> Path:
    path = home / "artifacts" / "trained_checkpoint" / new_version_id(when)
    path.mkdir(parents=True)
    (path / "lineage.json").write_text(json.dumps({"shards": [str(p) for p in shards]}))
    return path


T0 = datetime(2026, 1, 5, tzinfo=UTC)


def _retrain(instance, home: Path, cursor: str | None = None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=_resources(home)) as context:
        return retraining_sensor(context)


def test_retraining_waits_for_enough_new_loss_tokens(instance, home: Path, monkeypatch) -> None:
    monkeypatch.setenv("RETRAIN_MIN_NEW_LOSS_TOKENS", "1000")
    _shards(home, DAY1, 600, T0)
    below = _retrain(instance, home)
    assert below.run_requests == [] and "600 new train loss tokens" in below.skip_reason.skip_message

    _shards(home, DAY2, 500, T0 + timedelta(hours=1))
    above = _retrain(instance, home)
    (request,) = above.run_requests
    assert request.run_key == f"retrain:{above.cursor}"
    assert request.tags["platform/new_loss_tokens"] == "1100"

    # Same data on the next tick (the run has not started yet or has failed): no second request.
    again = _retrain(instance, home, above.cursor)
    assert again.run_requests == [] and "already requested" in again.skip_reason.skip_message


def test_retraining_counts_only_shards_newer_than_the_last_checkpoint(instance, home: Path, monkeypatch) -> None:
    monkeypatch.setenv("RETRAIN_MIN_NEW_LOSS_TOKENS", "1000")
    old = [_shards(home, DAY1, 5000, T0), _shards(home, DAY2, 5000, T0)]
    _checkpoint(home, old, T0 + timedelta(hours=1))
    assert training_delta(ArtifactStore(root=str(home / "artifacts"))).new_amount == 0
    assert _retrain(instance, home).run_requests == []

    _shards(home, "2026-01-03", 700, T0 + timedelta(hours=2))
    assert _retrain(instance, home).run_requests == []
    _shards(home, DAY1, 400, T0 + timedelta(hours=3))  # DAY1 re-tokenized: its new version counts
    delta = training_delta(ArtifactStore(root=str(home / "artifacts")))
    assert delta.new_amount == 1100 and set(delta.new) == {DAY1, "2026-01-03"}
    assert len(_retrain(instance, home).run_requests) == 1


def test_days_a_windowed_checkpoint_left_out_do_not_count_as_new(home: Path) -> None:
    left_out = _shards(home, DAY1, 5000, T0)
    used = _shards(home, DAY2, 5000, T0 + timedelta(minutes=1))
    _checkpoint(home, [used], T0 + timedelta(hours=1))
    delta = training_delta(ArtifactStore(root=str(home / "artifacts")))
    assert left_out.parent.name not in delta.new and delta.new_amount == 0


def _pair_shards(home: Path, day: str, pairs: int, when: datetime) -> Path:
    path = home / "artifacts" / "preference_shards" / day / new_version_id(when)
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"splits": {"train": {"pairs": pairs}, "test": {"pairs": 999}}}))
    return path


def test_preference_runs_wait_for_enough_new_pairs_since_the_last_preference_checkpoint(
    instance, home: Path, monkeypatch
) -> None:
    from dagster_project.sensors import preference_sensor

    monkeypatch.setenv("RETRAIN_MIN_NEW_PAIRS", "100")

    def tick(cursor: str | None = None) -> dg.SensorResult:
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=_resources(home)) as context:
            return preference_sensor(context)

    used = _pair_shards(home, DAY1, 80, T0)
    below = tick()
    assert below.run_requests == [] and "80 new train pairs" in below.skip_reason.skip_message
    checkpoint = home / "artifacts" / "preference_checkpoint" / new_version_id(T0 + timedelta(hours=1))
    checkpoint.mkdir(parents=True)
    (checkpoint / "lineage.json").write_text(json.dumps({"preference_shards": [str(used)]}))
    _pair_shards(home, DAY2, 70, T0 + timedelta(hours=2))
    assert tick().run_requests == []  # DAY1's pairs were trained on: 70 new
    _pair_shards(home, "2026-01-03", 40, T0 + timedelta(hours=3))
    above = tick()
    (request,) = above.run_requests
    assert request.job_name in (None, "preference_job") and request.tags["platform/new_pairs"] == "110"
    assert tick(above.cursor).run_requests == []


@pytest.mark.parametrize(
    "status", [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.NOT_STARTED]
)
def test_no_training_request_while_a_training_run_is_in_progress(instance, home: Path, monkeypatch, status) -> None:
    monkeypatch.setenv("RETRAIN_MIN_NEW_LOSS_TOKENS", "10")
    _shards(home, DAY1, 5000, T0)
    run = _run(instance, "training_job", status)
    busy = _retrain(instance, home)
    assert busy.run_requests == [] and run.run_id[:8] in busy.skip_reason.skip_message
    instance.report_run_failed(instance.get_run_by_id(run.run_id))
    assert len(_retrain(instance, home).run_requests) == 1


def test_a_ui_materialization_of_trained_checkpoint_also_counts_as_a_training_run(instance, home: Path) -> None:
    _shards(home, DAY1, 10**9, T0)
    _run(
        instance,
        "__ASSET_JOB",
        dg.DagsterRunStatus.STARTED,
        asset_selection=frozenset({dg.AssetKey("trained_checkpoint")}),
    )
    assert _retrain(instance, home).run_requests == []


def test_retrain_run_config_comes_from_the_yaml_file_named_in_the_environment(
    instance, home: Path, monkeypatch, tmp_path: Path
) -> None:
    config = tmp_path / "retrain.yaml"
    config.write_text("ops:\n  trained_checkpoint:\n    config:\n      max_steps: 7\n")
    monkeypatch.setenv("RETRAIN_RUN_CONFIG", str(config))
    monkeypatch.setenv("RETRAIN_MIN_NEW_LOSS_TOKENS", "1")
    _shards(home, DAY1, 50, T0)
    (request,) = _retrain(instance, home).run_requests
    assert request.run_config == {"ops": {"trained_checkpoint": {"config": {"max_steps": 7}}}}
    monkeypatch.setenv("RETRAIN_RUN_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="RETRAIN_RUN_CONFIG"):
        retrain_run_config()


def test_nightly_schedule_skips_without_new_data_or_while_training(instance, home: Path) -> None:
    def evaluate():
        with dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2026, 1, 9, 3, tzinfo=UTC), resources=_resources(home)
        ) as context:
            return nightly_retrain_schedule(context)

    assert isinstance(evaluate(), dg.SkipReason)
    _shards(home, DAY1, 3, T0)  # any new data is enough at night
    request = evaluate()
    assert isinstance(request, dg.RunRequest) and request.run_key == "nightly:2026-01-09"
    _run(instance, "training_job", dg.DagsterRunStatus.QUEUED)
    assert isinstance(evaluate(), dg.SkipReason)


def test_sensor_and_schedule_defaults_in_the_code_location() -> None:
    from dagster_project.definitions import defs

    assert {s.name for s in defs.sensors} == {
        "landing_sensor",
        "retraining_sensor",
        "preference_sensor",
        "automation_sensor",
    }
    assert {s.name for s in defs.schedules} == {"nightly_retrain_schedule"}
    assert landing_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert landing_sensor.job_name == "ingestion_job"
    assert retraining_sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert retraining_sensor.job_name == "training_job"
    assert nightly_retrain_schedule.default_status == dg.DefaultScheduleStatus.STOPPED


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")  # raised inside Dagster's automation tester
def test_eval_report_follows_a_checkpoint_materialized_on_its_own(instance) -> None:
    """eval_report's automation condition: a new checkpoint of either kind (e.g. from the Launchpad) is evaluated."""
    from dagster_project.definitions import defs as code_location

    # The assets, not the shared Definitions object: that one caches its repository with a weak reference to
    # the instance of whichever test resolved it first, and a later test's instance would find it dead.
    defs = dg.Definitions(
        assets=code_location.assets, asset_checks=code_location.asset_checks, resources=code_location.resources
    )

    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0  # nothing trained yet
    instance.report_runless_asset_event(dg.AssetMaterialization("trained_checkpoint"))
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert second.get_requested_partitions(dg.AssetKey("eval_report")) == {None}
    assert second.total_requested == 1
    instance.report_runless_asset_event(dg.AssetMaterialization("eval_report"))
    third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert third.total_requested == 0
    instance.report_runless_asset_event(dg.AssetMaterialization("preference_checkpoint"))
    fourth = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=third.cursor)
    assert fourth.get_requested_partitions(dg.AssetKey("eval_report")) == {None}
