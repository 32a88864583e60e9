"""Deployment settings read from the environment, with defaults that work offline.

Every knob a deployment changes (where data lives, which source to read, model
preset) is an environment variable documented in the README. Per-materialization
choices (sizes, bounds) are Dagster run config on the assets, whose defaults
come from here.

This module is the one reader of platform settings: the Dagster side (assets, resources, sensors, schedules,
jobs, the instance set-up) calls these functions instead of reading the environment, and each default is
written once, here. Functions read the environment when they are called, never at import, so a changed
variable is seen by the next caller; what Dagster needs as a decorator argument (sensor intervals, the cron,
the training job's tags) is read when the Definitions load. Facts set by launchers for one process (RANK,
WORLD_SIZE, LOCAL_RANK, POD_NAME, a C compiler in CC) are not settings and are read where they are used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from core.signals import SignalThresholds

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def env_var_as_is(name: str) -> bool:
    """Whether `name` is set to a non-blank value the settings take verbatim (no surrounding whitespace).

    Then a Dagster resource can hold the variable (`dg.EnvVar`) instead of its value and resolve the same value:
    the UI shows the variable's name rather than, say, a path or a secret.
    """
    raw = os.environ.get(name)
    return bool(raw) and raw == raw.strip()


def _env_number(name: str, default: float, parse: type[int] | type[float]) -> Any:
    raw = _env(name, repr(default))
    try:
        return parse(raw)
    except ValueError as exc:
        what = "an integer" if parse is int else "a number"
        raise ValueError(f"environment variable {name}={raw!r} must be {what}") from exc


def _env_int(name: str, default: int) -> int:
    return _env_number(name, default, int)


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float)


def _env_date(name: str, default: str) -> date:
    raw = _env(name, default)
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be a date like 2026-01-01") from exc


@dataclass(frozen=True)
class SyntheticWorldSettings:
    """Size, seed and first day of the built-in synthetic world.

    The one place its defaults are written: `core.synthetic.SyntheticConfig`, the `LandingArea` resource and the
    `python -m core.synthetic drop` CLI all take them from here, so `make drop-day` writes the same world the
    assets generate on demand (a second copy of a default would silently fork the demo's data).
    """

    seed: int = 7
    titles: int = 1500
    members: int = 8000  # enough held-out members (5% + 5%) for recommendation metrics with useful intervals
    days: int = 7
    start: date = date(2026, 1, 1)  # also the first daily partition (PLATFORM_PARTITION_START)


SYNTHETIC_DEFAULTS = SyntheticWorldSettings()


def load_synthetic_settings() -> SyntheticWorldSettings:
    """SYNTHETIC_SEED, SYNTHETIC_TITLES, SYNTHETIC_MEMBERS, SYNTHETIC_DAYS and PLATFORM_PARTITION_START.

    Read on their own (not through `load_settings`) so that the drop CLI needs only these variables.
    """
    d = SYNTHETIC_DEFAULTS
    return SyntheticWorldSettings(
        seed=_env_int("SYNTHETIC_SEED", d.seed),
        titles=_env_int("SYNTHETIC_TITLES", d.titles),
        members=_env_int("SYNTHETIC_MEMBERS", d.members),
        days=_env_int("SYNTHETIC_DAYS", d.days),
        start=_env_date("PLATFORM_PARTITION_START", d.start.isoformat()),
    )


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
    training_launcher: str  # "local" (torchrun here) or "kubernetes" (Indexed Job, K8S_* variables)
    training_nnodes: int
    training_nproc_per_node: int
    # Text encodings of the sources (Python codec names): CSV catalog, CSV interactions, landing JSONL.
    catalog_encoding: str = "utf-8"
    interaction_encoding: str = "utf-8"
    conversation_encoding: str = "utf-8"
    # The warehouse: "duckdb" (the file PLATFORM_HOME/warehouse.duckdb) or "ducklake" (a PostgreSQL catalog and
    # Parquet files under the data path; docs/warehouse.md).
    warehouse_backend: str = "duckdb"
    ducklake_catalog: str = ""  # libpq conninfo; the password is better given as PGPASSWORD
    ducklake_data_path: str = ""  # directory or object-store URL; default PLATFORM_HOME/lake
    # The artifacts on an object store (s3://bucket/prefix) instead of PLATFORM_HOME/artifacts; versions are read
    # from local copies under PLATFORM_HOME/artifact-cache.
    artifacts_url: str = ""

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

    @property
    def artifact_cache_dir(self) -> Path:
        return self.home / "artifact-cache"


def load_signal_thresholds() -> SignalThresholds:
    """SIGNAL_NEGATIVE_RATING_MAX, SIGNAL_POSITIVE_RATING_MIN, SIGNAL_ABANDONED_BELOW, SIGNAL_FINISHED_FROM: where a
    rating or a watched fraction becomes a negative or a strong positive signal (core/signals.py)."""
    d = SignalThresholds()
    try:
        return SignalThresholds(
            negative_rating_max=_env_float("SIGNAL_NEGATIVE_RATING_MAX", d.negative_rating_max),
            positive_rating_min=_env_float("SIGNAL_POSITIVE_RATING_MIN", d.positive_rating_min),
            abandoned_below=_env_float("SIGNAL_ABANDONED_BELOW", d.abandoned_below),
            finished_from=_env_float("SIGNAL_FINISHED_FROM", d.finished_from),
        )
    except ValueError as exc:
        raise ValueError(f"SIGNAL_* settings: {exc}") from exc


def load_settings() -> PlatformSettings:
    home = Path(_env("PLATFORM_HOME", str(REPO_ROOT / "var"))).expanduser().resolve()
    source = _env("PLATFORM_DATA_SOURCE", "synthetic")
    if source not in ("synthetic", "files"):
        raise ValueError(
            f"PLATFORM_DATA_SOURCE={source!r} is not supported: use 'synthetic' (the built-in demo "
            "generator) or 'files' (your CSV/Parquet files, see README 'Bring your own data')"
        )
    world = load_synthetic_settings()
    return PlatformSettings(
        home=home,
        partition_start=world.start,
        data_source=source,
        synthetic_seed=world.seed,
        synthetic_titles=world.titles,
        synthetic_members=world.members,
        synthetic_days=world.days,
        catalog_files=_env("CATALOG_FILES", ""),
        interaction_files=_env("INTERACTION_FILES", ""),
        catalog_mapping=_env("CATALOG_MAPPING", "{}"),
        interaction_mapping=_env("INTERACTION_MAPPING", "{}"),
        base_model_path=_env("BASE_MODEL_PATH", ""),
        training_launcher=_env("TRAINING_LAUNCHER", "local"),
        training_nnodes=_env_int("TRAINING_NNODES", 1),
        training_nproc_per_node=_env_int("TRAINING_NPROC_PER_NODE", 2),
        catalog_encoding=_env_encoding("CATALOG_ENCODING"),
        interaction_encoding=_env_encoding("INTERACTION_ENCODING"),
        conversation_encoding=_env_encoding("CONVERSATION_ENCODING"),
        **_warehouse_settings(home),
        artifacts_url=_artifacts_url(),
    )


def _artifacts_url() -> str:
    url = _env("ARTIFACTS_URL", "")
    if url and not url.startswith("s3://"):
        raise ValueError(f"ARTIFACTS_URL={url!r} must be an s3://bucket/prefix URL (unset: PLATFORM_HOME/artifacts)")
    return url


WAREHOUSE_BACKENDS = ("duckdb", "ducklake")


def _warehouse_settings(home: Path) -> dict[str, str]:
    """WAREHOUSE_BACKEND, DUCKLAKE_CATALOG and DUCKLAKE_DATA_PATH, checked together so that a DuckLake without a
    catalog fails the code location with the variable's name instead of every step that opens the warehouse."""
    backend = _env("WAREHOUSE_BACKEND", "duckdb")
    if backend not in WAREHOUSE_BACKENDS:
        raise ValueError(
            f"WAREHOUSE_BACKEND={backend!r} is not supported: use 'duckdb' (one file, one writer at a time) or "
            "'ducklake' (PostgreSQL catalog + Parquet, many writers; docs/warehouse.md)"
        )
    catalog = _env("DUCKLAKE_CATALOG", "")
    if backend == "ducklake" and not catalog:
        raise ValueError(
            "WAREHOUSE_BACKEND=ducklake needs DUCKLAKE_CATALOG, the catalog database's libpq conninfo, e.g. "
            "'dbname=lake host=127.0.0.1 port=5433 user=platform' (make dev-team starts one; docs/warehouse.md)"
        )
    return {
        "warehouse_backend": backend,
        "ducklake_catalog": catalog,
        "ducklake_data_path": _env("DUCKLAKE_DATA_PATH", str(home / "lake")),
    }


def _env_encoding(name: str) -> str:
    """A source's text encoding: any Python codec name, checked when the settings load so that a typo fails
    the code location with the variable's name instead of quarantining every row as encoding_error."""
    # Imported here, not at the top: importing the settings must not need polars.
    from core.ingest import text_encoding
    from core.landing_files import conversation_encoding

    raw = _env(name, "utf-8")
    if name == "CONVERSATION_ENCODING":
        return conversation_encoding(raw, f"environment variable {name}")
    text_encoding(raw, f"environment variable {name}")
    return raw


# ---- time limits of training --------------------------------------------------------------------------------
# The trainer's own limit sits under the run's, so that the trainer stops first, with a clear step failure and
# its checkpoints kept; the run's limit is the backstop for everything else (evaluation, a hung run worker).


def _env_seconds(name: str, default: int) -> int:
    value = _env_int(name, default)
    if value < 0:
        raise ValueError(f"environment variable {name}={value} must be a number of seconds >= 0 (0 = no limit)")
    return value


DEFAULT_TRAINING_MAX_RUNTIME_S = 24 * 3600
DEFAULT_TRAINING_MAX_WALL_CLOCK_S = 23 * 3600  # also LocalTorchrunLauncher.max_wall_clock_s's default


def training_max_runtime_seconds() -> int:
    """TRAINING_MAX_RUNTIME_SECONDS: the `dagster/max_runtime` tag of training runs (run monitoring); 0 = none."""
    return _env_seconds("TRAINING_MAX_RUNTIME_SECONDS", DEFAULT_TRAINING_MAX_RUNTIME_S)


def training_max_wall_clock_seconds() -> int:
    """TRAINING_MAX_WALL_CLOCK_SECONDS: wall-clock budget of the local trainers of one launch; 0 = none."""
    return _env_seconds("TRAINING_MAX_WALL_CLOCK_SECONDS", DEFAULT_TRAINING_MAX_WALL_CLOCK_S)


# ---- sensors, schedule and the Dagster instance -------------------------------------------------------------
# Dagster takes a sensor's minimum interval and a schedule's cron as arguments of their decorators, so those are
# read when the Definitions load and a change needs a reload of the code location (the UI's "Reload" or a restart
# of `make dev`). What a tick uses (the retrain threshold, the run config file) is read on every tick.


def _env_int_at_least(name: str, default: int, minimum: int) -> int:
    value = _env_int(name, default)
    if value < minimum:
        raise ValueError(f"environment variable {name}={value} must be >= {minimum}")
    return value


def landing_sensor_interval_seconds() -> int:
    """LANDING_SENSOR_INTERVAL_SECONDS (default 30): read when the Definitions load."""
    return _env_int_at_least("LANDING_SENSOR_INTERVAL_SECONDS", 30, minimum=1)


def retrain_sensor_interval_seconds() -> int:
    """RETRAIN_SENSOR_INTERVAL_SECONDS (default 60): read when the Definitions load."""
    return _env_int_at_least("RETRAIN_SENSOR_INTERVAL_SECONDS", 60, minimum=1)


def retrain_min_new_loss_tokens() -> int:
    """RETRAIN_MIN_NEW_LOSS_TOKENS (default 200,000): new train-split loss tokens that justify a training run."""
    return _env_int_at_least("RETRAIN_MIN_NEW_LOSS_TOKENS", 200_000, minimum=1)


def retrain_min_new_pairs() -> int:
    """RETRAIN_MIN_NEW_PAIRS (default 500): new train-split preference pairs that justify a preference run."""
    return _env_int_at_least("RETRAIN_MIN_NEW_PAIRS", 500, minimum=1)


def retrain_run_config_file() -> str:
    """RETRAIN_RUN_CONFIG: a YAML run config file for sensor/schedule-started training runs; "" = none."""
    return _env("RETRAIN_RUN_CONFIG", "")


def nightly_retrain_cron() -> str:
    """NIGHTLY_RETRAIN_CRON (default 03:00 UTC): read when the Definitions load."""
    return _env("NIGHTLY_RETRAIN_CRON", "0 3 * * *")


def dagster_home() -> Path:
    """DAGSTER_HOME when set, else PLATFORM_HOME/dagster."""
    return Path(_env("DAGSTER_HOME", str(load_settings().dagster_home)))


# ---- leftovers in the artifact store ----------------------------------------------------------------------


def artifact_cleanup_hours() -> dict[str, float]:
    """ArtifactStore ages for sweeping leftovers: ARTIFACT_TEMP_MAX_AGE_HOURS (temp version dirs of other hosts
    or without an owner, default 24) and ARTIFACT_STAGING_RETENTION_HOURS (staging dirs of finished training
    lineages, default 72). Both at least 1 h: a smaller age could remove a directory a slow writer still owns."""
    out: dict[str, float] = {}
    for name, field, default in (
        ("ARTIFACT_TEMP_MAX_AGE_HOURS", "temp_dir_max_age_hours", "24"),
        ("ARTIFACT_STAGING_RETENTION_HOURS", "staging_retention_hours", "72"),
    ):
        raw = _env(name, default)
        try:
            value = float(raw)
        except ValueError as exc:
            raise ValueError(f"environment variable {name}={raw!r} must be a number of hours") from exc
        if not value >= 1:
            raise ValueError(f"environment variable {name}={raw!r} must be at least 1 (hours)")
        out[field] = value
    return out


# ---- TRAINING_LAUNCHER=kubernetes ---------------------------------------------------------------------------

# Where training Jobs run unless K8S_NAMESPACE says otherwise: the namespace deploy/ creates, and the default of
# KubernetesTrainingLauncher.namespace too, so a launcher built in code and one built from settings agree.
K8S_DEFAULT_NAMESPACE = "catalog-posttrain"


def _env_json(name: str, default: str, kind: type) -> object:
    import json

    raw = _env(name, default)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be JSON ({kind.__name__})") from exc
    if not isinstance(value, kind):
        raise ValueError(f"environment variable {name}={raw!r} must be a JSON {kind.__name__}")
    return value


def kubernetes_launcher_config(settings: PlatformSettings) -> dict[str, object]:
    """KubernetesTrainingLauncher fields from K8S_* variables (nodes x processes from TRAINING_NNODES/NPROC)."""
    image = _env("K8S_IMAGE", "")
    if not image:
        raise ValueError(
            "TRAINING_LAUNCHER=kubernetes needs K8S_IMAGE: the trainer image built from deploy/Dockerfile "
            "(e.g. registry.example.com/catalog-posttrain:0.1.0)"
        )
    pull_secrets = [s.strip() for s in _env("K8S_IMAGE_PULL_SECRETS", "").split(",") if s.strip()]
    return {
        "namespace": _env("K8S_NAMESPACE", K8S_DEFAULT_NAMESPACE),
        "image": image,
        "image_pull_policy": _env("K8S_IMAGE_PULL_POLICY", "IfNotPresent"),
        "image_pull_secrets": pull_secrets,
        "nodes": settings.training_nnodes,
        "procs_per_node": settings.training_nproc_per_node,
        "gpus_per_node": _env_int("K8S_GPUS_PER_NODE", 0),
        "cpu": _env("K8S_CPU", "4"),
        "memory": _env("K8S_MEMORY", "16Gi"),
        "shm_size": _env("K8S_SHM_SIZE", "2Gi"),
        "artifacts_pvc": _env("K8S_ARTIFACTS_PVC", "catalog-posttrain-artifacts"),
        # With ARTIFACTS_URL the pods mirror the run worker's artifact cache instead of mounting the PVC.
        "artifacts_mount_path": _env(
            "K8S_ARTIFACTS_MOUNT_PATH",
            str(settings.artifact_cache_dir if settings.artifacts_url else settings.artifacts_dir),
        ),
        "artifacts_url": settings.artifacts_url,
        "artifacts_scratch_size": _env("K8S_ARTIFACTS_SCRATCH_SIZE", "200Gi"),
        "service_account": _env("K8S_SERVICE_ACCOUNT", ""),
        "node_selector": _env_json("K8S_NODE_SELECTOR", "{}", dict),
        "tolerations": _env_json("K8S_TOLERATIONS", "[]", list),
        "priority_class": _env("K8S_PRIORITY_CLASS", ""),
        "env": _env_json("K8S_ENV", "{}", dict),
        "secret_env": _env_json("K8S_SECRET_ENV", "{}", dict),
        "backoff_limit": _env_int("K8S_BACKOFF_LIMIT", -1),
        "active_deadline_seconds": _env_int("K8S_ACTIVE_DEADLINE_SECONDS", 86400),
        "rdzv_join_timeout_seconds": _env_int("K8S_RDZV_JOIN_TIMEOUT_SECONDS", 600),
        "api_connect_timeout_s": _env_int("K8S_API_CONNECT_TIMEOUT_SECONDS", 10),
        "api_read_timeout_s": _env_int("K8S_API_READ_TIMEOUT_SECONDS", 60),
        "kubeconfig": _env("K8S_KUBECONFIG", ""),
        "kube_context": _env("K8S_CONTEXT", ""),
    }


# ---- warehouse maintenance ------------------------------------------------------------------------------------


def warehouse_snapshot_retention_hours() -> float:
    """DUCKLAKE_SNAPSHOT_RETENTION_HOURS: DuckLake snapshots younger than this are never expired (default 7 days).

    Older ones go too unless a live lineage record (shards, checkpoints) names them."""
    raw = _env("DUCKLAKE_SNAPSHOT_RETENTION_HOURS", "168")
    try:
        hours = float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable DUCKLAKE_SNAPSHOT_RETENTION_HOURS={raw!r} must be a number") from exc
    if hours < 0:
        raise ValueError(f"environment variable DUCKLAKE_SNAPSHOT_RETENTION_HOURS={raw!r} must be >= 0")
    return hours


# ---- the team set-up on one machine (make dev-team) -------------------------------------------------------------


def team_postgres_port() -> int:
    """TEAM_POSTGRES_PORT: where `make dev-team` runs its PostgreSQL on 127.0.0.1 (default 5433)."""
    return _env_int_at_least("TEAM_POSTGRES_PORT", 5433, 1)


def ingestion_concurrency() -> int:
    """INGESTION_CONCURRENCY: ingestion runs (days) at once on a DuckLake warehouse (`make dev-team`; default 4)."""
    return _env_int_at_least("INGESTION_CONCURRENCY", 4, 1)


# ---- object storage (s3:// URLs) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectStoreSettings:
    """Credentials and endpoint for s3:// URLs: the standard AWS variables, read here because DuckDB's httpfs
    (a DuckLake data path on S3) is given them explicitly; fsspec's s3fs reads the same ones.

    AWS_ENDPOINT_URL points at an S3-compatible server (MinIO, Ceph, a local test server) instead of AWS."""

    key_id: str
    secret: str
    session_token: str
    region: str
    endpoint_url: str


def object_store_settings() -> ObjectStoreSettings:
    return ObjectStoreSettings(
        key_id=_env("AWS_ACCESS_KEY_ID", ""),
        secret=_env("AWS_SECRET_ACCESS_KEY", ""),
        session_token=_env("AWS_SESSION_TOKEN", ""),
        region=_env("AWS_REGION", _env("AWS_DEFAULT_REGION", "us-east-1")),
        endpoint_url=_env("AWS_ENDPOINT_URL", ""),
    )
