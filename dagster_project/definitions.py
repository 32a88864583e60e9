"""The code location: the one `dg.Definitions` of the platform."""

from __future__ import annotations

import dagster as dg

from assets.catalog import raw_catalog, raw_interactions
from assets.conversations import curated_conversations
from assets.evals import eval_report
from assets.models import base_model
from assets.preference_training import preference_checkpoint
from assets.preferences import preference_pairs, preference_shards
from assets.shards import tokenized_shards
from assets.training import trained_checkpoint
from core.settings import load_settings
from dagster_project.jobs import ALL_JOBS
from dagster_project.maintenance import warehouse_maintenance_job
from dagster_project.resources import build_resources
from dagster_project.schedules import SCHEDULES
from dagster_project.sensors import SENSORS

ASSETS = [
    raw_catalog,
    raw_interactions,
    curated_conversations,
    base_model,
    tokenized_shards,
    preference_pairs,
    preference_shards,
    trained_checkpoint,
    preference_checkpoint,
    eval_report,
]

defs = dg.Definitions(
    assets=ASSETS,
    jobs=[*ALL_JOBS, warehouse_maintenance_job],
    sensors=SENSORS,
    schedules=SCHEDULES,
    resources=build_resources(load_settings()),
)
