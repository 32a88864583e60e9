"""Deployment settings read from the environment, with defaults that work offline.

Every knob a deployment changes (where data lives, which source to read, model
preset) is an environment variable documented in the README. Per-materialization
choices (sizes, bounds) are Dagster run config on the assets, whose defaults
come from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _env_int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from exc


def _env_date(name: str, default: str) -> date:
    raw = _env(name, default)
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be a date like 2026-01-01") from exc


@dataclass(frozen=True)
class PlatformSettings:
    home: Path
    partition_start: date
    data_source: str  # "synthetic" | "files"
    synthetic_seed: int
    synthetic_titles: int
    synthetic_members: int
    synthetic_days: int
    catalog_files: str  # glob, "files" source only
    interaction_files: str  # glob, may contain {day}
    catalog_mapping: str  # JSON
    interaction_mapping: str  # JSON
    base_model_path: str  # empty = build the tiny preset
    training_launcher: str  # "local" (torchrun here); "kubernetes" lands with the Kubernetes issue
    training_nnodes: int
    training_nproc_per_node: int

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"


def load_settings() -> PlatformSettings:
    home = Path(_env("PLATFORM_HOME", str(REPO_ROOT / "var"))).expanduser().resolve()
    source = _env("PLATFORM_DATA_SOURCE", "synthetic")
    if source not in ("synthetic", "files"):
        raise ValueError(
            f"PLATFORM_DATA_SOURCE={source!r} is not supported: use 'synthetic' (the built-in demo "
            "generator) or 'files' (your CSV/Parquet files, see README 'Bring your own data')"
        )
    return PlatformSettings(
        home=home,
        partition_start=_env_date("PLATFORM_PARTITION_START", "2026-01-01"),
        data_source=source,
        synthetic_seed=_env_int("SYNTHETIC_SEED", 7),
        synthetic_titles=_env_int("SYNTHETIC_TITLES", 3000),
        synthetic_members=_env_int("SYNTHETIC_MEMBERS", 4000),
        synthetic_days=_env_int("SYNTHETIC_DAYS", 7),
        catalog_files=_env("CATALOG_FILES", ""),
        interaction_files=_env("INTERACTION_FILES", ""),
        catalog_mapping=_env("CATALOG_MAPPING", "{}"),
        interaction_mapping=_env("INTERACTION_MAPPING", "{}"),
        base_model_path=_env("BASE_MODEL_PATH", ""),
        training_launcher=_env("TRAINING_LAUNCHER", "local"),
        training_nnodes=_env_int("TRAINING_NNODES", 1),
        training_nproc_per_node=_env_int("TRAINING_NPROC_PER_NODE", 2),
    )
