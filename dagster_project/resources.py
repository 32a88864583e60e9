"""Resource instances for the current deployment, built from settings.

Values that are an environment variable as is (the user's file globs, a kubeconfig path) are given to the
resources as `dg.EnvVar`: the UI shows the variable's name, and Dagster resolves it when a run or tick starts.
Everything else (paths derived from PLATFORM_HOME, parsed numbers) is a plain value from `core.settings`.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from core.settings import PlatformSettings, artifact_cleanup_hours, env_var_as_is, training_max_wall_clock_seconds
from resources.artifacts import ArtifactStore
from resources.landing import LandingArea
from resources.launchers import LocalTorchrunLauncher, TrainingLauncher
from resources.warehouse import Warehouse


def from_env(name: str, value: str) -> str:
    """`dg.EnvVar(name)` where the setting is that variable as is, else the settings' value (a default)."""
    return dg.EnvVar(name) if env_var_as_is(name) else value


def build_launcher(settings: PlatformSettings) -> TrainingLauncher:
    if settings.training_launcher == "local":
        return LocalTorchrunLauncher(
            nnodes=settings.training_nnodes,
            nproc_per_node=settings.training_nproc_per_node,
            max_wall_clock_s=training_max_wall_clock_seconds(),
            artifacts_url=settings.artifacts_url,
            artifacts_root=str(settings.artifact_cache_dir) if settings.artifacts_url else "",
        )
    if settings.training_launcher == "kubernetes":
        from core.settings import kubernetes_launcher_config
        from resources.kubernetes.launcher import KubernetesTrainingLauncher

        config = kubernetes_launcher_config(settings)
        config["kubeconfig"] = from_env("K8S_KUBECONFIG", str(config["kubeconfig"]))
        return KubernetesTrainingLauncher(**config)
    raise ValueError(
        f"TRAINING_LAUNCHER={settings.training_launcher!r} is not available; use 'local' (torchrun on this machine) "
        "or 'kubernetes' (an Indexed Job on a cluster, see README 'Training on Kubernetes')"
    )


def build_warehouse(settings: PlatformSettings) -> Warehouse:
    if settings.warehouse_backend == "ducklake":
        return Warehouse(
            backend="ducklake",
            ducklake_catalog=from_env("DUCKLAKE_CATALOG", settings.ducklake_catalog),
            ducklake_data_path=from_env("DUCKLAKE_DATA_PATH", settings.ducklake_data_path),
        )
    return Warehouse(path=str(settings.warehouse_path))


def build_artifacts(settings: PlatformSettings) -> ArtifactStore:
    return ArtifactStore(
        root=settings.artifacts_url or str(settings.artifacts_dir),
        cache_dir=str(settings.artifact_cache_dir),
        **artifact_cleanup_hours(),
    )


def build_resources(settings: PlatformSettings) -> dict[str, Any]:
    return {
        "trainer": build_launcher(settings),
        "warehouse": build_warehouse(settings),
        "artifacts": build_artifacts(settings),
        "landing": LandingArea(
            root=str(settings.landing_dir),
            source=settings.data_source,
            synthetic_seed=settings.synthetic_seed,
            synthetic_titles=settings.synthetic_titles,
            synthetic_members=settings.synthetic_members,
            synthetic_start=settings.partition_start.isoformat(),
            synthetic_days=settings.synthetic_days,
            catalog_files=from_env("CATALOG_FILES", settings.catalog_files),
            interaction_files=from_env("INTERACTION_FILES", settings.interaction_files),
            catalog_mapping=settings.catalog_mapping,
            interaction_mapping=settings.interaction_mapping,
            catalog_encoding=settings.catalog_encoding,
            interaction_encoding=settings.interaction_encoding,
            conversation_encoding=settings.conversation_encoding,
        ),
    }
