"""A stand-in for one small Kubernetes cluster on this machine, for the multi-host training test.

It answers the API calls the KubernetesTrainingLauncher makes (BatchV1Api + CoreV1Api methods,
returning real `kubernetes.client` model objects) and plays the parts of the cluster that
matter to a multi-node training Job:

- Job controller: an Indexed Job starts one pod per completion index; a failed pod is handled
  by the Job's podFailurePolicy (first matching rule: Ignore / Count / FailJob) and backoffLimit,
  replacements start once the old pod has ended (podReplacementPolicy: Failed), with the
  controller's exponential back-off for counted failures; activeDeadlineSeconds; the
  conditions FailureTarget -> Failed and SuccessCriteriaMet -> Complete.
- kubelet + container runtime: every pod is a process tree in its OWN network namespace (a veth
  pair on a bridge, its own IPv4 address), mount, UTS (hostname `<job>-<index>`) and PID
  namespace. It runs the container's `command` + `args` with the container's `env` exactly as
  the manifest gives them (fieldRef / secretKeyRef resolved, `$(VAR)` expanded as kubelet does)
  plus the image's ENV (given as `image_env`, mirroring deploy/Dockerfile) and HOSTNAME, via
  `env -i`; volumes: the PVC as a bind mount of a host directory, `emptyDir` (medium Memory ->
  tmpfs), a read-only root filesystem when `readOnlyRootFilesystem` is set. stdout/stderr become
  the pod log, one timestamped line at a time, like the CRI log files kubelet serves.
- cluster DNS: a hosts file per pod, bind-mounted on its /etc/hosts: the kubelet-managed entry
  for the pod itself plus the headless Service's records `<hostname>.<subdomain>.<ns>.svc.cluster.local`
  for every live pod the Service selects (publishNotReadyAddresses: as soon as the pod exists).
  The files are rewritten in place when pods or Services come and go.

A "lost node" (`disrupt`) SIGKILLs the pod's whole process tree (its PID namespace dies, its TCP
connections close, as when a pod is preempted or its node is drained) and marks the pod with
the DisruptionTarget condition, as the pod garbage collector does for a pod whose node is gone.

Not emulated: runAsUser (pods run as root here; the pod spec's security settings are checked by
the schema and Pod Security tests instead), resource limits, scheduling, image pulls, RBAC.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from resources.kubernetes import COMPLETION_INDEX_ANNOTATION, pod_failure_action

CLUSTER_DOMAIN = "cluster.local"
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
_api = ApiClient()

SETUP = r"""
set -e
hosts=$1; host=$2; workdir=$3; readonly_root=$4; shift 4
mount --bind "$hosts" /etc/hosts
hostname "$host"
while [ "$1" != "--" ]; do
  kind=$1; arg=$2; dst=$3; shift 3
  case $kind in
    bind) mount --bind "$arg" "$dst" ;;
    tmpfs) mount -t tmpfs -o "size=$arg" tmpfs "$dst" ;;
  esac
done
shift
if [ "$readonly_root" = 1 ]; then mount -o remount,bind,ro /; fi
cd "$workdir"
exec /usr/bin/env -i "$@"
"""


def model(data: dict[str, Any], klass: str) -> Any:
    """A kubernetes client model from its JSON form (the client's own deserializer)."""
    return _api._ApiClient__deserialize(data, klass)


def rfc3339(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp_nanos() -> str:
    ns = time.time_ns()
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 10**9:09d}Z"


def expand(text: str, env: dict[str, str]) -> str:
    """kubelet's $(VAR) expansion: defined variables are replaced, $$ is a literal $, others stay."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_REF.sub(sub, text)


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def netns_unavailable_reason() -> str | None:
    """Why pods-in-network-namespaces cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root: network, mount, UTS and PID namespaces (ip netns, unshare, mount)"
    for tool in ("ip", "unshare", "mount", "hostname", "env"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2 / util-linux)"
    name = "kpt-probe-" + secrets.token_hex(3)
    try:
        run("ip", "netns", "add", name)
        try:
            run("ip", "link", "add", name[:8] + "a", "type", "veth", "peer", "name", name[:8] + "b")
            run("ip", "link", "del", name[:8] + "a")
            run("ip", "netns", "exec", name, "unshare", "--mount", "--uts", "--pid", "--fork", "--", "true")
        finally:
            run("ip", "netns", "del", name, check=False)
    except (RuntimeError, OSError) as exc:
        return f"network namespaces are not permitted here: {exc}"
    return None


@dataclass
class PodRun:
    name: str
    job: str
    index: int
    namespace: str
    uid: str
    netns: str
    host_veth: str
    ip: str
    hostname: str
    subdomain: str
    labels: dict[str, str]
    annotations: dict[str, str]
    argv: list[str]
    env: dict[str, str]
    workdir: str
    log_path: Path
    hosts_path: Path
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    phase: str = "Pending"
    exit_code: int | None = None
    disrupted: str | None = None
    action: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    init_pid: int | None = None  # the host pid of the pod's PID 1
    observed_argv: list[str] | None = None  # read back from /proc once the pod's process runs
    observed_env: dict[str, str] | None = None
    readers: list[threading.Thread] = field(default_factory=list)
    template_spec: dict[str, Any] = field(default_factory=dict)
    mounts: list[str] = field(default_factory=list)

    @property
    def fqdn(self) -> str:
        return f"{self.hostname}.{self.subdomain}.{self.namespace}.svc.{CLUSTER_DOMAIN}"

    @property
    def live(self) -> bool:
        return self.phase in ("Pending", "Running")


@dataclass
class JobRun:
    name: str
    namespace: str
    uid: str
    body: dict[str, Any]
    created: float = field(default_factory=time.time)
    pods: list[PodRun] = field(default_factory=list)
    completed: set[int] = field(default_factory=set)
    failed: int = 0
    conditions: list[dict[str, Any]] = field(default_factory=list)
    failure: tuple[str, str] | None = None
    finished: bool = False
    deleted: bool = False
    replacements: dict[int, float] = field(default_factory=dict)  # index -> when

    @property
    def spec(self) -> dict[str, Any]:
        return self.body["spec"]

    def current(self, index: int) -> PodRun | None:
        mine = [p for p in self.pods if p.index == index]
        return mine[-1] if mine else None


class NetnsCluster:
    """See the module docstring. Use as a context manager: everything is torn down on exit."""

    def __init__(
        self,
        *,
        image_workdir: Path,
        image_env: dict[str, str],
        volumes: dict[str, Path],
        secrets_data: dict[str, dict[str, str]] | None = None,
        backoff_base_s: float = 10.0,
        tick_s: float = 0.1,
    ) -> None:
        self.image_workdir = image_workdir
        self.image_env = dict(image_env)
        self.volumes = volumes  # PVC claim name -> host directory
        self.secrets = secrets_data or {}
        self.backoff_base_s = backoff_base_s
        self.tick_s = tick_s
        self.prefix = "k" + secrets.token_hex(2)  # interface and netns names stay <= 15 characters
        self.bridge = f"{self.prefix}br"
        self.subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}"
        self.jobs: dict[tuple[str, str], JobRun] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.history: list[PodRun] = []  # every pod ever started, in order
        self._lock = threading.RLock()
        self._counter = 0
        self._stop = threading.Event()
        self._tmp = Path(tempfile.mkdtemp(prefix="netns-cluster-", dir="/var/tmp"))
        self._controller = threading.Thread(target=self._control_loop, name="netns-job-controller", daemon=True)

    # ---- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> NetnsCluster:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._controller.join(timeout=10)
        with self._lock:
            pods = list(self.history)
        for pod in pods:
            self._kill(pod, signal.SIGKILL)
        for pod in pods:
            if pod.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    pod.proc.wait(timeout=10)
            for reader in pod.readers:
                reader.join(timeout=5)
            self._remove_netns(pod)
        run("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def leftover_namespaces(self) -> list[str]:
        listing = run("ip", "netns", "list", check=False).stdout
        return [line.split()[0] for line in listing.splitlines() if line.startswith(self.prefix)]

    # ---- the API surface (BatchV1Api + CoreV1Api) -----------------------------------------------------
    def create_namespaced_job(self, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        body = body if isinstance(body, dict) else _api.sanitize_for_serialization(body)
        name = body["metadata"]["name"]
        with self._lock:
            if (namespace, name) in self.jobs:
                raise ApiException(status=409, reason="AlreadyExists")
            job = JobRun(name=name, namespace=namespace, uid=str(uuid.uuid4()), body=body)
            self.jobs[(namespace, name)] = job
            for index in range(job.spec["completions"]):
                self._start_pod(job, index)
            return self._job_model(job)

    def create_namespaced_service(self, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        name = body["metadata"]["name"]
        with self._lock:
            if (namespace, name) in self.services:
                raise ApiException(status=409, reason="AlreadyExists")
            self.services[(namespace, name)] = body
            self._publish_dns()
        return model(body, "V1Service")

    def read_namespaced_job_status(self, name: str, namespace: str, **_: Any) -> Any:
        with self._lock:
            job = self.jobs.get((namespace, name))
            if job is None or job.deleted:
                raise ApiException(status=404, reason="Not Found")
            return self._job_model(job)

    def list_namespaced_job(self, namespace: str, label_selector: str = "", **_: Any) -> Any:
        wanted = dict(part.split("=", 1) for part in label_selector.split(",") if part)
        with self._lock:
            items = [
                self._job_model(job)
                for job in self.jobs.values()
                if job.namespace == namespace
                and not job.deleted
                and all((job.body["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
            ]
        return model({"items": [_api.sanitize_for_serialization(j) for j in items]}, "V1JobList")

    def list_namespaced_pod(self, namespace: str, label_selector: str = "", **_: Any) -> Any:
        wanted = dict(part.split("=", 1) for part in label_selector.split(",") if part)
        with self._lock:
            items = [
                self._pod_dict(p)
                for job in self.jobs.values()
                if job.namespace == namespace and not job.deleted
                for p in job.pods
                if all(p.labels.get(k) == v for k, v in wanted.items())
            ]
        return model({"items": items}, "V1PodList")

    def read_namespaced_pod_log(
        self,
        name: str,
        namespace: str,
        container: str | None = None,
        follow: bool = False,
        tail_lines: int | None = None,
        timestamps: bool = False,
        since_seconds: int | None = None,
        _preload_content: bool = True,
        **_: Any,
    ) -> Any:
        pod = self._find_pod(namespace, name)
        if follow and not _preload_content:
            return _LogStream(pod, timestamps, since_seconds)
        lines = _read_log(pod, since_seconds)
        if tail_lines is not None:
            lines = lines[-tail_lines:]
        return "".join(line if timestamps else line.split(" ", 1)[1] for line in lines)

    def list_namespaced_event(self, namespace: str, field_selector: str = "", **_: Any) -> Any:
        wanted = dict(part.split("=", 1) for part in field_selector.split(",") if part)
        with self._lock:
            items = [
                e
                for e in self.events
                if e["metadata"]["namespace"] == namespace
                and all(e["involvedObject"].get(k.split(".", 1)[1]) == v for k, v in wanted.items())
            ]
        return model({"items": items}, "CoreV1EventList")

    def delete_namespaced_job(self, name: str, namespace: str, **_: Any) -> Any:
        with self._lock:
            job = self.jobs.get((namespace, name))
            if job is None or job.deleted:
                raise ApiException(status=404, reason="Not Found")
            job.deleted = True
            for pod in job.pods:
                if pod.live:
                    self._terminate(pod)
            self._event(job.name, "Job", "Normal", "Deleted", "the Job was deleted")
        return None

    def delete_namespaced_service(self, name: str, namespace: str, **_: Any) -> Any:
        with self._lock:
            if self.services.pop((namespace, name), None) is None:
                raise ApiException(status=404, reason="Not Found")
            self._publish_dns()
        return None

    # ---- test controls -------------------------------------------------------------------------------
    def disrupt(self, job_name: str, index: int, reason: str = "DeletionByPodGC") -> PodRun:
        """The node of pod `index` is lost: its processes die at once; the pod gets DisruptionTarget."""
        with self._lock:
            job = next(j for j in self.jobs.values() if j.name == job_name)
            pod = job.current(index)
            assert pod is not None and pod.live, f"no running pod for index {index}"
            pod.disrupted = reason
            self._event(pod.name, "Pod", "Warning", "NodeLost", f"node of pod {pod.name} is gone ({reason})")
        self._kill(pod, signal.SIGKILL)
        return pod

    def wait_for_job(self, timeout: float = 60.0) -> JobRun:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                if self.jobs:
                    return next(iter(self.jobs.values()))
            time.sleep(0.05)
        raise TimeoutError("no Job was created")

    # ---- the Job controller ----------------------------------------------------------------------
    def _control_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                for job in list(self.jobs.values()):
                    self._reconcile(job)
            self._stop.wait(self.tick_s)

    def _reconcile(self, job: JobRun) -> None:
        now = time.time()
        for pod in job.pods:
            if pod.live and pod.proc is not None and pod.proc.poll() is not None:
                self._pod_ended(job, pod)
        if job.deleted:
            if all(not p.live for p in job.pods):
                for pod in job.pods:
                    self._remove_netns(pod)
                self.jobs.pop((job.namespace, job.name), None)
            return
        if job.finished:
            return
        deadline = job.spec.get("activeDeadlineSeconds")
        if job.failure is None and deadline and now - job.created > deadline:
            self._fail(job, "DeadlineExceeded", "Job was active longer than specified deadline")
        if job.failure is not None:
            if all(not p.live for p in job.pods):
                reason, message = job.failure
                self._condition(job, "Failed", reason, message)
                self._event(job.name, "Job", "Warning", reason, message)
                job.finished = True
            return
        for index, when in list(job.replacements.items()):
            if now >= when:
                del job.replacements[index]
                self._start_pod(job, index)
        if len(job.completed) == job.spec["completions"]:
            self._condition(
                job, "SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"
            )
            self._condition(job, "Complete", "CompletionsReached", "Reached expected number of succeeded pods")
            self._event(job.name, "Job", "Normal", "Completed", "Job completed")
            job.finished = True

    def _pod_ended(self, job: JobRun, pod: PodRun) -> None:
        for reader in pod.readers:
            reader.join(timeout=5)  # the log holds every line before the pod counts as ended
        rc = pod.proc.returncode if pod.proc is not None else 1
        pod.exit_code = rc if rc >= 0 else 128 - rc  # killed by a signal: 128 + signal, as a runtime reports
        pod.finished = time.time()
        pod.phase = "Succeeded" if pod.exit_code == 0 and not pod.disrupted else "Failed"
        self._publish_dns()
        if job.deleted or job.failure is not None:
            return
        if pod.phase == "Succeeded":
            job.completed.add(pod.index)
            self._event(pod.name, "Pod", "Normal", "Completed", f"index {pod.index} succeeded")
            return
        pod.action = pod_failure_action(job.spec.get("podFailurePolicy"), self._pod_dict(pod))
        self._event(pod.name, "Pod", "Warning", "Failed", f"exit code {pod.exit_code}; podFailurePolicy {pod.action}")
        if pod.action == "FailJob":
            self._fail(
                job,
                "PodFailurePolicy",
                f"Container trainer for pod {job.namespace}/{pod.name} failed with exit code {pod.exit_code} "
                "matching FailJob rule",
            )
        elif pod.action == "Ignore":
            job.replacements[pod.index] = time.time()
        else:
            job.failed += 1
            if job.failed > job.spec.get("backoffLimit", 6):
                self._fail(job, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            else:
                delay = min(360.0, self.backoff_base_s * 2 ** (job.failed - 1))
                job.replacements[pod.index] = time.time() + delay

    def _fail(self, job: JobRun, reason: str, message: str) -> None:
        job.failure = (reason, message)
        job.replacements.clear()
        self._condition(job, "FailureTarget", reason, message)
        for pod in job.pods:
            if pod.live:
                self._terminate(pod)

    def _condition(self, job: JobRun, kind: str, reason: str, message: str) -> None:
        now = rfc3339()
        job.conditions.append(
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastProbeTime": now,
                "lastTransitionTime": now,
            }
        )

    def _event(self, obj: str, kind: str, type_: str, reason: str, message: str) -> None:
        now = rfc3339()
        self.events.append(
            {
                "metadata": {"name": f"{obj}.{len(self.events)}", "namespace": self._namespace_of(obj)},
                "involvedObject": {"kind": kind, "name": obj, "namespace": self._namespace_of(obj)},
                "type": type_,
                "reason": reason,
                "message": message,
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
            }
        )

    def _namespace_of(self, obj: str) -> str:
        for job in self.jobs.values():
            if obj == job.name or any(p.name == obj for p in job.pods):
                return job.namespace
        return "default"

    # ---- kubelet + runtime -------------------------------------------------------------------------
    def _start_pod(self, job: JobRun, index: int) -> PodRun:
        template = job.spec["template"]
        spec = template["spec"]
        container = spec["containers"][0]
        self._counter += 1
        n = self._counter
        name = f"{job.name}-{index}-{secrets.token_hex(3)[:5]}"
        hostname = spec.get("hostname") or f"{job.name}-{index}"
        labels = {
            **template["metadata"].get("labels", {}),
            "batch.kubernetes.io/job-name": job.name,
            "batch.kubernetes.io/controller-uid": job.uid,
            "batch.kubernetes.io/job-completion-index": str(index),
        }
        annotations = {**template["metadata"].get("annotations", {}), COMPLETION_INDEX_ANNOTATION: str(index)}
        pod = PodRun(
            name=name,
            job=job.name,
            index=index,
            namespace=job.namespace,
            uid=str(uuid.uuid4()),
            netns=f"{self.prefix}p{n}",
            host_veth=f"{self.prefix}h{n}",
            ip=f"{self.subnet}.{n}",
            hostname=hostname,
            subdomain=spec.get("subdomain", ""),
            labels=labels,
            annotations=annotations,
            argv=[],
            env={},
            workdir=container.get("workingDir") or str(self.image_workdir),
            log_path=self._tmp / f"{name}.log",
            hosts_path=self._tmp / f"{name}.hosts",
            template_spec=spec,
        )
        env = self._container_env(container, pod)
        pod.env = {**self.image_env, "HOSTNAME": hostname, **env}
        pod.argv = [expand(a, env) for a in [*container.get("command", []), *container.get("args", [])]]
        job.pods.append(pod)
        self.history.append(pod)
        self._event(job.name, "Job", "Normal", "SuccessfulCreate", f"Created pod: {name}")
        self._make_netns(pod)
        pod.log_path.touch()
        self._publish_dns()
        mounts = self._mounts(spec, container, pod)
        readonly = "1" if (container.get("securityContext") or {}).get("readOnlyRootFilesystem") else "0"
        assignments = [f"{k}={v}" for k, v in pod.env.items()]
        cmd = [
            "ip", "netns", "exec", pod.netns,
            "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--",
            "/bin/sh", "-c", SETUP, "sh", str(pod.hosts_path), hostname, pod.workdir, readonly,
            *mounts, "--", *assignments, *pod.argv,
        ]  # fmt: skip
        pod.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            start_new_session=True,
        )
        lock = threading.Lock()
        pod.readers = [
            threading.Thread(target=_pump, args=(pod.proc.stdout, pod.log_path, lock), daemon=True),
            threading.Thread(target=_pump, args=(pod.proc.stderr, pod.log_path, lock), daemon=True),
        ]
        for reader in pod.readers:
            reader.start()
        pod.phase, pod.started = "Running", time.time()
        threading.Thread(target=self._observe_process, args=(pod,), daemon=True).start()
        self._event(name, "Pod", "Normal", "Started", f"Started container trainer at {pod.ip} in netns {pod.netns}")
        return pod

    def _container_env(self, container: dict[str, Any], pod: PodRun) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env", []):
            name = item["name"]
            if "value" in item:
                env[name] = expand(item["value"], env)
                continue
            source = item["valueFrom"]
            if "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                match = _FIELD.match(path)
                simple = {
                    "metadata.name": pod.name,
                    "metadata.namespace": pod.namespace,
                    "metadata.uid": pod.uid,
                    "spec.nodeName": pod.netns,
                    "status.podIP": pod.ip,
                }
                if match:
                    table = pod.labels if match.group(1) == "labels" else pod.annotations
                    env[name] = table.get(match.group(2), "")
                elif path in simple:
                    env[name] = simple[path]
                else:
                    raise ValueError(f"fieldRef {path} is not emulated")
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[name] = self.secrets[ref["name"]][ref["key"]]
            else:
                raise ValueError(f"env {name}: {sorted(source)} is not emulated")
        return env

    def _mounts(self, spec: dict[str, Any], container: dict[str, Any], pod: PodRun) -> list[str]:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        protected = [Path(self.image_workdir), *[Path(p) for p in self.volumes.values()]]
        protected.append(Path(self.image_env.get("PATH", "").split(":")[0]))
        out: list[str] = []
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            dst = mount["mountPath"]
            if "persistentVolumeClaim" in volume:
                src = self.volumes[volume["persistentVolumeClaim"]["claimName"]]
                out += ["bind", str(src), dst]
                pod.mounts.append(f"pvc {src} -> {dst}")
            elif "emptyDir" in volume:
                if any(p == Path(dst) or Path(dst) in p.parents for p in protected):
                    # A fresh emptyDir would hide the checkout or data that live under it on this machine (a clone
                    # under /tmp, say). Bind the host's directory onto itself instead: it stays writable when the
                    # root filesystem is remounted read-only, as the pod's emptyDir would be.
                    out += ["bind", dst, dst]
                    pod.mounts.append(f"emptyDir {dst} emulated by the host's {dst} (it holds code or data here)")
                    continue
                size = volume["emptyDir"].get("sizeLimit", "1Gi").replace("i", "")
                if volume["emptyDir"].get("medium") == "Memory":
                    out += ["tmpfs", size, dst]
                else:
                    scratch = self._tmp / f"{pod.name}-{mount['name']}"
                    scratch.mkdir()
                    out += ["bind", str(scratch), dst]
                pod.mounts.append(f"emptyDir {dst}")
            else:
                raise ValueError(f"volume {mount['name']}: only persistentVolumeClaim and emptyDir are emulated")
        return out

    def _make_netns(self, pod: PodRun) -> None:
        inner = f"{self.prefix}c{self._counter}"
        run("ip", "netns", "add", pod.netns)
        run("ip", "link", "add", pod.host_veth, "type", "veth", "peer", "name", inner)
        run("ip", "link", "set", inner, "netns", pod.netns)
        run("ip", "-n", pod.netns, "link", "set", inner, "name", "eth0")
        run("ip", "-n", pod.netns, "addr", "add", f"{pod.ip}/24", "dev", "eth0")
        run("ip", "-n", pod.netns, "link", "set", "eth0", "up")
        run("ip", "-n", pod.netns, "link", "set", "lo", "up")
        run("ip", "link", "set", pod.host_veth, "master", self.bridge)
        run("ip", "link", "set", pod.host_veth, "up")

    def _remove_netns(self, pod: PodRun) -> None:
        run("ip", "link", "del", pod.host_veth, check=False)
        run("ip", "netns", "del", pod.netns, check=False)

    def _observe_process(self, pod: PodRun) -> None:
        """Read the pod's PID 1 back from /proc once it runs the container command (argv and environ)."""
        assert pod.proc is not None
        deadline = time.time() + 20
        while time.time() < deadline and pod.proc.poll() is None:
            try:
                children = Path(f"/proc/{pod.proc.pid}/task/{pod.proc.pid}/children").read_text().split()
                if children:
                    pid = int(children[0])
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
                    if argv and argv[0].decode() == pod.argv[0]:
                        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")[:-1]
                        pod.init_pid = pid
                        pod.observed_argv = [a.decode() for a in argv]
                        pod.observed_env = dict(e.decode().split("=", 1) for e in environ)
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.02)

    def _terminate(self, pod: PodRun) -> None:
        """SIGTERM to the pod's PID 1 (the container's entry point), SIGKILL after the grace period."""
        if pod.init_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pod.init_pid, signal.SIGTERM)
        else:
            self._kill(pod, signal.SIGKILL)
            return
        grace = min(float(pod.template_spec.get("terminationGracePeriodSeconds", 30)), 15.0)
        timer = threading.Timer(grace, self._kill, args=(pod, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    def _kill(self, pod: PodRun, sig: int) -> None:
        if pod.proc is not None and pod.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pod.proc.pid, sig)

    # ---- DNS ---------------------------------------------------------------------------------------
    def _publish_dns(self) -> None:
        records = []
        for (namespace, svc_name), svc in self.services.items():
            spec = svc["spec"]
            if spec.get("clusterIP") != "None":
                continue
            for job in self.jobs.values():
                for pod in job.pods:
                    selected = all(pod.labels.get(k) == v for k, v in spec.get("selector", {}).items())
                    ready = pod.phase == "Running" or spec.get("publishNotReadyAddresses")
                    if pod.live and selected and ready and pod.namespace == namespace and pod.subdomain == svc_name:
                        records.append(f"{pod.ip}\t{pod.fqdn}")
        for job in self.jobs.values():
            for pod in job.pods:
                if pod.live:
                    _write_hosts(pod, records)

    # ---- model objects --------------------------------------------------------------------------
    def _find_pod(self, namespace: str, name: str) -> PodRun:
        with self._lock:
            for job in self.jobs.values():
                for pod in job.pods:
                    if pod.name == name and pod.namespace == namespace and not job.deleted:
                        return pod
        raise ApiException(status=404, reason="Not Found")

    def _pod_dict(self, pod: PodRun) -> dict[str, Any]:
        status: dict[str, Any] = {"phase": pod.phase, "podIP": pod.ip, "conditions": []}
        state: dict[str, Any]
        if pod.phase in ("Succeeded", "Failed") and pod.exit_code is not None:
            reason = "Completed" if pod.exit_code == 0 else "Error"
            state = {
                "terminated": {
                    "exitCode": pod.exit_code,
                    "reason": reason,
                    "startedAt": rfc3339(pod.started),
                    "finishedAt": rfc3339(pod.finished),
                }
            }
        elif pod.phase == "Running":
            state = {"running": {"startedAt": rfc3339(pod.started)}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        status["containerStatuses"] = [
            {
                "name": "trainer",
                "ready": pod.phase == "Running",
                "restartCount": 0,
                "image": "",
                "imageID": "",
                "state": state,
            }
        ]
        if pod.disrupted:
            status["conditions"].append(
                {"type": "DisruptionTarget", "status": "True", "reason": pod.disrupted, "message": "node lost"}
            )
        return {
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "uid": pod.uid,
                "labels": pod.labels,
                "annotations": pod.annotations,
                "creationTimestamp": rfc3339(pod.created),
            },
            "spec": {**pod.template_spec, "hostname": pod.hostname, "nodeName": pod.netns},
            "status": status,
        }

    def _job_model(self, job: JobRun) -> Any:
        pods = job.pods
        status = {
            "active": sum(1 for p in pods if p.live),
            "succeeded": len(job.completed),
            "failed": sum(1 for p in pods if p.phase == "Failed"),
            "completedIndexes": ",".join(str(i) for i in sorted(job.completed)),
            "startTime": rfc3339(job.created),
            "conditions": job.conditions,
        }
        data = {
            **job.body,
            "metadata": {**job.body["metadata"], "uid": job.uid, "creationTimestamp": rfc3339(job.created)},
        }
        data["status"] = status
        return model(data, "V1Job")


def _pump(src: Any, log_path: Path, lock: threading.Lock) -> None:
    """A container stream to the pod log: one timestamped line at a time (like the CRI log file)."""
    with open(log_path, "a", encoding="utf-8") as out:
        for raw in iter(src.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            with lock:
                out.write(f"{stamp_nanos()} {line}\n")
                out.flush()


def _since_cut(since_seconds: int | None) -> str:
    """The oldest log timestamp ('YYYY-MM-DDTHH:MM:SS') `since_seconds` still returns; '' for all."""
    if not since_seconds:
        return ""
    return datetime.fromtimestamp(time.time() - since_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _read_log(pod: PodRun, since_seconds: int | None) -> list[str]:
    lines = pod.log_path.read_text(encoding="utf-8").splitlines(keepends=True)
    cut = _since_cut(since_seconds)
    return [ln for ln in lines if ln[:19] >= cut] if cut else lines


def _write_hosts(pod: PodRun, records: list[str]) -> None:
    text = "\n".join(
        [
            "# Kubernetes-managed hosts file (emulated).",
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            f"{pod.ip}\t{pod.fqdn}\t{pod.hostname}",
            "# cluster DNS: headless Service records",
            *records,
            "",
        ]
    ).encode()
    # One pwrite of a fixed-size buffer over the old content: a resolver reading the file meanwhile
    # sees the old or the new records, never an empty file.
    size = max(4096, len(text))
    fd = os.open(pod.hosts_path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, text + b"\n" * (size - len(text)), 0)
    finally:
        os.close(fd)


class _LogStream:
    """`read_namespaced_pod_log(follow=True, _preload_content=False)`: lines as they are written, until the pod ends."""

    def __init__(self, pod: PodRun, timestamps: bool, since_seconds: int | None) -> None:
        self.pod, self.timestamps, self.since = pod, timestamps, _since_cut(since_seconds)
        self.closed = False

    def stream(self, amt: int = 65536, decode_content: bool = True) -> Any:
        offset = 0
        while not self.closed:
            ended = not self.pod.live  # checked before reading: once ended, the file holds every line
            with open(self.pod.log_path, "rb") as f:
                f.seek(offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1] if b"\n" in data else b""
            if complete:
                offset += len(complete)
                out = []
                for line in complete.splitlines(keepends=True):
                    if self.since and line[:19].decode() < self.since:
                        continue
                    out.append(line if self.timestamps else line.split(b" ", 1)[1])
                if out:
                    yield b"".join(out)
                continue
            if ended:
                return
            time.sleep(0.05)

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        self.closed = True
