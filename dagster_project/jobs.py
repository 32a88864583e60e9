"""Jobs over the asset graph."""

from __future__ import annotations

import dagster as dg

from core.settings import training_max_runtime_seconds

INGESTION_LANE_TAG = "platform/lane"
# Dagster's run tag for a run's time limit in seconds, enforced by the daemon's run monitoring (the run is
# canceled, then marked FAILURE). Dagster reads it as MAX_RUNTIME_SECONDS_TAG.
MAX_RUNTIME_TAG = "dagster/max_runtime"


def training_run_tags() -> dict[str, str]:
    """Tags every training run carries: its time limit (TRAINING_MAX_RUNTIME_SECONDS; 0 = none).

    Read when called: training_job's own tags take it when the Definitions load, the retraining sensor and the
    nightly schedule on every request.
    """
    seconds = training_max_runtime_seconds()
    return {MAX_RUNTIME_TAG: str(seconds)} if seconds else {}


catalog_job = dg.define_asset_job(
    "catalog_job",
    selection=dg.AssetSelection.assets("raw_catalog"),
    description="Refresh the catalog snapshot.",
)

ingestion_job = dg.define_asset_job(
    "ingestion_job",
    selection=dg.AssetSelection.assets(
        "raw_interactions", "curated_conversations", "tokenized_shards", "preference_pairs", "preference_shards"
    ),
    description=(
        "One day: raw_interactions -> curated_conversations -> tokenized_shards, and -> preference_pairs -> "
        "preference_shards."
    ),
    # The instance config (instance_config.yaml) runs one run of this lane at a time, oldest first.
    tags={INGESTION_LANE_TAG: "ingestion"},
    # The steps depend on each other; one process per run instead of one per step saves two interpreter
    # start-ups (seconds each) per partition of a backfill.
    executor_def=dg.in_process_executor,
)

base_model_job = dg.define_asset_job(
    "base_model_job",
    selection=dg.AssetSelection.assets("base_model"),
    description="Build or import the base model.",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets("trained_checkpoint", "eval_report"),
    description="Train a checkpoint on the tokenized shards, evaluate it and gate it against the champion.",
    executor_def=dg.in_process_executor,  # trained_checkpoint runs torchrun in its own processes anyway
    # A run that outlives this (a hung run worker, an evaluation that never ends) is canceled by the daemon and
    # frees the training pool. The trainer's own limit (TRAINING_MAX_WALL_CLOCK_SECONDS) is lower and fires first.
    tags=training_run_tags(),
)

preference_job = dg.define_asset_job(
    "preference_job",
    selection=dg.AssetSelection.assets("preference_checkpoint", "eval_report"),
    description="Preference-train the champion on the preference shards (DPO), evaluate it and gate it.",
    executor_def=dg.in_process_executor,
    tags=training_run_tags(),
)

ALL_JOBS = [catalog_job, ingestion_job, base_model_job, training_job, preference_job]
