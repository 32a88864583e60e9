"""deploy/: every Kubernetes file validates strictly (1.31 and the newest schemas kubernetes-validate ships),
pods meet the restricted Pod Security Standard, RBAC grants the launcher exactly the calls it makes,
names resolve across files, and the Dockerfile builds the image the manifests and the launcher expect.
(No container engine here: the image itself is not built by these tests.)
"""

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_policy import K8S_VERSIONS, pod_templates, restricted_violations, validate_strict
from test_training_helpers import REPO

from dagster_project.settings import kubernetes_launcher_config, load_settings
from resources.kubernetes_launcher import KubernetesTrainingLauncher

DEPLOY = REPO / "deploy"
# The Kubernetes API calls the training launcher makes -> the permission each needs.
PERMISSION = {
    "create_namespaced_job": ("batch", "jobs", "create"),
    "delete_namespaced_job": ("batch", "jobs", "delete"),
    "list_namespaced_job": ("batch", "jobs", "list"),
    "read_namespaced_job_status": ("batch", "jobs/status", "get"),
    "list_namespaced_pod": ("", "pods", "list"),
    "read_namespaced_pod_log": ("", "pods/log", "get"),
    "create_namespaced_service": ("", "services", "create"),
    "delete_namespaced_service": ("", "services", "delete"),
    "list_namespaced_event": ("", "events", "list"),
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.relative_to(REPO).as_posix(), doc))
    return out


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


def test_deploy_holds_the_deployment_rbac_and_storage() -> None:
    kinds = {doc["kind"] for _, doc in documents()}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "ConfigMap"} <= kinds
    assert {"Deployment", "StatefulSet", "Service", "NetworkPolicy"} <= kinds
    assert (DEPLOY / "Dockerfile").is_file()


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_file_in_deploy_validates_strictly(version: str) -> None:
    docs = documents()
    assert len(docs) >= 24  # incl. the NetworkPolicies and the webserver's account, Role and RoleBinding
    for where, doc in docs:
        try:
            validate_strict(doc, version)
        except Exception as exc:  # name the file and object in the failure
            raise AssertionError(f"{where}: {doc['kind']}/{doc['metadata']['name']}: {exc}") from exc


def test_every_pod_meets_the_restricted_pod_security_standard() -> None:
    namespace = by_kind("Namespace")["catalog-posttrain"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = [(f"{where}: {w}", pod) for where, doc in documents() for w, pod in pod_templates(doc)]
    assert len(pods) == 4
    for where, pod in pods:
        assert restricted_violations(pod) == [], where
        for c in pod["containers"]:
            res = c["resources"]
            assert res["requests"] == res["limits"], f"{where}: requests != limits"
            for e in c.get("env", []):
                assert "value" in e or "secretKeyRef" in e.get("valueFrom", {}) or "fieldRef" in e.get("valueFrom", {})
                if re.search("PASSWORD|TOKEN|SECRET", e["name"]):
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{where}: {e['name']} is inline"
    # the pods the K8sRunLauncher creates get the same restrictions through the instance config
    launcher = yaml.safe_load(by_kind("ConfigMap")["dagster-instance"]["data"]["dagster.yaml"])["run_launcher"]
    run_pod = launcher["config"]["run_k8s_config"]
    pod = {**run_pod["pod_spec_config"], "containers": [{"name": "run", **run_pod["container_config"]}]}
    assert restricted_violations(pod) == []


def test_the_training_launcher_role_grants_exactly_the_calls_it_makes() -> None:
    source = "".join((REPO / "resources" / f).read_text() for f in ("k8s_watch.py", "kubernetes_launcher.py"))
    used = set(re.findall(r"\.(\w+_namespaced_\w+)\(", source))
    assert used == set(PERMISSION), f"update PERMISSION and deploy/k8s/10-rbac.yaml for {used ^ set(PERMISSION)}"
    role = by_kind("Role")["catalog-posttrain-training-launcher"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == set(PERMISSION.values())
    binding = by_kind("RoleBinding")["catalog-posttrain-training-launcher"]
    run_account = binding["subjects"][0]["name"]
    instance = yaml.safe_load(by_kind("ConfigMap")["dagster-instance"]["data"]["dagster.yaml"])
    assert instance["run_launcher"]["config"]["service_account_name"] == run_account  # runs launch training
    trainer = by_kind("ServiceAccount")["catalog-posttrain-trainer"]
    assert trainer["automountServiceAccountToken"] is False
    assert not any(
        s["name"] == "catalog-posttrain-trainer" for b in by_kind("RoleBinding").values() for s in b["subjects"]
    )


def test_names_referenced_across_files_exist() -> None:
    config_maps, claims = set(by_kind("ConfigMap")), set(by_kind("PersistentVolumeClaim"))
    accounts, services = set(by_kind("ServiceAccount")), set(by_kind("Service"))
    user_secrets = {"dagster-postgresql"}  # created by the user (40-postgres.yaml says how); never committed
    assert not by_kind("Secret"), "no secret values in deploy/"
    for _where, doc in documents():
        for w, pod in pod_templates(doc):
            assert pod.get("serviceAccountName", "default") in accounts | {"default"}, w
            for volume in pod.get("volumes", []):
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in config_maps, w
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims, w
            for c in pod["containers"]:
                for source in c.get("envFrom", []):
                    assert source["configMapRef"]["name"] in config_maps, w
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] in user_secrets, w
    instance = yaml.safe_load(by_kind("ConfigMap")["dagster-instance"]["data"]["dagster.yaml"])
    cfg = instance["run_launcher"]["config"]
    assert cfg["instance_config_map"] in config_maps and set(cfg["env_config_maps"]) <= config_maps
    assert cfg["postgres_password_secret"] in user_secrets
    assert instance["storage"]["postgres"]["postgres_db"]["hostname"] in services
    for volume in cfg["run_k8s_config"]["pod_spec_config"]["volumes"]:
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims
        else:
            assert set(volume) == {"name", "emptyDir"}, volume
    workspace = yaml.safe_load(by_kind("ConfigMap")["dagster-workspace"]["data"]["workspace.yaml"])
    assert workspace["load_from"][0]["grpc_server"]["host"] in services


def test_the_platform_settings_configmap_yields_valid_trainer_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    env = by_kind("ConfigMap")["catalog-posttrain-env"]["data"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    launcher = KubernetesTrainingLauncher(**kubernetes_launcher_config(settings))
    assert launcher.service_account in by_kind("ServiceAccount")
    assert launcher.artifacts_pvc in by_kind("PersistentVolumeClaim")
    assert Path(launcher.artifacts_mount_path) == settings.artifacts_dir  # same path in run workers and trainers
    job = launcher.job_spec("sft-abc12345-xyz01", f"{launcher.artifacts_mount_path}/x/train_config.json").job()
    for version in K8S_VERSIONS:
        validate_strict(job, version)
    assert restricted_violations(job["spec"]["template"]["spec"]) == []
    # the run workers mount the artifacts claim at that same path
    instance = yaml.safe_load(by_kind("ConfigMap")["dagster-instance"]["data"]["dagster.yaml"])
    mounts = instance["run_launcher"]["config"]["run_k8s_config"]["container_config"]["volumeMounts"]
    assert {"name": "artifacts", "mountPath": launcher.artifacts_mount_path} in mounts


def test_dockerfile_builds_the_image_the_manifests_expect() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert "USER 1000:1000" in lines  # = runAsUser / fsGroup in deploy/k8s and the trainer pods
    assert KubernetesTrainingLauncher().run_as_user == 1000
    torch_at = next(i for i, ln in enumerate(lines) if "torch==${TORCH_VERSION}" in ln)
    project_at = next(i for i, ln in enumerate(lines) if 'pip install ".[deploy]"' in ln)
    assert torch_at < project_at  # torch pinned first, the project cannot pull another build
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "deploy" in project["project"]["optional-dependencies"]
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, re.M))
    assert set(packages) <= copied, f"the image lacks {set(packages) - copied}"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for package in packages:
        assert f"!{package}/**" in ignore
    assert re.search(r"ENV .*PATH=/opt/venv/bin", text, re.S)  # `python` and `torchrun` in the pod command
    assert "dagster_project.definitions" in text and (REPO / "dagster_project" / "definitions.py").is_file()
    # CPU trainer pods build inductor's and our C kernels on first use: the image carries a compiler.
    assert re.search(r"apt-get install [^\n]*\bgcc\b[^\n]*\bg\+\+", text)
    assert "kernels/*.c" in str(project["tool"]["setuptools"]["package-data"]["training"])
