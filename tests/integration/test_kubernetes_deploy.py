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
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from support.deploy_manifests import DEPLOY, REPO, by_kind, documents, instance_yaml, platform_env, trainer_launcher
from support.k8s_policy import K8S_VERSIONS, pod_templates, restricted_violations, validate_strict

from core.settings import kubernetes_launcher_config, load_settings
from resources.kubernetes import ACTIVE_DEADLINE_MAX_S, KubernetesTrainingLauncher, check_image_reference
from training.cpu import kernels as cpu_kernels

pytestmark = pytest.mark.kubernetes

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
    source = "".join(p.read_text() for p in sorted((REPO / "resources" / "kubernetes").glob("*.py")))
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
    # created by the user (40-postgres.yaml and 30-config.yaml say how); never committed
    user_secrets = {"dagster-postgresql", "catalog-posttrain-warehouse"}
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
                    if "secretRef" in source:
                        assert source["secretRef"]["name"] in user_secrets, w
                    else:
                        assert source["configMapRef"]["name"] in config_maps, w
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] in user_secrets, w
    instance = yaml.safe_load(by_kind("ConfigMap")["dagster-instance"]["data"]["dagster.yaml"])
    cfg = instance["run_launcher"]["config"]
    assert cfg["instance_config_map"] in config_maps and set(cfg["env_config_maps"]) <= config_maps
    assert cfg["postgres_password_secret"] in user_secrets
    assert set(cfg["env_secrets"]) <= user_secrets
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
    # Artifacts on the object store: trainer pods mirror the run workers' artifact cache, at the same path.
    assert launcher.artifacts_url == settings.artifacts_url and launcher.artifacts_url.startswith("s3://")
    assert Path(launcher.artifacts_mount_path) == settings.artifact_cache_dir
    secret_env = launcher.secret_env
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret_env)
    assert {ref.split("/")[0] for ref in secret_env.values()} == {"catalog-posttrain-warehouse"}
    job = launcher.job_spec(
        "sft-abc12345-xyz01", f"{launcher.artifacts_mount_path}/x/train_config.json", config_key="x/config-1"
    ).job()
    for version in K8S_VERSIONS:
        validate_strict(job, version)
    assert restricted_violations(job["spec"]["template"]["spec"]) == []
    # the run workers mount a local cache (not a shared claim) at that same path
    instance = yaml.safe_load(by_kind("ConfigMap")["dagster-instance"]["data"]["dagster.yaml"])
    run = instance["run_launcher"]["config"]["run_k8s_config"]
    mounts = {m["name"]: m["mountPath"] for m in run["container_config"]["volumeMounts"]}
    volumes = {v["name"]: v for v in run["pod_spec_config"]["volumes"]}
    [cache] = [name for name, path in mounts.items() if path == launcher.artifacts_mount_path]
    assert "emptyDir" in volumes[cache]


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


# ---- operations-grade defaults ---------------------------------------------------------------------------------


def test_a_training_job_holds_its_nodes_for_at_most_a_day_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replacement pod waiting alone, or a Job whose launcher is gone, keeps its GPU nodes until the deadline."""
    assert int(platform_env()["K8S_ACTIVE_DEADLINE_SECONDS"]) <= 86400
    for key in list(platform_env()):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("K8S_IMAGE", "registry.example.com/catalog-posttrain:0.1.0")
    assert kubernetes_launcher_config(load_settings())["active_deadline_seconds"] <= 86400  # the settings default
    assert KubernetesTrainingLauncher().active_deadline_seconds <= 86400
    job = (
        trainer_launcher(monkeypatch)
        .job_spec("sft-abc12345-xyz01", "/platform/artifact-cache/x/train_config.json", config_key="x/config-1")
        .job()
    )
    assert job["spec"]["activeDeadlineSeconds"] <= 86400


def test_the_instance_config_monitors_runs_and_passes_dagsters_own_schema(tmp_path: Path) -> None:
    """Validated by dagster's instance-config loader (`dagster_instance_config`), as `dagster-daemon` loads it.

    dagster-k8s is not installed here: the run_launcher section is checked as a configurable class
    (module/class/config); its K8sRunLauncher fields are checked by the other tests in this file.
    """
    (tmp_path / "dagster.yaml").write_text(instance_yaml())
    config, _ = dagster_instance_config(str(tmp_path))
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] is True
    assert 0 < monitoring["start_timeout_seconds"] <= 1800  # a run worker that never starts fails the run
    assert 0 < monitoring["cancel_timeout_seconds"] <= 900  # a run stuck canceling is marked canceled
    assert monitoring["max_resume_run_attempts"] >= 1  # K8sRunLauncher resumes a run whose worker died
    assert 0 < monitoring["poll_interval_seconds"] <= 120
    # the runtime limit of any run stays above a training Job's own deadline plus the launcher's grace
    deadline = int(platform_env()["K8S_ACTIVE_DEADLINE_SECONDS"])
    assert monitoring["max_runtime_seconds"] >= deadline + 300 + 3600
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    # the check is real: a misspelt key is refused by the same loader
    (tmp_path / "dagster.yaml").write_text(instance_yaml().replace("start_timeout_seconds", "start_timeout_secs"))
    with pytest.raises(DagsterInvalidConfigError, match="start_timeout_secs"):
        dagster_instance_config(str(tmp_path))


def grants(account: str) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) that `account` gets through the RoleBindings in deploy/."""
    roles = by_kind("Role")
    assert not by_kind("ClusterRoleBinding")
    out: set[tuple[str, str, str]] = set()
    for binding in by_kind("RoleBinding").values():
        if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"]):
            for rule in roles[binding["roleRef"]["name"]]["rules"]:
                out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def test_the_unauthenticated_webserver_runs_as_an_account_that_cannot_create_anything() -> None:
    pods = {name: d["spec"]["template"]["spec"] for name, d in by_kind("Deployment").items()}
    webserver = pods["catalog-posttrain-webserver"]["serviceAccountName"]
    daemon = pods["catalog-posttrain-daemon"]["serviceAccountName"]
    assert webserver != daemon and webserver in by_kind("ServiceAccount")
    allowed = grants(webserver)
    assert not [g for g in allowed if g[2] in ("create", "update", "patch", "*")], allowed
    # only what K8sRunLauncher.terminate needs behind the "Terminate" button
    assert ("batch", "jobs", "delete") in allowed
    assert allowed <= {("batch", "jobs", "delete"), ("", "pods", "list"), ("", "pods", "delete")}
    assert ("batch", "jobs", "create") in grants(daemon)  # the daemon launches the runs
    assert "NO authentication" in (DEPLOY / "k8s" / "50-dagster.yaml").read_text()


def _env_of(container: dict[str, Any], pod_env: dict[str, str]) -> dict[str, str]:
    """The container's environment: the image's ENV, its envFrom ConfigMaps, then its own env values."""
    image = {"DAGSTER_HOME": "/opt/dagster/dagster_home", "PLATFORM_HOME": "/platform"}  # deploy/Dockerfile
    env = {**image, **pod_env}
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _writable_locations(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, dagster: bool) -> dict[str, str]:
    """Where the code and its libraries write, resolved as they resolve it in that environment.

    `dagster`: a Dagster process (webserver, daemon, code server, run worker) also writes under
    DAGSTER_HOME (compute logs, local artifact storage); the trainer only speaks Dagster Pipes.
    """
    home = env.get("HOME", "/tmp")  # the image's user 1000 has its home at /tmp (deploy/Dockerfile)
    with monkeypatch.context() as m:
        for key in ("POSTTRAIN_KERNEL_CACHE", "XDG_CACHE_HOME", "HOME"):
            m.delenv(key, raising=False)
        if "POSTTRAIN_KERNEL_CACHE" in env:
            m.setenv("POSTTRAIN_KERNEL_CACHE", env["POSTTRAIN_KERNEL_CACHE"])
            kernel_cache = str(cpu_kernels._cache_dir())
        else:  # _cache_dir() would create the fallback on this machine: read the same rule off its code
            kernel_cache = f"{env.get('XDG_CACHE_HOME', home + '/.cache')}/posttrain/kernels"
    out = {
        "tempfile (TMPDIR)": env.get("TMPDIR", "/tmp"),
        "HOME": home,
        "XDG_CACHE_HOME (Hugging Face, pip)": env.get("XDG_CACHE_HOME", f"{home}/.cache"),
        "MPLCONFIGDIR": env.get("MPLCONFIGDIR", f"{home}/.config/matplotlib"),
        "TORCHINDUCTOR_CACHE_DIR": env.get("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_app"),
        "TRITON_CACHE_DIR": env.get("TRITON_CACHE_DIR", f"{home}/.triton"),
        "POSTTRAIN_KERNEL_CACHE": kernel_cache,
    }
    if dagster:
        out["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    return out


def _unwritable(
    pod: dict[str, Any], container: dict[str, Any], env: dict[str, str], monkeypatch: Any, dagster: bool
) -> list[str]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    writable = [
        m["mountPath"].rstrip("/")
        for m in container.get("volumeMounts", [])
        if not m.get("readOnly")
        and not m.get("subPath")
        and set(volumes[m["name"]]) & {"emptyDir", "persistentVolumeClaim"}
    ]
    problems = []
    for what, path in _writable_locations(env, monkeypatch, dagster).items():
        if not any(path == w or path.startswith(w + "/") for w in writable):
            problems.append(f"{what}={path} is on the read-only root filesystem")
    return problems


def test_run_workers_and_trainers_have_limits_and_a_read_only_root_with_every_write_on_a_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = platform_env()
    launcher = yaml.safe_load(instance_yaml())["run_launcher"]["config"]
    run = launcher["run_k8s_config"]
    run_container = {"name": "run-worker", **run["container_config"]}
    run_pod = {**run["pod_spec_config"], "containers": [run_container]}
    trainer_pod = (
        trainer_launcher(monkeypatch)
        .job_spec("sft-abc12345-xyz01", "/platform/artifact-cache/x/c.json", config_key="x/config-1")
        .job()
    )
    trainer_pod = trainer_pod["spec"]["template"]["spec"]
    pods = [("run worker", run_pod, env), ("trainer", trainer_pod, {})]
    pods += [(f"Deployment/{n}", d["spec"]["template"]["spec"], env) for n, d in by_kind("Deployment").items()]
    for where, pod, pod_env in pods:
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            resources = container["resources"]
            assert resources["requests"] == resources["limits"] and {"cpu", "memory"} <= set(resources["limits"]), where
            container_env = _env_of(container, pod_env)
            if where == "run worker":
                container_env["DAGSTER_HOME"] = launcher["dagster_home"]  # the K8sRunLauncher sets it
            problems = _unwritable(pod, container, container_env, monkeypatch, dagster=where != "trainer")
            assert problems == [], where
    assert launcher["dagster_home"] == "/opt/dagster/dagster_home"
    assert run["pod_spec_config"]["terminationGracePeriodSeconds"] >= 60  # time to delete its training Job


def test_one_substitution_pins_every_image_of_ours_by_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented sed over deploy/k8s/*.yaml: the containers, DAGSTER_CURRENT_IMAGE and K8S_IMAGE all follow."""
    ours: set[str] = {platform_env()["K8S_IMAGE"]}
    for _, doc in documents():
        for _, pod in pod_templates(doc):
            for c in pod["containers"]:
                check_image_reference(c["image"], f"{doc['metadata']['name']} image")
                if not c["image"].startswith("postgres:"):
                    ours.add(c["image"])
                ours |= {e["value"] for e in c.get("env", []) if e["name"] == "DAGSTER_CURRENT_IMAGE"}
    assert len(ours) == 1, f"one image string everywhere, so one substitution pins them all: {ours}"
    placeholder = ours.pop()
    pinned = "registry.example.com/catalog-posttrain@sha256:" + "ab" * 32
    texts = {p: p.read_text().replace(placeholder, pinned) for p in sorted((DEPLOY / "k8s").glob("*.yaml"))}
    docs = [d for text in texts.values() for d in yaml.safe_load_all(text) if d]
    assert placeholder not in "".join(texts.values())
    for doc in docs:
        for version in K8S_VERSIONS:
            validate_strict(doc, version)
    env = next(d for d in docs if d["metadata"]["name"] == "catalog-posttrain-env")["data"]
    job = (
        trainer_launcher(monkeypatch, env)
        .job_spec("sft-abc12345-xyz01", "/platform/artifact-cache/x/c.json", config_key="x/config-1")
        .job()
    )
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == pinned


def test_absurd_deadlines_from_the_environment_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**platform_env(), "K8S_ACTIVE_DEADLINE_SECONDS": str(ACTIVE_DEADLINE_MAX_S + 1)}
    launcher = trainer_launcher(monkeypatch, env)
    with pytest.raises(Exception, match=r"\(K8S_ACTIVE_DEADLINE_SECONDS\) must be between 60 and 604800"):
        launcher.job_spec("sft-abc12345-xyz01", "/platform/artifact-cache/x/c.json", config_key="x/config-1").job()


def test_the_deployment_warehouse_is_a_ducklake_whose_catalog_database_postgres_creates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No warehouse file on a shared volume: the catalog is a database of the platform's PostgreSQL."""
    env = by_kind("ConfigMap")["catalog-posttrain-env"]["data"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.warehouse_backend == "ducklake" and settings.ducklake_data_path.startswith("s3://")
    conninfo = dict(part.split("=", 1) for part in settings.ducklake_catalog.split())
    assert conninfo["host"] in by_kind("Service") and "password" not in conninfo  # PGPASSWORD from the Secret
    init = by_kind("ConfigMap")["catalog-posttrain-postgresql-init"]["data"]
    assert any(f"CREATE DATABASE {conninfo['dbname']} " in sql for sql in init.values())
