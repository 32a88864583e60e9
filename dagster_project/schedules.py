"""The optional nightly retrain (default STOPPED; start it in the UI or with `dagster schedule start`)."""

from __future__ import annotations

import dagster as dg

from core.settings import nightly_retrain_cron
from dagster_project.jobs import training_job
from dagster_project.sensors import (
    busy_reason,
    retrain_run_config,
    training_delta,
    training_runs_in_progress,
    training_tags,
)
from resources.artifacts import ArtifactStore


@dg.schedule(
    cron_schedule=nightly_retrain_cron(),  # read when the Definitions load
    job=training_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description=(
        "Nightly training_job (NIGHTLY_RETRAIN_CRON, default 03:00 UTC) when there is any new tokenized_shards "
        "version since the last trained_checkpoint; skipped while a training run is queued or running."
    ),
)
def nightly_retrain_schedule(context: dg.ScheduleEvaluationContext, artifacts: ArtifactStore):
    running = training_runs_in_progress(context.instance)
    if running:
        return dg.SkipReason(busy_reason(running))
    delta = training_delta(artifacts)
    if not delta.new:
        since = delta.checkpoint.name if delta.checkpoint else "the start"
        return dg.SkipReason(f"no new tokenized_shards version since {since}")
    night = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return dg.RunRequest(
        run_key=f"nightly:{night}", run_config=retrain_run_config(), tags=training_tags(delta, "nightly_schedule")
    )


SCHEDULES = [nightly_retrain_schedule]
