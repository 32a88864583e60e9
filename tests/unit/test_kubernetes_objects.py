"""The objects KubernetesTrainingLauncher submits: strict validity against the official OpenAPI schemas
(Kubernetes 1.31 and the newest kubernetes-validate ships), Job/Service semantics, the restricted Pod
Security Standard, secrets by reference only, and the `render` command the README shows.
"""

import importlib.resources
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes.client import (
    V1Container,
    V1ContainerState,
    V1ContainerStateTerminated,
    V1ContainerStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodCondition,
    V1PodSpec,
    V1PodStatus,
)
from support.deploy_manifests import REPO
from support.k8s_policy import K8S_VERSIONS, pod_templates, restricted_violations, validate_strict

from core.settings import load_settings
from dagster_project.resources import build_launcher
from resources.kubernetes import (
    COMPLETION_INDEX_ANNOTATION,
    GPU_RESOURCE,
    JOB_LABEL,
    K8sConfigError,
    KubernetesTrainingLauncher,
    TrainingJobSpec,
    check_image_reference,
    label_value,
    pod_failure_action,
    to_dict,
)
from resources.kubernetes.cli import main
from training import k8s_node
from training.k8s_node import PEER_LOST_EXIT_CODE

pytestmark = pytest.mark.kubernetes

IMAGE = "registry.example.com/catalog-posttrain:0.1.0"
README_ARGS = ["render", "--nodes", "2", "--procs-per-node", "8", "--gpus-per-node", "8", "--image", IMAGE]
MOUNT = "/platform/artifacts"


def render(capsys: pytest.CaptureFixture[str], args: list[str]) -> list[dict[str, Any]]:
    assert main(args) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def spec(**overrides: Any) -> TrainingJobSpec:
    base: dict[str, Any] = {
        "name": "sft-abc12345-xyz01",
        "namespace": "catalog-posttrain",
        "image": "registry.example.com/catalog-posttrain:0.1.0",
        "nodes": 2,
        "procs_per_node": 1,
        "config_path": f"{MOUNT}/trained_checkpoint/.tmp-run-1/train_config.json",
    }
    return TrainingJobSpec(**{**base, **overrides})


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_readme_render_command_prints_objects_that_validate_strictly(
    capsys: pytest.CaptureFixture[str], version: str
) -> None:
    service, job = render(capsys, README_ARGS)
    assert (service["kind"], job["kind"]) == ("Service", "Job")
    validate_strict(service, version)
    validate_strict(job, version)
    container = container_of(job)
    assert container["image"] == IMAGE
    assert container["resources"]["limits"][GPU_RESOURCE] == "8"
    assert container["args"][container["args"].index("--nproc-per-node") + 1] == "8"


SHAPES = [
    {"nodes": 1},
    {"nodes": 4, "procs_per_node": 8, "gpus_per_node": 8, "cpu": "96", "memory": "1000Gi", "shm_size": "64Gi"},
    {
        "secret_env": {"HF_TOKEN": "hf-credentials/token", "WANDB_API_KEY": "wandb/api-key"},
        "env": {"NCCL_DEBUG": "WARN"},
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": (
            {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"},
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": "60",
            },
        ),
        "image_pull_secrets": ("registry-credentials",),
        "priority_class": "training-high",
        "service_account": "catalog-posttrain-trainer",
        "labels": {"dagster/run-id": "3f2c9a71-1111-2222-3333-444455556666", "dagster/asset": "a/b/c"},
        "annotations": {"dagster/asset-key": "a/b/c"},
    },
]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=["one-node", "4x8-gpus", "everything-set"])
def test_every_launcher_shape_validates_strictly(shape: dict[str, Any], version: str) -> None:
    objects = spec(**shape).objects()
    for obj in objects:
        validate_strict(obj, version)
    for where, pod in pod_templates(objects[1]):
        assert restricted_violations(pod) == [], where


def test_strict_validation_rejects_what_the_api_server_would_refuse() -> None:
    job = spec().job()
    container_of(job)["gpus"] = 8  # not a Container field
    with pytest.raises(kubernetes_validate.ValidationError, match="gpus"):
        validate_strict(job, K8S_VERSIONS[0])
    job = spec().job()
    job["spec"]["completionMode"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strict(job, K8S_VERSIONS[-1])


def test_schemas_are_bundled_and_validation_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    for version in K8S_VERSIONS:
        assert (bundled / f"v{version}-local-strict" / "job-batch-v1.json").is_file()

    def no_network(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("schema validation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for version in K8S_VERSIONS:
        for obj in spec().objects():
            validate_strict(obj, version)


def test_job_and_service_fit_together_for_indexed_rendezvous() -> None:
    s = spec(nodes=3, procs_per_node=4, gpus_per_node=4)
    service, job = s.objects()
    js, pod = job["spec"], job["spec"]["template"]["spec"]
    assert js["completionMode"] == "Indexed" and js["completions"] == js["parallelism"] == 3
    assert js["backoffLimit"] == 6 and js["activeDeadlineSeconds"] > 0 and js["podReplacementPolicy"] == "Failed"
    assert pod["restartPolicy"] == "Never" and pod["subdomain"] == service["metadata"]["name"]
    # headless, publishes addresses before readiness, selects exactly this Job's pods
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    selector = service["spec"]["selector"]
    assert selector == {JOB_LABEL: s.name}
    assert all(job["spec"]["template"]["metadata"]["labels"][k] == v for k, v in selector.items())
    # the entry point waits for pod 0's stable name, then runs torchrun with the node rank = completion index
    c = container_of(job)
    pod0 = f"{s.name}-0.{s.name}.catalog-posttrain.svc.cluster.local"
    assert c["command"][:3] == ["python", "-m", "training.k8s_node"]
    assert c["command"][c["command"].index("--wait-for") + 1] == pod0
    args = c["args"]
    assert args[0] == "torchrun" and args[args.index("--nnodes") + 1] == "3"
    assert args[args.index("--node-rank") + 1] == "$(JOB_COMPLETION_INDEX)"
    assert args[args.index("--rdzv-endpoint") + 1] == f"{pod0}:29500"
    own = args[args.index("--local-addr") + 1]
    assert own == f"{s.name}-$(JOB_COMPLETION_INDEX).{s.name}.catalog-posttrain.svc.cluster.local"
    assert args[-5:] == ["-m", "training.sft", "--config", s.config_path, "--resume"]
    assert args[args.index("--max-restarts") + 1] == "0"
    env = {e["name"]: e for e in c["env"]}
    # $(JOB_COMPLETION_INDEX) expands only for a variable the container declares
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"
    )
    assert env["OMP_NUM_THREADS"]["value"] == "1"  # 4 CPUs / 4 processes


def test_resources_are_guaranteed_and_gpus_requested_only_when_asked() -> None:
    cpu_job = spec().job()
    res = container_of(cpu_job)["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "4", "memory": "16Gi"}
    assert "tolerations" not in cpu_job["spec"]["template"]["spec"]
    gpu_job = spec(procs_per_node=8, gpus_per_node=8).job()
    res = container_of(gpu_job)["resources"]
    assert res["requests"] == res["limits"] and res["limits"][GPU_RESOURCE] == "8"
    tolerations = gpu_job["spec"]["template"]["spec"]["tolerations"]
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_pod_defaults_fit_the_restricted_pod_security_standard() -> None:
    job = spec(gpus_per_node=1).job()
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    mounts = {m["name"]: m["mountPath"] for m in container_of(job)["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm" and mounts["artifacts"] == MOUNT
    assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == "catalog-posttrain-artifacts"
    # the checker itself catches what the restricted profile forbids
    broken = spec().job()["spec"]["template"]["spec"]
    broken["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    broken["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    broken["hostNetwork"] = True
    assert len(restricted_violations(broken)) == 3


def test_secrets_reach_pods_only_by_reference() -> None:
    job = spec(secret_env={"HF_TOKEN": "hf-credentials/token"}).job()
    env = {e["name"]: e for e in container_of(job)["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-credentials", "key": "token"}},
    }
    with pytest.raises(K8sConfigError, match=r"env HF_TOKEN looks like a secret: give it as secret_env"):
        spec(env={"HF_TOKEN": "hf_abc"}).job()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"procs_per_node": 8, "gpus_per_node": 4}, "procs_per_node=8 exceeds gpus_per_node=4"),
        ({"memory": "16GB"}, "memory='16GB' is not a Kubernetes quantity"),
        ({"image": ""}, "image is empty"),
        ({"config_path": "/elsewhere/train_config.json"}, "is not on the shared artifact volume"),
        ({"name": "SFT_Run"}, "job name 'SFT_Run' is not a DNS-1123 label"),
        ({"secret_env": {"HF_TOKEN": "hf-credentials"}}, "must be 'secret-name/key'"),
        ({"run_as_user": 0}, "run_as_user must be a non-root uid"),
        # a Job that outlives its launcher holds its nodes until this deadline: never unbounded in practice
        ({"active_deadline_seconds": 0}, "active_deadline_seconds=0 (K8S_ACTIVE_DEADLINE_SECONDS) must be between"),
        ({"active_deadline_seconds": 30 * 86400}, "(K8S_ACTIVE_DEADLINE_SECONDS) must be between 60 and 604800"),
        ({"rdzv_join_timeout_seconds": 5}, "rdzv_join_timeout_seconds=5 (K8S_RDZV_JOIN_TIMEOUT_SECONDS) must be"),
        # image references as the kubelet parses them; a digest is sha256 and 64 lowercase hex digits
        ({"image": "registry.example.com/cp@sha256:abc"}, "the digest 'sha256:abc' must be 'sha256:' followed by 64"),
        ({"image": "registry.example.com/cp@md5:" + "a" * 32}, "the digest 'md5:"),
        ({"image": "registry.example.com/cp@sha256:" + "A" * 64}, "64 lowercase hex digits"),
        ({"image": "registry.example.com/Catalog:1"}, "the repository path component 'Catalog' must be lowercase"),
        ({"image": "IMAGE"}, "the repository path component 'IMAGE' must be lowercase"),
        ({"image": "registry.example.com/cp:-1"}, "the tag '-1' must be"),
        ({"image": "registry.example.com/cp:1 "}, "it is empty or contains whitespace"),
        ({"image": "bad_host.example.com:5000/cp:1"}, "the registry 'bad_host.example.com:5000' is not a host name"),
    ],
)
def test_bad_settings_name_the_setting_and_the_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(K8sConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec(**overrides).job()


DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "image",
    [
        f"registry.example.com/catalog-posttrain@{DIGEST}",
        f"registry.example.com/catalog-posttrain:0.1.0@{DIGEST}",  # the tag is informational once pinned
        f"localhost:5000/team/catalog-posttrain@{DIGEST}",
        f"[fd00::1]:5000/catalog-posttrain@{DIGEST}",
        "REGISTRY/catalog-posttrain:0.1.0",  # an upper-case first part is a registry host, as for the kubelet
        "catalog-posttrain:1",
        "ghcr.io/org/sub.name__x/catalog-posttrain:v1.2.3-rc_1",
    ],
)
def test_images_pinned_by_digest_and_other_valid_references_are_accepted(image: str) -> None:
    assert check_image_reference(image) == image
    job = spec(image=image).job()
    assert container_of(job)["image"] == image
    for version in K8S_VERSIONS:
        validate_strict(job, version)


def test_render_runs_as_a_module_of_the_package() -> None:
    """The documented command line, in a fresh interpreter: `python -m resources.kubernetes render`."""
    done = subprocess.run(
        [sys.executable, "-m", "resources.kubernetes", "render", "--image", IMAGE, "--name", "sft-cli-xxxxx"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    kinds = [(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(done.stdout)]
    assert kinds == [("Service", "sft-cli-xxxxx"), ("Job", "sft-cli-xxxxx")]


def test_render_refuses_a_bad_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--image", IMAGE, "--procs-per-node", "8", "--gpus-per-node", "4"]) == 2
    assert "procs_per_node=8 exceeds gpus_per_node=4" in capsys.readouterr().err


def test_label_values_are_made_valid() -> None:
    assert label_value("a/b c") == "a_b_c"
    assert len(label_value("x" * 100)) == 63
    assert label_value("__ASSET_JOB") == "ASSET_JOB"


def _failed_pod(exit_code: int, disrupted: bool = False) -> dict[str, Any]:
    pod = V1Pod(
        metadata=V1ObjectMeta(name="p"),
        spec=V1PodSpec(containers=[V1Container(name="trainer")]),
        status=V1PodStatus(
            phase="Failed",
            conditions=[V1PodCondition(type="DisruptionTarget", status="True", reason="PreemptionByScheduler")]
            if disrupted
            else [],
            container_statuses=[
                V1ContainerStatus(
                    name="trainer",
                    ready=False,
                    restart_count=0,
                    image="i",
                    image_id="",
                    state=V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=exit_code)),
                )
            ],
        ),
    )
    return to_dict(pod)


def test_pod_failure_policy_retries_disruptions_and_lost_peers_and_fails_code_errors() -> None:
    policy = spec().pod_failure_policy()
    assert pod_failure_action(policy, _failed_pod(137, disrupted=True)) == "Ignore"  # preempted: not counted
    assert pod_failure_action(policy, _failed_pod(PEER_LOST_EXIT_CODE)) == "Count"
    assert pod_failure_action(policy, _failed_pod(1)) == "FailJob"
    assert pod_failure_action(policy, _failed_pod(137)) == "FailJob"  # OOM-killed without a disruption
    assert pod_failure_action(policy, _failed_pod(0)) is None  # exit code 0 never matches: default handling


def test_entry_point_exit_codes_match_the_policy() -> None:
    # The codes are defined once, in the entry point; the policy counts a lost peer and fails on a DNS timeout.
    policy = spec().pod_failure_policy()
    assert pod_failure_action(policy, _failed_pod(k8s_node.PEER_LOST_EXIT_CODE)) == "Count"
    assert pod_failure_action(policy, _failed_pod(k8s_node.DNS_TIMEOUT_EXIT_CODE)) == "FailJob"


def test_training_launcher_kubernetes_is_configuration_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLATFORM_HOME", str(tmp_path))
    monkeypatch.setenv("TRAINING_LAUNCHER", "kubernetes")
    monkeypatch.delenv("K8S_IMAGE", raising=False)
    with pytest.raises(ValueError, match="TRAINING_LAUNCHER=kubernetes needs K8S_IMAGE"):
        build_launcher(load_settings())
    monkeypatch.setenv("K8S_IMAGE", "registry.example.com/catalog-posttrain:0.1.0")
    monkeypatch.setenv("TRAINING_NNODES", "4")
    monkeypatch.setenv("TRAINING_NPROC_PER_NODE", "8")
    monkeypatch.setenv("K8S_GPUS_PER_NODE", "8")
    monkeypatch.setenv("K8S_SECRET_ENV", '{"HF_TOKEN": "hf-credentials/token"}')
    monkeypatch.setenv("K8S_NODE_SELECTOR", '{"pool": "gpu"}')
    launcher = build_launcher(load_settings())
    assert isinstance(launcher, KubernetesTrainingLauncher)
    assert launcher.world_size == 32 and launcher.gpus_per_node == 8
    assert launcher.artifacts_mount_path == str(tmp_path.resolve() / "artifacts")  # PLATFORM_HOME's artifacts
    job = launcher.job_spec("sft-x-abcde", f"{launcher.artifacts_mount_path}/t/train_config.json").job()
    for version in K8S_VERSIONS:
        validate_strict(job, version)
    monkeypatch.setenv("K8S_NODE_SELECTOR", "pool=gpu")
    with pytest.raises(ValueError, match="K8S_NODE_SELECTOR"):
        build_launcher(load_settings())


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_pods_of_an_object_store_deployment_mount_no_volume_claim_and_know_where_to_sync(version: str) -> None:
    """With ARTIFACTS_URL the artifacts path is an emptyDir mirror; the pods are told the store and the config."""
    from training.artifact_sync import ROOT_ENV, URL_ENV
    from training.k8s_node import CONFIG_KEY_ENV

    job = spec(
        artifacts_url="s3://team/platform", config_key="trained_checkpoint/.tmp-run-x/config-1", gpus_per_node=1
    ).job()
    validate_strict(job, version)
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["artifacts"] == {"name": "artifacts", "emptyDir": {"sizeLimit": "200Gi"}}
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    env = {e["name"]: e.get("value") for e in container_of(job)["env"]}
    assert env[URL_ENV] == "s3://team/platform" and env[ROOT_ENV] == MOUNT
    assert env[CONFIG_KEY_ENV] == "trained_checkpoint/.tmp-run-x/config-1"
    with pytest.raises(K8sConfigError, match="config_key is empty"):
        spec(artifacts_url="s3://team/platform").job()
    with pytest.raises(K8sConfigError, match="must be an s3://bucket/prefix URL"):
        spec(artifacts_url="gs://team/platform", config_key="k").job()
