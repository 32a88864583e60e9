"""The manifests under deploy/, read as the Kubernetes tests need them."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import kubernetes_launcher_config, load_settings
from resources.kubernetes import KubernetesTrainingLauncher

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.relative_to(REPO).as_posix(), doc))
    return out


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


def instance_yaml() -> str:
    return by_kind("ConfigMap")["dagster-instance"]["data"]["dagster.yaml"]


def platform_env() -> dict[str, str]:
    return by_kind("ConfigMap")["catalog-posttrain-env"]["data"]


def trainer_launcher(monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None) -> KubernetesTrainingLauncher:
    for key, value in (env or platform_env()).items():
        monkeypatch.setenv(key, value)
    return KubernetesTrainingLauncher(**kubernetes_launcher_config(load_settings()))
