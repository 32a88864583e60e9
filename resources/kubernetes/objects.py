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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from resources.kubernetes.names import APP, COMPLETION_INDEX_ANNOTATION, CONTAINER, GPU_RESOURCE, JOB_LABEL, label_value
from resources.kubernetes.validation import validate_job_spec

# The exit code of `training.k8s_node` (the container's entry point) that the podFailurePolicy counts.
from training.artifact_sync import ROOT_ENV as SYNC_ROOT_ENV
from training.artifact_sync import URL_ENV as SYNC_URL_ENV
from training.k8s_node import CONFIG_KEY_ENV, PEER_LOST_EXIT_CODE


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
    config_path: str  # train_config.json on the shared artifact volume (or its local mirror, with artifacts_url)
    entry_point: str = "training.sft"  # the trainer module torchrun runs (training.dpo for preference training)
    gpus_per_node: int = 0
    cpu: str = "4"
    memory: str = "16Gi"
    shm_size: str = "2Gi"  # /dev/shm (a memory emptyDir; counts toward the memory limit)
    tmp_size: str = "10Gi"  # /tmp emptyDir (HOME, torchrun logs): the root filesystem is read-only
    artifacts_pvc: str = "catalog-posttrain-artifacts"
    artifacts_mount_path: str = "/platform/artifacts"
    # Artifacts on an object store instead of the PVC: each pod mirrors what it needs into an emptyDir of this size
    # at artifacts_mount_path (training/artifact_sync.py); config_key is where this launch's config was published.
    artifacts_url: str = ""
    artifacts_scratch_size: str = "200Gi"
    config_key: str = ""
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
        """Raise `K8sConfigError` naming the first setting that cannot make a runnable Job."""
        validate_job_spec(self)

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
            self.entry_point,
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
        if self.artifacts_url:
            env += [
                {"name": SYNC_URL_ENV, "value": self.artifacts_url},
                {"name": SYNC_ROOT_ENV, "value": self.artifacts_mount_path},
                {"name": CONFIG_KEY_ENV, "value": self.config_key},
            ]
        env += [{"name": k, "value": v} for k, v in sorted(self.env.items())]
        for name, ref in sorted(self.secret_env.items()):
            secret, _, key = ref.partition("/")
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
        return env

    def _artifacts_volume(self) -> dict[str, Any]:
        if self.artifacts_url:
            return {"name": "artifacts", "emptyDir": {"sizeLimit": self.artifacts_scratch_size}}
        return {"name": "artifacts", "persistentVolumeClaim": {"claimName": self.artifacts_pvc}}

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
                self._artifacts_volume(),
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
