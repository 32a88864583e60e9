"""Runs that die must not block anything: the instance template's run monitoring, the local run launcher's
worker health check, the training runs' time limit, and what DAGSTER_HOME set-up does with an existing config.

The dead runs here are real: a process executes a run against a temporary instance and is SIGKILLed mid-step.
Dagster's own monitoring functions (what the daemon calls every poll) then act on them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
from dagster._core.instance.config import dagster_instance_config
from dagster._core.launcher.base import WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG, MAX_RUNTIME_SECONDS_TAG
from dagster._daemon.monitoring import concurrency as slot_monitoring
from dagster._daemon.monitoring import run_monitoring

from dagster_project import instance as instance_module
from dagster_project.instance import (
    INSTANCE_TEMPLATE,
    LocalRunLauncher,
    ensure_dagster_home,
    instance_config_gaps,
    process_alive_since,
)

LOG = logging.getLogger("test_run_monitoring")

# A run worker: executes one asset in the "training" pool (the pool trained_checkpoint uses) and sleeps in it.
WORKER = """
import sys, time
from pathlib import Path
import dagster as dg
home, marker, tags = sys.argv[1], sys.argv[2], dict(a.split("=", 1) for a in sys.argv[3:])
@dg.asset(pool="training")
def busy() -> None:
    Path(marker).write_text("running")
    time.sleep(600)
with dg.DagsterInstance.from_config(home) as instance:
    dg.materialize([busy], instance=instance, tags=tags)
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A DAGSTER_HOME made from the template, as ensure_dagster_home makes it."""
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copyfile(INSTANCE_TEMPLATE, home / "dagster.yaml")
    return home


@pytest.fixture
def instance(home: Path) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


@contextlib.contextmanager
def running_worker(home: Path, tmp_path: Path, **tags: str) -> Iterator[subprocess.Popen]:
    """A run worker inside its step; killed (SIGKILL) on exit whatever happened."""
    marker = tmp_path / "step-running"
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(home), str(marker), *(f"{k}={v}" for k, v in tags.items())]
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, f"the run worker exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "the run worker did not reach its step"
            time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def the_run(instance: dg.DagsterInstance) -> dg.DagsterRun:
    (run,) = instance.get_runs()
    return run


def monitor(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dg.DagsterRun:
    """One pass of the daemon's run monitoring over `run` (a STARTED run); returns it reloaded."""
    record = instance.get_run_record_by_id(run.run_id)
    assert record is not None
    run_monitoring.monitor_started_run(instance, None, record, LOG)  # no workspace: only used to resume runs
    reloaded = instance.get_run_by_id(run.run_id)
    assert reloaded is not None
    return reloaded


def claimed_slots(instance: dg.DagsterInstance) -> list[str]:
    info = instance.event_log_storage.get_concurrency_info("training")
    return [slot.run_id for slot in info.claimed_slots]


# ---- the template -----------------------------------------------------------------------------------------------


def test_the_instance_template_turns_run_monitoring_on(home: Path, instance: dg.DagsterInstance) -> None:
    config, _ = dagster_instance_config(str(home))  # Dagster's own schema validation of the file
    assert instance_config_gaps(config) == []
    assert instance.run_monitoring_enabled
    assert "MONITORING" in instance.get_required_daemon_types()  # dagster dev / dagster-daemon run it
    assert 0 < instance.run_monitoring_poll_interval_seconds <= 60
    assert instance.run_monitoring_start_timeout_seconds > 0 and instance.run_monitoring_cancel_timeout_seconds > 0
    # The local launcher cannot resume a run in place; a positive value would fail the instance at start.
    assert instance.run_monitoring_max_resume_run_attempts == 0 and not instance.run_launcher.supports_resume_run
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
    assert isinstance(instance.run_launcher, LocalRunLauncher)
    assert instance.run_launcher.supports_check_run_worker_health


# ---- a dead run worker ------------------------------------------------------------------------------------------


@pytest.mark.slow  # a real run worker process (imports dagster: seconds)
def test_a_run_whose_worker_was_sigkilled_is_failed_and_gives_its_pool_slot_back(
    home: Path, instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_worker(home, tmp_path) as worker:
        run = the_run(instance)
        assert monitor(instance, run).status == dg.DagsterRunStatus.STARTED  # alive: left alone
    # The worker was SIGKILLed inside its step: nothing reported the run's end, the pool slot is still claimed.
    run = the_run(instance)
    assert run.status == dg.DagsterRunStatus.STARTED
    assert claimed_slots(instance) == [run.run_id]

    failed = monitor(instance, run)
    assert failed.status == dg.DagsterRunStatus.FAILURE
    messages = [e.message for e in instance.all_logs(run.run_id) if e.message]
    assert any(f"run worker (pid {worker.pid})" in m and "is gone" in m for m in messages), messages[-3:]

    # The slot goes back once the run has been over for free_slots_after_run_end_seconds (a clock moved ahead).
    wait = instance.run_monitoring_settings["free_slots_after_run_end_seconds"]
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=wait + 5)
    monkeypatch.setattr(slot_monitoring, "get_current_datetime", lambda: later)
    list(slot_monitoring.execute_concurrency_slots_iteration(SimpleNamespace(instance=instance), LOG))
    assert claimed_slots(instance) == []


@pytest.mark.slow  # a real run worker process (imports dagster: seconds)
def test_a_run_served_from_another_host_is_not_judged_from_here(
    home: Path, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    with running_worker(home, tmp_path):
        pass
    run = the_run(instance)
    instance.add_run_tags(run.run_id, {GRPC_INFO_TAG: json.dumps({"host": "10.11.12.13", "port": 4266})})
    run = the_run(instance)
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    assert monitor(instance, run).status == dg.DagsterRunStatus.STARTED


def test_a_pid_reused_by_a_younger_process_is_not_the_worker() -> None:
    assert process_alive_since(os.getpid(), time.time())
    assert not process_alive_since(os.getpid(), time.time() - 24 * 3600)  # this process did not exist then
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not process_alive_since(int(done.stdout), time.time())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="compares with /proc (Linux)")
def test_the_ps_fallback_reads_the_same_start_time_as_proc() -> None:
    """Where there is no /proc (macOS) the start time comes from `ps`; both agree here to the second."""
    from_proc = instance_module._start_time_from_proc(os.getpid())
    from_ps = instance_module._start_time_from_ps(os.getpid())
    assert from_proc is not None and from_ps is not None and abs(from_proc - from_ps) <= 2
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert instance_module._start_time_from_ps(int(done.stdout)) is None


# ---- the training runs' time limit ------------------------------------------------------------------------------


def test_training_runs_carry_a_max_runtime_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster_project.jobs import MAX_RUNTIME_TAG, training_job, training_run_tags
    from dagster_project.sensors import TrainingDelta, training_tags

    assert MAX_RUNTIME_TAG == MAX_RUNTIME_SECONDS_TAG  # the tag the daemon enforces
    monkeypatch.delenv("TRAINING_MAX_RUNTIME_SECONDS", raising=False)
    assert training_job.tags[MAX_RUNTIME_TAG] == str(24 * 3600)
    delta = TrainingDelta(checkpoint=None, current={"2026-01-01": "v1"}, new={"2026-01-01": "v1"}, new_amount=9)
    assert training_tags(delta, "retraining_sensor")[MAX_RUNTIME_TAG] == str(24 * 3600)
    monkeypatch.setenv("TRAINING_MAX_RUNTIME_SECONDS", "7200")
    assert training_tags(delta, "retraining_sensor")[MAX_RUNTIME_TAG] == "7200"
    monkeypatch.setenv("TRAINING_MAX_RUNTIME_SECONDS", "0")
    assert MAX_RUNTIME_TAG not in training_run_tags()
    monkeypatch.setenv("TRAINING_MAX_RUNTIME_SECONDS", "-5")
    with pytest.raises(ValueError, match="TRAINING_MAX_RUNTIME_SECONDS=-5"):
        training_run_tags()


def test_the_local_trainer_limit_is_below_the_run_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer stops first (clear step failure, checkpoints kept); the run limit is the backstop."""
    from core.settings import load_settings, training_max_runtime_seconds
    from dagster_project.resources import build_launcher

    for name in ("TRAINING_MAX_RUNTIME_SECONDS", "TRAINING_MAX_WALL_CLOCK_SECONDS", "TRAINING_LAUNCHER"):
        monkeypatch.delenv(name, raising=False)
    launcher = build_launcher(load_settings())
    assert 0 < launcher.max_wall_clock_s < training_max_runtime_seconds()
    monkeypatch.setenv("TRAINING_MAX_WALL_CLOCK_SECONDS", "600")
    assert build_launcher(load_settings()).max_wall_clock_s == 600


@pytest.mark.slow  # a real run worker process (imports dagster: seconds)
def test_a_run_past_its_max_runtime_is_ended_by_run_monitoring(
    home: Path, instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_worker(home, tmp_path, **{MAX_RUNTIME_SECONDS_TAG: "60"}):
        run = the_run(instance)
        assert monitor(instance, run).status == dg.DagsterRunStatus.STARTED  # within its limit
        record = instance.get_run_record_by_id(run.run_id)
        assert record is not None and record.start_time is not None
        monkeypatch.setattr(run_monitoring, "get_current_timestamp", lambda: record.start_time + 61)
        ended = monitor(instance, run)
    assert ended.status == dg.DagsterRunStatus.FAILURE
    assert any("maximum runtime of 60 seconds" in (e.message or "") for e in instance.all_logs(run.run_id))


# ---- DAGSTER_HOME set-up ----------------------------------------------------------------------------------------


def test_an_existing_dagster_yaml_is_kept_and_what_it_lacks_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    own = "telemetry:\n  enabled: false\nrun_retries:\n  enabled: true\n"  # an operator's file, older than ours
    (home / "dagster.yaml").write_text(own)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with caplog.at_level(logging.WARNING, logger=instance_module.__name__):
        assert ensure_dagster_home() == home
    assert (home / "dagster.yaml").read_text() == own  # never rewritten
    (record,) = [r for r in caplog.records if r.name == instance_module.__name__]
    text = record.getMessage()
    assert str(home / "dagster.yaml") in text and str(INSTANCE_TEMPLATE) in text
    assert "run_monitoring.enabled" in text and "LocalRunLauncher" in text


def test_a_new_dagster_home_gets_the_template_without_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "fresh"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with caplog.at_level(logging.WARNING, logger=instance_module.__name__):
        ensure_dagster_home()
        ensure_dagster_home()  # the second call finds our own file: nothing to report
    assert (home / "dagster.yaml").read_text() == INSTANCE_TEMPLATE.read_text()
    assert [r for r in caplog.records if r.name == instance_module.__name__] == []
