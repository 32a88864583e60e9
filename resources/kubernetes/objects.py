"""The Kubernetes objects of one multi-node training run, as plain dicts (no cluster, no dagster).

One run = a batch/v1 Indexed Job (completions = parallelism = nodes) and a headless
Service that gives every pod a stable DNS name (`<job>-<index>.<service>.<ns>.svc.<domain>`).
Each pod runs `torchrun` (`--node-rank` = its completion index) with a c10d rendezvous hosted
on pod 0's name, through `training.k8s_node`, which first waits for that name to resolve
and afterwards turns torchrun's failure into an exit code the Job's podFailurePolicy reads:

- a disruption (the pod has the DisruptionTarget condition: preemption, eviction, a lost
  node) is ignored: the pod is replaced without counting toward backoffLimit;
- exit code 75 (`PEER_LOST_EXIT_CODE`: a surviving node whose peer went away) counts toward
  backoffLimit and the pod is replaced; every replacement resumes from the newest checkpoint
  on the shared artifact volume (`training.sft --resume`);
- any other non-zero exit (an error in the training code or its data) fails the Job at once.

`render_yaml` prints exactly these dicts; the launcher submits them (plus the Dagster Pipes
environment variables and the Service's ownerReference to the Job, known only at submit time).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

# The exit code of `training.k8s_node` (the container's entry point) that the podFailurePolicy counts.
from training.k8s_node import PEER_LOST_EXIT_CODE

CONTAINER = "trainer"
APP = "catalog-posttrain"
JOB_LABEL = f"{APP}/training-job"  # pods, Job and Service carry it; the Service selects on it
LINEAGE_LABEL = f"{APP}/lineage"  # the Dagster run's root run id: every attempt of one run shares it
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
GPU_RESOURCE = "nvidia.com/gpu"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRETISH = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
# Image references as container runtimes parse them (the distribution "reference" grammar).
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IMAGE_DOMAIN = re.compile(rf"^(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$")
_IMAGE_PATH = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_IMAGE_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

# Bounds of the training Job's wall-clock limit: a Job that outlives its launcher (or waits for a peer
# that never comes) holds its nodes until activeDeadlineSeconds, so it may not be unbounded in practice.
ACTIVE_DEADLINE_MIN_S = 60
ACTIVE_DEADLINE_MAX_S = 7 * 86400


class K8sConfigError(ValueError):
    """A launcher setting cannot produce valid objects; the message names the setting and the fix."""


def label_value(text: str) -> str:
    """`text` made into a valid label value (<= 63 chars of [A-Za-z0-9_.-], alphanumeric at both ends)."""
    value = _LABEL_VALUE_BAD.sub("_", text)[:63].strip("_.-")
    return value


def check_dns_label(name: str, what: str) -> str:
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise K8sConfigError(
            f"{what} {name!r} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)"
        )
    return name


def check_image_reference(image: str, setting: str = "image (K8S_IMAGE)") -> str:
    """`image` if a container runtime can pull it: [registry[:port]/]path[:tag][@sha256:<64 hex>].

    A malformed reference is only noticed by the kubelet (InvalidImageName) after the Job was created,
    and the pods then sit on their nodes until the Job's deadline; refusing it here costs nothing.
    """
    how = (
        "use registry.example.com/catalog-posttrain:0.1.0 or, pinned by digest, "
        "registry.example.com/catalog-posttrain@sha256:<64 hex digits>"
    )

    def bad(why: str) -> K8sConfigError:
        return K8sConfigError(f"{setting} {image!r} is not a valid image reference: {why}; {how}")

    if not image or image != image.strip() or any(ch.isspace() for ch in image):
        raise bad("it is empty or contains whitespace")
    name, at, digest = image.partition("@")
    if at and not _IMAGE_DIGEST.match(digest):
        raise bad(f"the digest {digest!r} must be 'sha256:' followed by 64 lowercase hex digits")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # a tag (a colon before the last slash is a registry port)
        name, tag = name[:colon], name[colon + 1 :]
        if not _IMAGE_TAG.match(tag):
            raise bad(f"the tag {tag!r} must be up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")
    parts = name.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        if not _IMAGE_DOMAIN.match(first):
            raise bad(f"the registry {first!r} is not a host name or address with an optional port")
        parts = parts[1:]
    for part in parts:
        if not _IMAGE_PATH.match(part):
            raise bad(
                f"the repository path component {part!r} must be lowercase letters and digits, "
                "separated by '.', '_', '__' or '-'"
            )
    if len(name) > 255:
        raise bad("the repository name is longer than 255 characters")
    return image


def cpu_count(quantity: str) -> float:
    """CPUs in a Kubernetes CPU quantity ('4', '3500m')."""
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@dataclass(frozen=True)
class TrainingJobSpec:
    """Everything that decides the objects of one run. `KubernetesTrainingLauncher` fills it from its config."""

    name: str  # Job and Service name; pod hostnames are `<name>-<index>`
    namespace: str
    image: str
    nodes: int
    procs_per_node: int
    config_path: str  # train_config.json on the shared artifact volume
    gpus_per_node: int = 0
    cpu: str = "4"
    memory: str = "16Gi"
    shm_size: str = "2Gi"  # /dev/shm (a memory emptyDir; counts toward the memory limit)
    tmp_size: str = "10Gi"  # /tmp emptyDir (HOME, torchrun logs): the root filesystem is read-only
    artifacts_pvc: str = "catalog-posttrain-artifacts"
    artifacts_mount_path: str = "/platform/artifacts"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    service_account: str = ""  # empty: the namespace's default account (its token is never mounted)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    priority_class: str = ""
    env: Mapping[str, str] = field(default_factory=dict)  # plain values, never secrets
    secret_env: Mapping[str, str] = field(default_factory=dict)  # NAME -> "secret-name/key" (secretKeyRef)
    labels: Mapping[str, str] = field(default_factory=dict)  # extra labels (Dagster run, asset)
    annotations: Mapping[str, str] = field(default_factory=dict)
    rdzv_port: int = 29500
    cluster_domain: str = "cluster.local"
    backoff_limit: int = -1  # -1: 2 x nodes (each lost node costs up to nodes - 1 counted peer failures)
    active_deadline_seconds: int = 86400
    ttl_seconds_after_finished: int = 86400  # a backstop when the launcher is gone; it deletes sooner
    dns_wait_seconds: int = 600
    rdzv_join_timeout_seconds: int = 600  # torchrun c10d join_timeout: how long a node waits for the others
    threads_per_process: int = 0  # OMP_NUM_THREADS; 0: CPUs / processes per node
    run_as_user: int = 1000
    termination_grace_seconds: int = 60

    # ---- derived names -------------------------------------------------------------------
    @property
    def service_name(self) -> str:
        return self.name

    def pod_hostname(self, index: int) -> str:
        return f"{self.name}-{index}"

    def pod_fqdn(self, index: int) -> str:
        return f"{self.pod_hostname(index)}.{self.service_name}.{self.namespace}.svc.{self.cluster_domain}"

    @property
    def rendezvous_host(self) -> str:
        return self.pod_fqdn(0)

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def effective_backoff_limit(self) -> int:
        return self.backoff_limit if self.backoff_limit >= 0 else 2 * self.nodes

    @property
    def omp_threads(self) -> int:
        if self.threads_per_process > 0:
            return self.threads_per_process
        return max(1, math.floor(cpu_count(self.cpu) / self.procs_per_node))

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        check_dns_label(self.name, "job name")
        check_dns_label(self.namespace, "namespace")
        if len(self.pod_hostname(self.nodes - 1)) > 63:
            raise K8sConfigError(f"job name {self.name!r} is too long for pod hostnames '<name>-<index>'")
        if self.nodes < 1 or self.procs_per_node < 1:
            raise K8sConfigError(f"nodes and procs_per_node must be >= 1, got {self.nodes} x {self.procs_per_node}")
        if self.gpus_per_node < 0:
            raise K8sConfigError(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if self.gpus_per_node and self.procs_per_node > self.gpus_per_node:
            raise K8sConfigError(
                f"procs_per_node={self.procs_per_node} exceeds gpus_per_node={self.gpus_per_node}: "
                "each trainer process needs its own GPU (set procs_per_node <= gpus_per_node)"
            )
        if not self.image:
            raise K8sConfigError("image is empty: set the trainer image built from deploy/Dockerfile (K8S_IMAGE)")
        check_image_reference(self.image)
        if not ACTIVE_DEADLINE_MIN_S <= self.active_deadline_seconds <= ACTIVE_DEADLINE_MAX_S:
            raise K8sConfigError(
                f"active_deadline_seconds={self.active_deadline_seconds} (K8S_ACTIVE_DEADLINE_SECONDS) must be between "
                f"{ACTIVE_DEADLINE_MIN_S} and {ACTIVE_DEADLINE_MAX_S} (7 days): Kubernetes stops the training Job "
                "after it, and until then the Job holds its nodes even with no launcher watching (default 86400 = 24 h)"
            )
        if not 60 <= self.rdzv_join_timeout_seconds <= 86400:
            raise K8sConfigError(
                f"rdzv_join_timeout_seconds={self.rdzv_join_timeout_seconds} (K8S_RDZV_JOIN_TIMEOUT_SECONDS) must be "
                "between 60 and 86400: it bounds how long a pod waits at the rendezvous for the other nodes "
                "(default 600)"
            )
        for what, value in (("cpu", self.cpu), ("memory", self.memory), ("shm_size", self.shm_size)):
            if not _QUANTITY.match(value):
                raise K8sConfigError(f"{what}={value!r} is not a Kubernetes quantity (e.g. '8', '500m', '32Gi')")
        if self.tmp_size and not _QUANTITY.match(self.tmp_size):
            raise K8sConfigError(f"tmp_size={self.tmp_size!r} is not a Kubernetes quantity (e.g. '10Gi')")
        if not self.artifacts_pvc:
            raise K8sConfigError(
                "artifacts_pvc is empty: training needs a shared ReadWriteMany volume for its checkpoints "
                "(K8S_ARTIFACTS_PVC)"
            )
        if not self.artifacts_mount_path.startswith("/"):
            raise K8sConfigError(f"artifacts_mount_path {self.artifacts_mount_path!r} must be an absolute path")
        if not self.config_path.startswith(self.artifacts_mount_path.rstrip("/") + "/"):
            raise K8sConfigError(
                f"the training config {self.config_path} is not on the shared artifact volume mounted at "
                f"{self.artifacts_mount_path}: pods could not read it (check K8S_ARTIFACTS_MOUNT_PATH)"
            )
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise K8sConfigError(f"image_pull_policy {self.image_pull_policy!r}: use Always, IfNotPresent or Never")
        if self.run_as_user <= 0:
            raise K8sConfigError("run_as_user must be a non-root uid (> 0): pods run under the restricted policy")
        for name, value in self.env.items():
            if not _ENV_NAME.match(name):
                raise K8sConfigError(f"env name {name!r} is not a valid environment variable name")
            if _SECRETISH.search(name):
                raise K8sConfigError(
                    f"env {name} looks like a secret: give it as secret_env {{'{name}': 'secret-name/key'}} "
                    "so the value stays in a Kubernetes Secret, not in the Job"
                )
            if not isinstance(value, str):
                raise K8sConfigError(f"env {name} must be a string, got {value!r}")
        for name, ref in self.secret_env.items():
            if not _ENV_NAME.match(name):
                raise K8sConfigError(f"secret_env name {name!r} is not a valid environment variable name")
            secret, _, key = ref.partition("/")
            if not secret or not key:
                raise K8sConfigError(f"secret_env {name}={ref!r} must be 'secret-name/key'")
            if len(secret) > 253 or not _DNS_SUBDOMAIN.match(secret):
                raise K8sConfigError(f"secret_env {name}: {secret!r} is not a valid Secret name")

    # ---- objects -------------------------------------------------------------------------
    def _labels(self) -> dict[str, str]:
        base = {
            "app.kubernetes.io/name": APP,
            "app.kubernetes.io/component": "trainer",
            "app.kubernetes.io/managed-by": "catalog-posttrain-launcher",
            JOB_LABEL: self.name,
        }
        extra = {k: label_value(v) for k, v in self.labels.items()}
        return {**extra, **base}

    def container_command(self) -> list[str]:
        return [
            "python",
            "-m",
            "training.k8s_node",
            "--wait-for",
            self.rendezvous_host,
            "--wait-seconds",
            str(self.dns_wait_seconds),
            "--",
        ]

    def container_args(self) -> list[str]:
        """torchrun with a c10d rendezvous hosted by pod 0 (kubelet expands $(JOB_COMPLETION_INDEX)).

        c10d orders the nodes by their address, here each pod's own stable name given as
        --local-addr (`<job>-<index>.<service>...`), so global rank 0 is always on pod 0 (whose log
        carries the Pipes messages) and the order is the same after every restart. --node-rank
        records the completion index too (torchrun itself uses it only for a static rendezvous).
        A node that joins late (a replacement pod) makes the running nodes restart their workers
        into a new round instead of joining a stale one. join_timeout bounds the wait for the other
        nodes: a pod left alone (its peer cannot be scheduled) exits with a rendezvous timeout, which
        counts as a lost peer (exit 75), so backoffLimit bounds the retries instead of the Job's deadline.
        """
        own_name = f"{self.name}-$(JOB_COMPLETION_INDEX).{self.service_name}.{self.namespace}.svc.{self.cluster_domain}"
        return [
            "torchrun",
            "--nnodes",
            str(self.nodes),
            "--nproc-per-node",
            str(self.procs_per_node),
            "--node-rank",
            "$(JOB_COMPLETION_INDEX)",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"{self.rendezvous_host}:{self.rdzv_port}",
            "--rdzv-id",
            self.name,
            "--rdzv-conf",
            f"join_timeout={self.rdzv_join_timeout_seconds}",
            "--local-addr",
            own_name,
            "--max-restarts",
            "0",  # a failed worker ends the pod: the Job's podFailurePolicy decides (retry or fail)
            "--tee",
            "1",  # stdout prefixed per rank; stderr (tracebacks, Pipes messages) passes through unchanged
            "-m",
            "training.sft",
            "--config",
            self.config_path,
            "--resume",
        ]

    def container_env(self) -> list[dict[str, Any]]:
        env: list[dict[str, Any]] = [
            # Set by the Job controller too; explicit here so $(JOB_COMPLETION_INDEX) expands in args.
            {
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}},
            },
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "OMP_NUM_THREADS", "value": str(self.omp_threads)},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            # The root filesystem is read-only: home and the compile caches (inductor, triton, our C kernels)
            # live on the /tmp emptyDir.
            {"name": "HOME", "value": "/tmp"},
            {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/tmp/torchinductor"},
            {"name": "TRITON_CACHE_DIR", "value": "/tmp/triton"},
            {"name": "POSTTRAIN_KERNEL_CACHE", "value": "/tmp/posttrain-kernels"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
        ]
        env += [{"name": k, "value": v} for k, v in sorted(self.env.items())]
        for name, ref in sorted(self.secret_env.items()):
            secret, _, key = ref.partition("/")
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
        return env

    def resources(self) -> dict[str, dict[str, str]]:
        amounts = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus_per_node:
            amounts[GPU_RESOURCE] = str(self.gpus_per_node)
        return {"requests": dict(amounts), "limits": dict(amounts)}  # requests == limits: Guaranteed QoS

    def pod_template(self) -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": CONTAINER,
            "image": self.image,
            "imagePullPolicy": self.image_pull_policy,
            "command": self.container_command(),
            "args": self.container_args(),
            "env": self.container_env(),
            "ports": [{"name": "rdzv", "containerPort": self.rdzv_port, "protocol": "TCP"}],
            "resources": self.resources(),
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "privileged": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "runAsUser": self.run_as_user,
                "runAsGroup": self.run_as_user,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumeMounts": [
                {"name": "artifacts", "mountPath": self.artifacts_mount_path},
                {"name": "dshm", "mountPath": "/dev/shm"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        tmp: dict[str, Any] = {"sizeLimit": self.tmp_size} if self.tmp_size else {}
        spec: dict[str, Any] = {
            "restartPolicy": "Never",  # required by podFailurePolicy; the Job replaces failed pods
            "subdomain": self.service_name,  # hostname <name>-<index> (set by the Job controller) + this = DNS
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": self.termination_grace_seconds,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": self.run_as_user,
                "runAsGroup": self.run_as_user,
                "fsGroup": self.run_as_user,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [
                {"name": "artifacts", "persistentVolumeClaim": {"claimName": self.artifacts_pvc}},
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": self.shm_size}},
                {"name": "tmp", "emptyDir": tmp},
            ],
        }
        if self.service_account:
            spec["serviceAccountName"] = self.service_account
        if self.node_selector:
            spec["nodeSelector"] = dict(self.node_selector)
        tolerations = [dict(t) for t in self.tolerations]
        for t in tolerations:  # config systems may hand numbers over as strings
            if "tolerationSeconds" in t:
                t["tolerationSeconds"] = int(t["tolerationSeconds"])
        if self.gpus_per_node and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
            tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        if tolerations:
            spec["tolerations"] = tolerations
        if self.priority_class:
            spec["priorityClassName"] = self.priority_class
        if self.image_pull_secrets:
            spec["imagePullSecrets"] = [{"name": s} for s in self.image_pull_secrets]
        return {"metadata": {"labels": self._labels(), "annotations": dict(self.annotations)}, "spec": spec}

    def pod_failure_policy(self) -> dict[str, Any]:
        return {
            "rules": [
                # A disruption (preemption, eviction, node drain, a lost node): replace, don't count.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                # A surviving node whose peer went away: replace, counted toward backoffLimit.
                {
                    "action": "Count",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [PEER_LOST_EXIT_CODE]},
                },
                # Anything else the trainer exits with is an error in the code or data: fail fast.
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [PEER_LOST_EXIT_CODE]},
                },
            ]
        }

    def job(self) -> dict[str, Any]:
        self.validate()
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self._labels(),
                "annotations": dict(self.annotations),
            },
            "spec": {
                "completionMode": "Indexed",
                "completions": self.nodes,
                "parallelism": self.nodes,
                "backoffLimit": self.effective_backoff_limit,
                "podFailurePolicy": self.pod_failure_policy(),
                "podReplacementPolicy": "Failed",  # a replacement starts only once the old pod is gone
                "activeDeadlineSeconds": self.active_deadline_seconds,
                "ttlSecondsAfterFinished": self.ttl_seconds_after_finished,
                "template": self.pod_template(),
            },
        }

    def service(self) -> dict[str, Any]:
        self.validate()
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": self.service_name,
                "namespace": self.namespace,
                "labels": self._labels(),
                "annotations": dict(self.annotations),
            },
            "spec": {
                "clusterIP": "None",  # headless: DNS records per pod, no virtual IP
                "publishNotReadyAddresses": True,  # records exist before readiness, so rendezvous can start
                "selector": {JOB_LABEL: self.name},
                "ports": [{"name": "rdzv", "port": self.rdzv_port, "targetPort": self.rdzv_port, "protocol": "TCP"}],
            },
        }

    def objects(self) -> list[dict[str, Any]]:
        return [self.service(), self.job()]


def with_env(job: dict[str, Any], extra: Mapping[str, str]) -> dict[str, Any]:
    """A copy of `job` whose trainer container also gets `extra` (e.g. the Dagster Pipes bootstrap variables)."""
    out = copy.deepcopy(job)
    container = out["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [*container["env"], *({"name": k, "value": v} for k, v in extra.items())]
    return out


def owned_by(obj: dict[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `obj` with an ownerReference to `owner` (a created object), so it is garbage-collected with it."""
    out = copy.deepcopy(obj)
    meta = owner["metadata"]
    out["metadata"]["ownerReferences"] = [
        {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": meta["name"],
            "uid": meta["uid"],
            "blockOwnerDeletion": False,
        }
    ]
    return out


def render_yaml(objects: Sequence[Mapping[str, Any]]) -> str:
    return yaml.safe_dump_all([dict(o) for o in objects], sort_keys=False, default_flow_style=False)


# ---- podFailurePolicy semantics (used for the run's log messages and by the multi-host test) ----------


def _exit_codes(pod: Mapping[str, Any], container_name: str | None) -> list[int]:
    status = pod.get("status") or {}
    codes = []
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        if container_name and cs.get("name") != container_name:
            continue
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated is not None and terminated.get("exitCode", 0) != 0:
            codes.append(int(terminated["exitCode"]))  # exit code 0 is excluded from the check
    return codes


def pod_failure_action(policy: Mapping[str, Any] | None, pod: Mapping[str, Any]) -> str | None:
    """The action of the first podFailurePolicy rule that matches a failed pod (dict form), None if none does.

    Mirrors the Job controller: rules in order; onExitCodes looks at terminated non-zero exit codes
    (In: any code in the values; NotIn: any code not in them); onPodConditions matches a condition
    of the given type and status (default "True"). No match means the default: counted.
    """
    conditions = (pod.get("status") or {}).get("conditions") or []
    for rule in (policy or {}).get("rules", []):
        on_codes = rule.get("onExitCodes")
        if on_codes:
            codes = _exit_codes(pod, on_codes.get("containerName"))
            values = set(on_codes["values"])
            if on_codes["operator"] == "In" and any(c in values for c in codes):
                return rule["action"]
            if on_codes["operator"] == "NotIn" and any(c not in values for c in codes):
                return rule["action"]
        for pattern in rule.get("onPodConditions") or []:
            want = pattern.get("status", "True")
            if any(c.get("type") == pattern["type"] and c.get("status") == want for c in conditions):
                return rule["action"]
    return None
