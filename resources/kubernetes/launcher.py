"""`KubernetesTrainingLauncher`: `training.sft` on N Kubernetes pods x M processes, as an Indexed Job.

Same interface as `LocalTorchrunLauncher` (`launch(context, train_config, output_dir)`,
`world_size`); selected with TRAINING_LAUNCHER=kubernetes (see core/settings.py).
The objects are built by `TrainingJobSpec` (resources.kubernetes.objects), watched by `JobWatcher` and
`Rank0LogFollower`; each pod's entry point is `training.k8s_node`. The training config, checkpoints
and outputs live on a shared ReadWriteMany volume mounted at the same path here and in every pod.

Print the objects for a configuration without a cluster:

    python -m resources.kubernetes render --nodes 2 --procs-per-node 8 --gpus-per-node 8 --image IMAGE
"""

from __future__ import annotations

import secrets
import string
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from core.object_store import VersionStore
from core.settings import K8S_DEFAULT_NAMESPACE
from resources.kubernetes.api import (
    API_CONNECT_TIMEOUT_S,
    API_READ_TIMEOUT_S,
    BoundedApi,
    load_clients,
    refusal,
    to_dict,
    within,
)
from resources.kubernetes.cleanup import clear_leftovers, delete_objects
from resources.kubernetes.failures import FailureReport, capture_failure
from resources.kubernetes.logs import Rank0LogFollower
from resources.kubernetes.names import LINEAGE_LABEL, label_value
from resources.kubernetes.objects import TrainingJobSpec, owned_by, with_env
from resources.kubernetes.pipes import PodLogMessageReader
from resources.kubernetes.validation import K8sConfigError
from resources.kubernetes.watch import JobOutcome, JobWatcher
from resources.launchers import LaunchResult, TrainingLauncher, collect_result, write_train_config
from training.artifact_sync import ArtifactSync

_SUFFIX = string.ascii_lowercase + string.digits

# Per-call caps where a slower bound would not help: reading a failed Job's logs and events, and the
# cleanup of a terminated run, which must finish inside the run worker's termination grace period.
CAPTURE_CALL_S = 30.0
TERMINATION_CALL_S = 15.0


def job_name_for(run_id: str, suffix: str | None = None) -> str:
    """`sft-<first 8 of the run id>-<5 random>`: unique per launch, short enough for pod hostnames."""
    suffix = suffix or "".join(secrets.choice(_SUFFIX) for _ in range(5))
    head = "".join(ch for ch in run_id.lower() if ch.isalnum())[:8] or "run"
    return f"sft-{head}-{suffix}"


class KubernetesTrainingLauncher(TrainingLauncher):
    """Runs the trainer as a Kubernetes Indexed Job (one pod per node) + headless Service for rendezvous.

    The artifact volume (`artifacts_pvc`, a ReadWriteMany PVC) must be mounted at
    `artifacts_mount_path` both in the Dagster run's pod and in the trainer pods: the training
    config, the base model, the shards and the output directory must all be under it. With
    `artifacts_url` (artifacts on an object store) the pods mount no PVC: they fetch the config, base model,
    shards and newest checkpoint from the store and publish checkpoints and the result to it
    (training/artifact_sync.py); the run worker copies the result back into its output directory.
    """

    namespace: str = K8S_DEFAULT_NAMESPACE
    image: str = ""
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list)
    nodes: int = 2
    procs_per_node: int = 1
    gpus_per_node: int = 0
    cpu: str = "4"
    memory: str = "16Gi"
    shm_size: str = "2Gi"
    tmp_size: str = "10Gi"
    artifacts_pvc: str = "catalog-posttrain-artifacts"
    artifacts_mount_path: str = "/platform/artifacts"
    # With artifacts on an object store (ARTIFACTS_URL) no PVC is mounted: artifacts_mount_path is the run worker's
    # artifact cache, and every trainer pod mirrors what it needs under the same path in an emptyDir this large.
    artifacts_url: str = ""
    artifacts_scratch_size: str = "200Gi"
    service_account: str = ""
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, str]] = Field(default_factory=list)
    priority_class: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, str] = Field(default_factory=dict)  # ENV_NAME -> "secret-name/key"
    rdzv_port: int = 29500
    cluster_domain: str = "cluster.local"
    backoff_limit: int = -1  # -1: 2 x nodes
    active_deadline_seconds: int = 86400
    ttl_seconds_after_finished: int = 86400
    dns_wait_seconds: int = 600
    rdzv_join_timeout_seconds: int = 600  # torchrun's c10d join_timeout: a pod waiting alone gives up after this
    threads_per_process: int = 0
    run_as_user: int = 1000
    poll_interval_s: float = 5.0
    log_tail_lines: int = 300
    drain_timeout_s: float = 60.0
    api_connect_timeout_s: float = API_CONNECT_TIMEOUT_S  # every Kubernetes API call: connect ...
    api_read_timeout_s: float = API_READ_TIMEOUT_S  # ... and read bound (a silent server never hangs the run)
    leftover_wait_s: float = 180.0  # how long an earlier attempt's trainer pods may take to go
    kubeconfig: str = ""  # empty: in-cluster config, else ~/.kube/config (or $KUBECONFIG)
    kube_context: str = ""

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    # ---- objects ------------------------------------------------------------------------------
    def job_spec(
        self,
        name: str,
        config_path: str,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        config_key: str = "",
        entry_point: str = "training.sft",
    ) -> TrainingJobSpec:
        return TrainingJobSpec(
            name=name,
            entry_point=entry_point,
            namespace=self.namespace,
            image=self.image,
            nodes=self.nodes,
            procs_per_node=self.procs_per_node,
            config_path=config_path,
            gpus_per_node=self.gpus_per_node,
            cpu=self.cpu,
            memory=self.memory,
            shm_size=self.shm_size,
            tmp_size=self.tmp_size,
            artifacts_pvc=self.artifacts_pvc,
            artifacts_mount_path=self.artifacts_mount_path,
            artifacts_url=self.artifacts_url,
            artifacts_scratch_size=self.artifacts_scratch_size,
            config_key=config_key,
            image_pull_policy=self.image_pull_policy,
            image_pull_secrets=tuple(self.image_pull_secrets),
            service_account=self.service_account,
            node_selector=dict(self.node_selector),
            tolerations=tuple(dict(t) for t in self.tolerations),
            priority_class=self.priority_class,
            env=dict(self.env),
            secret_env=dict(self.secret_env),
            labels=labels or {},
            annotations=annotations or {},
            rdzv_port=self.rdzv_port,
            cluster_domain=self.cluster_domain,
            backoff_limit=self.backoff_limit,
            active_deadline_seconds=self.active_deadline_seconds,
            ttl_seconds_after_finished=self.ttl_seconds_after_finished,
            dns_wait_seconds=self.dns_wait_seconds,
            rdzv_join_timeout_seconds=self.rdzv_join_timeout_seconds,
            threads_per_process=self.threads_per_process,
            run_as_user=self.run_as_user,
        )

    def clients(self) -> tuple[Any, Any]:
        """(BatchV1Api, CoreV1Api) from this launcher's kubeconfig/context, else in-cluster config."""
        return load_clients(self.kubeconfig, self.kube_context)

    def api_clients(self) -> tuple[BoundedApi, BoundedApi]:
        """`clients()` with connect and read timeouts on every call (see `BoundedApi`)."""
        for what, value, most in (
            ("api_connect_timeout_s (K8S_API_CONNECT_TIMEOUT_SECONDS)", self.api_connect_timeout_s, 300),
            ("api_read_timeout_s (K8S_API_READ_TIMEOUT_SECONDS)", self.api_read_timeout_s, 3600),
        ):
            if not 0 < value <= most:
                raise dg.Failure(
                    f"KubernetesTrainingLauncher configuration: {what}={value} must be above 0 and at most {most} "
                    "seconds (defaults: 10 and 60)"
                )
        batch, core = self.clients()
        return (
            BoundedApi(batch, self.api_connect_timeout_s, self.api_read_timeout_s),
            BoundedApi(core, self.api_connect_timeout_s, self.api_read_timeout_s),
        )

    def _check_paths(self, train_config: dict[str, Any], output_dir: Path) -> None:
        mount = Path(self.artifacts_mount_path)
        paths = {"output_dir": str(output_dir), "base_model_dir": train_config.get("base_model_dir")}
        paths.update({f"shard_dirs[{i}]": p for i, p in enumerate(train_config.get("shard_dirs") or [])})
        for key, value in paths.items():
            if value and not Path(value).resolve().is_relative_to(mount.resolve()):
                shared = f"mirrored from {self.artifacts_url}" if self.artifacts_url else f"PVC {self.artifacts_pvc}"
                raise dg.Failure(
                    f"{key}={value} is not under {mount}, the artifact path the trainer pods share ({shared}): "
                    "trainer pods could not read or write it. Set PLATFORM_HOME so the artifacts (or, with "
                    "ARTIFACTS_URL, their cache) live under it, or K8S_ARTIFACTS_MOUNT_PATH to where they are."
                )

    # ---- launch -------------------------------------------------------------------------------
    def artifact_sync(self) -> ArtifactSync | None:
        """The object-store mirror the pods use (None with the shared volume)."""
        if not self.artifacts_url:
            return None
        return ArtifactSync(VersionStore(self.artifacts_url.rstrip("/")), Path(self.artifacts_mount_path))

    def launch(
        self,
        context: dg.AssetExecutionContext,
        train_config: dict[str, Any],
        output_dir: Path,
        entry_point: str = "training.sft",
    ) -> LaunchResult:
        self._check_paths(train_config, output_dir)
        config_path = write_train_config(train_config, output_dir)
        sync = self.artifact_sync()
        config_key = sync.push_config(config_path) if sync is not None else ""
        name = job_name_for(context.run.run_id)
        lineage, labels, annotations = self._run_metadata(context, output_dir)
        try:
            spec = self.job_spec(
                name, str(config_path), labels, annotations, config_key=config_key, entry_point=entry_point
            )
            service, job = spec.service(), spec.job()
        except K8sConfigError as exc:
            raise dg.Failure(f"KubernetesTrainingLauncher configuration: {exc}") from exc
        batch, core = self.api_clients()
        clear_leftovers(
            batch,
            core,
            self.namespace,
            lineage,
            context.log,
            wait_s=self.leftover_wait_s,
            poll_s=self.poll_interval_s,
        )
        reader = PodLogMessageReader(warn=context.log.warning)
        with dg.open_pipes_session(
            context=context,
            context_injector=dg.PipesEnvContextInjector(),
            message_reader=reader,
            extras={"output_dir": str(output_dir)},
        ) as session:
            job = with_env(job, session.get_bootstrap_env_vars())
            self._submit(batch, core, job, service, context)
            context.log.info(
                f"submitted Job {self.namespace}/{name}: {self.nodes} node(s) x {self.procs_per_node} process(es)"
                f"{f' x {self.gpus_per_node} GPU(s)' if self.gpus_per_node else ''}, rendezvous on "
                f"{spec.rendezvous_host}:{self.rdzv_port}"
            )
            outcome, report = self._follow_until_done(batch, core, name, reader, output_dir, context)
        if report is not None:
            raise dg.Failure(
                description=f"training failed on Kubernetes: {report.headline}",
                metadata={
                    "k8s_job": f"{self.namespace}/{name}",
                    "condition": outcome.describe(),
                    **report.metadata(),
                },
            )
        if sync is not None and sync.pull_result(output_dir) is None:
            raise dg.Failure(
                description=f"training Job {name} succeeded but published no result under "
                f"{sync.store.url}/{sync.key(output_dir)}: was the trainer image built from this code?"
            )
        return collect_result(session, output_dir)

    def _run_metadata(
        self, context: dg.AssetExecutionContext, output_dir: Path
    ) -> tuple[str, dict[str, str], dict[str, str]]:
        """(lineage, labels, annotations) that tie the Job to its Dagster run, asset and output directory.

        The lineage label (the root run id) lets a later attempt of the same run find this Job.
        """
        run = context.run
        asset = "/".join(context.asset_key.path) if context.has_assets_def else ""
        lineage = label_value(run.root_run_id or run.run_id)
        labels = {"dagster/run-id": run.run_id, "dagster/job": run.job_name, LINEAGE_LABEL: lineage}
        if asset:
            labels["dagster/asset"] = label_value(asset.replace("/", "__"))
        annotations = {
            "dagster/run-id": run.run_id,
            "dagster/root-run-id": run.root_run_id or run.run_id,
            "dagster/job": run.job_name,
            "dagster/asset-key": asset,
            "catalog-posttrain/output-dir": str(output_dir),
            "catalog-posttrain/world-size": str(self.world_size),
        }
        return lineage, labels, annotations

    def _follow_until_done(
        self, batch: Any, core: Any, name: str, reader: PodLogMessageReader, output_dir: Path, context: Any
    ) -> tuple[JobOutcome, FailureReport | None]:
        """Stream rank 0's log and watch the Job until it ends; the objects are deleted however it ends.

        A failed Job's logs and events are captured first (the report), while its pods still exist.
        """
        follower = Rank0LogFollower(
            core, self.namespace, name, reader.consume, poll_s=min(2.0, self.poll_interval_s), log=context.log.info
        )
        watcher = JobWatcher(
            batch,
            core,
            self.namespace,
            name,
            log=context.log,
            poll_s=self.poll_interval_s,
            timeout_s=self.active_deadline_seconds + 300,
        )
        report = None
        follower.start()
        try:
            outcome = watcher.wait()
            if outcome.succeeded:
                if not follower.finish(self.drain_timeout_s):
                    context.log.warning("rank 0's log did not end in time; some Pipes messages may be missing")
            else:
                follower.stop()
                report = capture_failure(
                    within(core, CAPTURE_CALL_S),
                    within(batch, CAPTURE_CALL_S),
                    self.namespace,
                    name,
                    outcome,
                    watcher.pods,
                    tail_lines=self.log_tail_lines,
                    save_dir=output_dir / "k8s" / name,
                )
                context.log.error(
                    f"training Job {name} failed: {report.headline}\n{report.error}\n"
                    + "events:\n"
                    + "\n".join(report.events[-40:])
                )
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
            context.log.warning(f"run terminated: deleting Job {name} and its Service")
            follower.stop()
            quick = (within(batch, TERMINATION_CALL_S), within(core, TERMINATION_CALL_S))
            delete_objects(*quick, self.namespace, name, context.log)
            raise
        except BaseException:
            follower.stop()
            delete_objects(batch, core, self.namespace, name, context.log)
            raise
        delete_objects(batch, core, self.namespace, name, context.log)
        return outcome, report

    def _submit(self, batch: Any, core: Any, job: dict[str, Any], service: dict[str, Any], context: Any) -> None:
        """The Job first, then the Service owned by it (garbage-collected with the Job whatever happens here)."""
        try:
            created = batch.create_namespaced_job(self.namespace, job)
        except Exception as exc:
            raise dg.Failure(refusal("creating the Job", self.namespace, exc)) from exc
        owner = to_dict(created) if created is not None else None
        if owner and (owner.get("metadata") or {}).get("uid"):
            owner = {"apiVersion": "batch/v1", "kind": "Job", "metadata": owner["metadata"]}
            service = owned_by(service, owner)
        try:
            core.create_namespaced_service(self.namespace, service)
        except Exception as exc:
            delete_objects(batch, core, self.namespace, job["metadata"]["name"], context.log)
            raise dg.Failure(refusal("creating the headless Service", self.namespace, exc)) from exc
