"""Jobs over the asset graph."""

from __future__ import annotations

import dagster as dg

INGESTION_LANE_TAG = "platform/lane"

catalog_job = dg.define_asset_job(
    "catalog_job",
    selection=dg.AssetSelection.assets("raw_catalog"),
    description="Refresh the catalog snapshot.",
)

ingestion_job = dg.define_asset_job(
    "ingestion_job",
    selection=dg.AssetSelection.assets("raw_interactions", "curated_conversations", "tokenized_shards"),
    description="One day: raw_interactions -> curated_conversations -> tokenized_shards.",
    # The instance config (instance_config.yaml) runs one run of this lane at a time, oldest first.
    tags={INGESTION_LANE_TAG: "ingestion"},
    # The three steps depend on each other; one process per run instead of one per step saves two interpreter
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
)

ALL_JOBS = [catalog_job, ingestion_job, base_model_job, training_job]
