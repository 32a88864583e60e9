"""KubernetesTrainingLauncher's watch, log-following, Pipes and cleanup logic, on real `kubernetes.client`
model objects (V1Job, V1JobStatus, V1JobCondition, V1Pod, CoreV1Event...) served by a fake API
object that scripts what a cluster would report: the success, failure, disruption, timeout and
run-termination paths.
"""

import inspect
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from kubernetes.client import (
    BatchV1Api,
    CoreV1Api,
    CoreV1Event,
    CoreV1EventList,
    V1Container,
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStateTerminated,
    V1ContainerStatus,
    V1Job,
    V1JobCondition,
    V1JobList,
    V1JobSpec,
    V1JobStatus,
    V1ObjectMeta,
    V1ObjectReference,
    V1Pod,
    V1PodCondition,
    V1PodFailurePolicy,
    V1PodFailurePolicyOnExitCodesRequirement,
    V1PodFailurePolicyOnPodConditionsPattern,
    V1PodFailurePolicyRule,
    V1PodList,
    V1PodSpec,
    V1PodStatus,
    V1PodTemplateSpec,
)
from kubernetes.client.exceptions import ApiException
from support.k8s_policy import RecordingLog

from resources.kubernetes import (
    CAPTURE_CALL_S,
    COMPLETION_INDEX_ANNOTATION,
    JOB_LABEL,
    LINEAGE_LABEL,
    TERMINATION_CALL_S,
    JobWatcher,
    KubernetesTrainingLauncher,
    PodLogMessageReader,
    Rank0LogFollower,
    job_name_for,
    parse_pipes_message,
    split_timestamp,
)
from resources.launchers import TrainingLauncher
from training.k8s_node import PEER_LOST_EXIT_CODE

pytestmark = pytest.mark.kubernetes

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


# ---- model builders -----------------------------------------------------------------------------------------


def policy() -> V1PodFailurePolicy:
    return V1PodFailurePolicy(
        rules=[
            V1PodFailurePolicyRule(
                action="Ignore",
                on_pod_conditions=[V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")],
            ),
            V1PodFailurePolicyRule(
                action="Count",
                on_exit_codes=V1PodFailurePolicyOnExitCodesRequirement(
                    container_name="trainer", operator="In", values=[PEER_LOST_EXIT_CODE]
                ),
            ),
            V1PodFailurePolicyRule(
                action="FailJob",
                on_exit_codes=V1PodFailurePolicyOnExitCodesRequirement(
                    container_name="trainer", operator="NotIn", values=[PEER_LOST_EXIT_CODE]
                ),
            ),
        ]
    )


def job(name: str, *conditions: tuple[str, str, str], active: int = 2, failed: int = 0) -> V1Job:
    return V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=V1ObjectMeta(name=name, namespace="training", uid="job-uid-1"),
        spec=V1JobSpec(template=V1PodTemplateSpec(), pod_failure_policy=policy(), backoff_limit=4),
        status=V1JobStatus(
            active=active,
            failed=failed,
            conditions=[
                V1JobCondition(type=kind, status="True", reason=reason, message=message, last_transition_time=T0)
                for kind, reason, message in conditions
            ],
        ),
    )


def pod(
    job_name: str,
    index: int,
    phase: str,
    *,
    suffix: str = "a",
    exit_code: int | None = None,
    disrupted: bool = False,
    age: int = 0,
) -> V1Pod:
    if exit_code is not None:
        state = V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=exit_code, reason="Error"))
    else:
        state = V1ContainerState(running=V1ContainerStateRunning(started_at=T0))
    conditions = (
        [V1PodCondition(type="DisruptionTarget", status="True", reason="DeletionByPodGC", message="node lost")]
        if disrupted
        else []
    )
    return V1Pod(
        metadata=V1ObjectMeta(
            name=f"{job_name}-{index}-{suffix}",
            labels={JOB_LABEL: job_name},
            annotations={COMPLETION_INDEX_ANNOTATION: str(index)},
            creation_timestamp=T0 + timedelta(seconds=age),
        ),
        spec=V1PodSpec(containers=[V1Container(name="trainer")], node_name=f"node-{index}"),
        status=V1PodStatus(
            phase=phase,
            pod_ip=f"10.0.0.{index + 1}",
            conditions=conditions,
            container_statuses=[
                V1ContainerStatus(
                    name="trainer", ready=phase == "Running", restart_count=0, image="i", image_id="", state=state
                )
            ],
        ),
    )


def pipes(method: str, params: dict[str, Any] | None = None) -> str:
    return json.dumps({"__dagster_pipes_version": "0.1", "method": method, "params": params})


# ---- the fake API --------------------------------------------------------------------------------------------


class FakeKube:
    """BatchV1Api + CoreV1Api methods the launcher calls. `steps` script what each status poll sees.

    Every method takes the client's `_request_timeout` keyword like the real API objects; `timeouts`
    records what each call was given.
    """

    def __init__(self, steps: list[dict[str, Any]], logs: dict[str, list[str]], events: list[CoreV1Event] = ()):
        self.steps = steps
        self.step = 0
        self.logs = logs
        self.events = list(events)
        self.calls: list[tuple[str, str]] = []
        self.timeouts: list[tuple[str, Any]] = []
        self.created_job: dict[str, Any] | None = None
        self.created_service: dict[str, Any] | None = None
        self.interrupt_at: int | None = None
        self.refuse_job: ApiException | None = None
        self.leftovers: list[str] = []  # Jobs of this run's lineage an earlier attempt left behind
        self.leftover_pods: list[str] = []  # ... and their pods that are still there
        self.lock = threading.Lock()

    def _bound(self, call: str, kw: dict[str, Any]) -> None:
        unknown = set(kw) - client_params(call)
        assert not unknown, f"the real client's {call} would refuse {sorted(unknown)}"
        self.timeouts.append((call, kw.pop("_request_timeout", None)))

    @property
    def name(self) -> str:
        assert self.created_job is not None
        return self.created_job["metadata"]["name"]

    def _current(self) -> dict[str, Any]:
        return self.steps[min(self.step, len(self.steps) - 1)]

    # BatchV1Api
    def create_namespaced_job(self, namespace: str, body: dict[str, Any], **kw: Any) -> V1Job:
        self._bound("create_namespaced_job", kw)
        self.calls.append(("create_job", body["metadata"]["name"]))
        if self.refuse_job is not None:
            raise self.refuse_job
        self.created_job = body
        return job(body["metadata"]["name"])

    def list_namespaced_job(self, namespace: str, label_selector: str, **kw: Any) -> V1JobList:
        self._bound("list_namespaced_job", kw)
        self.calls.append(("list_jobs", label_selector))
        key, _, value = label_selector.partition("=")
        assert key == LINEAGE_LABEL
        return V1JobList(items=[V1Job(metadata=V1ObjectMeta(name=n, labels={key: value})) for n in self.leftovers])

    def read_namespaced_job_status(self, name: str, namespace: str, **kw: Any) -> V1Job:
        self._bound("read_namespaced_job_status", kw)
        with self.lock:
            self.calls.append(("read_job", name))
            if self.interrupt_at is not None and self.step >= self.interrupt_at:
                raise dg.DagsterExecutionInterruptedError()
            current = self._current()
            self.step += 1
        return job(name, *current.get("conditions", []))

    def delete_namespaced_job(
        self, name: str, namespace: str, propagation_policy: str | None = None, **kw: Any
    ) -> None:
        self._bound("delete_namespaced_job", kw)
        self.calls.append(("delete_job", name))
        assert propagation_policy == "Background"  # the pods go with the Job
        self.leftovers = [n for n in self.leftovers if n != name]

    # CoreV1Api
    def create_namespaced_service(self, namespace: str, body: dict[str, Any], **kw: Any) -> Any:
        self._bound("create_namespaced_service", kw)
        self.calls.append(("create_service", body["metadata"]["name"]))
        self.created_service = body

    def delete_namespaced_service(self, name: str, namespace: str, **kw: Any) -> None:
        self._bound("delete_namespaced_service", kw)
        self.calls.append(("delete_service", name))

    def list_namespaced_pod(self, namespace: str, label_selector: str, **kw: Any) -> V1PodList:
        self._bound("list_namespaced_pod", kw)
        if label_selector.startswith(f"{LINEAGE_LABEL}="):  # pods of leftover Jobs
            self.calls.append(("list_lineage_pods", label_selector))
            return V1PodList(items=[V1Pod(metadata=V1ObjectMeta(name=n)) for n in self.leftover_pods])
        assert label_selector == f"{JOB_LABEL}={self.name}"
        with self.lock:
            return V1PodList(items=[p(self.name) for p in self._current().get("pods", [])])

    def read_namespaced_pod_log(self, name: str, namespace: str, **kw: Any) -> Any:
        self._bound("read_namespaced_pod_log", kw)
        if name not in self.logs:
            raise ApiException(status=404, reason="Not Found")
        lines = [f"2026-03-01T12:00:{i // 100:02d}.{i % 100:09d}Z {line}" for i, line in enumerate(self.logs[name])]
        if kw.get("follow"):
            self.calls.append(("follow_log", name))
            if kw.get("since_seconds"):
                lines = [ln for ln in lines if in_window(ln, kw["since_seconds"])]
            return _Stream([(ln + "\n").encode() for ln in lines])
        self.calls.append(("read_log", name))
        tail = lines[-kw["tail_lines"] :] if kw.get("tail_lines") else lines
        return "".join(split_timestamp(ln)[1] + "\n" for ln in tail)

    def list_namespaced_event(self, namespace: str, field_selector: str, **kw: Any) -> CoreV1EventList:
        self._bound("list_namespaced_event", kw)
        self.calls.append(("list_events", field_selector))
        who = field_selector.split("=", 1)[1]
        return CoreV1EventList(items=[e for e in self.events if e.involved_object.name == who])


def client_params(method: str) -> set[str]:
    """The keyword arguments the real kubernetes client accepts for `method` (read from its source)."""
    api = BatchV1Api if hasattr(BatchV1Api, method) else CoreV1Api
    source = inspect.getsource(getattr(api, f"{method}_with_http_info"))
    return set(re.findall(r"'(\w+)'", source.split("all_params = [", 1)[1].split("for key, val", 1)[0]))


def in_window(line: str, since_seconds: int) -> bool:
    """Whether a timestamped log line is within the last `since_seconds` (what the API server returns)."""
    stamp = datetime.fromisoformat(line[:19]).replace(tzinfo=UTC)
    return (datetime.now(UTC) - stamp).total_seconds() <= since_seconds


class _Stream:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def stream(self, amt: int, decode_content: bool = True) -> Any:
        yield from self.chunks

    def close(self) -> None:
        pass


def event(obj: str, kind: str, reason: str, message: str) -> CoreV1Event:
    return CoreV1Event(
        metadata=V1ObjectMeta(name=f"{obj}.{reason}"),
        involved_object=V1ObjectReference(kind=kind, name=obj),
        reason=reason,
        message=message,
        type="Warning",
        count=1,
        last_timestamp=T0,
    )


# ---- running the launcher inside a materialization ------------------------------------------------------------

_fake: FakeKube | None = None


class FakeClusterLauncher(KubernetesTrainingLauncher):
    def clients(self) -> tuple[Any, Any]:
        assert _fake is not None
        return _fake, _fake


def launch(tmp_path: Path, fake: FakeKube, **settings: Any) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    global _fake
    _fake = fake
    out = tmp_path / "artifacts" / "trained_checkpoint" / ".tmp-run-1"
    config = {"base_model_dir": str(tmp_path / "artifacts" / "base"), "shard_dirs": [], "output_dir": str(out)}
    launcher = FakeClusterLauncher(
        namespace="training",
        image="catalog-posttrain:1",
        nodes=2,
        artifacts_mount_path=str(tmp_path / "artifacts"),
        poll_interval_s=0.01,
        drain_timeout_s=10,
        **settings,
    )

    @dg.asset
    def trained_checkpoint(context: dg.AssetExecutionContext, trainer: TrainingLauncher) -> dg.MaterializeResult:
        result = trainer.launch(context, config, out)
        return dg.MaterializeResult(metadata={**result.reported_metadata, "progress": len(result.progress)})

    (out).mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps({"steps": 3}))  # what the trainer writes on the shared volume
    instance = dg.DagsterInstance.ephemeral()
    try:
        result = dg.materialize(
            [trained_checkpoint], resources={"trainer": launcher}, instance=instance, raise_on_error=False
        )
    finally:
        _fake = None
    return result, instance


def followed_pods(fake: FakeKube) -> list[str]:
    """Pods whose log was streamed, in order (a running pod's stream is reopened after it ends)."""
    return list(dict.fromkeys(c[1] for c in fake.calls if c[0] == "follow_log"))


def run_messages(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))


def failure_of(result: dg.ExecuteInProcessResult) -> Any:
    return next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data


RANK0_OK = [
    "[k8s_node] pod x (index 0): pod0 -> 10.0.0.1 after 0.1s",
    pipes("opened", {}),
    pipes("log", {"message": "training 1,000 parameters on 2 process(es)", "level": "INFO"}),
    "[default0]:step 1/3 loss 2.5000",
    pipes("report_custom_message", {"payload": {"kind": "progress", "step": 1, "loss": 2.5}}),
    "[W1125 12:00:00 socket.cpp:207] [c10d] noise",
    pipes(
        "report_asset_materialization",
        {
            "asset_key": "trained_checkpoint",
            "metadata": {"final_loss": {"raw_value": 2.25, "type": "float"}},
            "data_version": "abc",
        },
    ),
    pipes("closed", {}),
    "[k8s_node] torchrun finished",
]


def test_success_streams_rank0_pipes_into_the_asset_and_cleans_up(tmp_path: Path) -> None:
    fake = FakeKube(
        steps=[
            {"pods": [lambda n: pod(n, 0, "Pending"), lambda n: pod(n, 1, "Pending")]},
            {"pods": [lambda n: pod(n, 0, "Running"), lambda n: pod(n, 1, "Running")]},
            {
                "pods": [lambda n: pod(n, 0, "Succeeded", exit_code=0), lambda n: pod(n, 1, "Succeeded", exit_code=0)],
                "conditions": [
                    ("SuccessCriteriaMet", "CompletionsReached", ""),
                    ("Complete", "CompletionsReached", ""),
                ],
            },
        ],
        logs={},
    )
    fake.logs = _LazyLogs(fake, {0: RANK0_OK, 1: ["[default0]:rank 1 says nothing"]})
    result, instance = launch(tmp_path, fake)
    assert result.success, failure_of(result).error
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["final_loss"].value == 2.25 and meta["progress"].value == 1
    # Job first, then the Service owned by it; both deleted at the end
    kinds = [c[0] for c in fake.calls]
    assert kinds.index("create_job") < kinds.index("create_service") < kinds.index("delete_job")
    assert "delete_service" in kinds
    owner = fake.created_service["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "Job" and owner["uid"] == "job-uid-1"
    env = {e["name"] for e in fake.created_job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= env
    labels = fake.created_job["metadata"]["labels"]
    assert labels["dagster/run-id"] == result.run_id and labels["dagster/asset"] == "trained_checkpoint"
    # only rank 0's pod is followed; its Pipes log line reached the run
    assert followed_pods(fake) == [f"{fake.name}-0-a"]
    messages = run_messages(instance, result)
    assert "training 1,000 parameters on 2 process(es)" in messages
    assert f"pod {fake.name}-0-a (node 0) running on node-0" in messages


def _succeeding(fake_logs: dict[int, list[str]] | None = None) -> FakeKube:
    fake = FakeKube(
        steps=[
            {"pods": [lambda n: pod(n, 0, "Running"), lambda n: pod(n, 1, "Running")]},
            {
                "pods": [lambda n: pod(n, 0, "Succeeded", exit_code=0), lambda n: pod(n, 1, "Succeeded", exit_code=0)],
                "conditions": [
                    ("SuccessCriteriaMet", "CompletionsReached", ""),
                    ("Complete", "CompletionsReached", ""),
                ],
            },
        ],
        logs={},
    )
    fake.logs = _LazyLogs(fake, fake_logs or {0: RANK0_OK, 1: []})
    return fake


def test_every_api_call_of_a_launch_carries_the_connect_and_read_timeouts(tmp_path: Path) -> None:
    fake = _succeeding()
    result, _ = launch(tmp_path, fake, api_connect_timeout_s=3, api_read_timeout_s=7)
    assert result.success, failure_of(result).error
    made = {call for call, _ in fake.timeouts}
    assert {"list_namespaced_job", "create_namespaced_job", "create_namespaced_service"} <= made
    assert {"read_namespaced_job_status", "list_namespaced_pod", "read_namespaced_pod_log"} <= made
    assert {"delete_namespaced_job", "delete_namespaced_service"} <= made
    unbounded = [(call, t) for call, t in fake.timeouts if t is None or t[0] > 3 or t[1] > 7]
    assert not unbounded, f"API calls without the configured bound: {unbounded}"


def test_a_training_job_left_by_an_earlier_attempt_of_the_run_is_deleted_before_a_new_one(tmp_path: Path) -> None:
    fake = _succeeding()
    fake.leftovers = ["sft-earlier-aaaaa"]  # its run worker died (lost node) without deleting it
    result, instance = launch(tmp_path, fake)
    assert result.success, failure_of(result).error
    kinds = [c for c in fake.calls if c[0] in ("list_jobs", "delete_job", "delete_service", "create_job")]
    assert kinds[:4] == [
        ("list_jobs", f"{LINEAGE_LABEL}={result.run_id}"),  # a first run: its own id is the lineage
        ("delete_job", "sft-earlier-aaaaa"),
        ("delete_service", "sft-earlier-aaaaa"),
        ("create_job", fake.name),
    ]
    assert ("list_lineage_pods", f"{LINEAGE_LABEL}={result.run_id}") in fake.calls  # waited for its pods to go
    assert fake.created_job["metadata"]["labels"][LINEAGE_LABEL] == result.run_id
    assert fake.created_job["spec"]["template"]["metadata"]["labels"][LINEAGE_LABEL] == result.run_id
    assert "training Job training/sft-earlier-aaaaa of an earlier attempt of this run is still there" in run_messages(
        instance, result
    )


def test_no_new_job_while_the_pods_of_an_earlier_attempt_are_still_there(tmp_path: Path) -> None:
    fake = _succeeding()
    fake.leftovers = ["sft-earlier-aaaaa"]
    fake.leftover_pods = ["sft-earlier-aaaaa-0-x"]  # still terminating: it could still write checkpoints
    result, _ = launch(tmp_path, fake, leftover_wait_s=0)
    assert not result.success
    text = failure_of(result).error.message
    assert "pods sft-earlier-aaaaa-0-x of an earlier training Job of this run are still there" in text
    assert f"kubectl -n training get pods -l {LINEAGE_LABEL}=" in text
    assert "create_job" not in [c[0] for c in fake.calls]


class _LazyLogs(dict):
    """Pod logs keyed by index; the pod names depend on the Job name the launcher picks."""

    def __init__(self, fake: FakeKube, by_index: dict[int, list[str]], suffixes: str = "ab") -> None:
        super().__init__()
        self.fake, self.by_index, self.suffixes = fake, by_index, suffixes

    def _key(self, name: str) -> list[str] | None:
        for (index, suffix), lines in self._expanded().items():
            if name == f"{self.fake.name}-{index}-{suffix}":
                return lines
        return None

    def _expanded(self) -> dict[tuple[int, str], list[str]]:
        out = {}
        for key, lines in self.by_index.items():
            index, suffix = key if isinstance(key, tuple) else (key, "a")
            out[(index, suffix)] = lines
        return out

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) is not None

    def __getitem__(self, name: str) -> list[str]:
        lines = self._key(name)
        if lines is None:
            raise KeyError(name)
        return lines


CODE_ERROR_LOG = [
    "[k8s_node] pod x (index 1): pod0 -> 10.0.0.1 after 0.1s",
    "[rank 1] training failed:",
    "Traceback (most recent call last):",
    '  File "/app/training/sft.py", line 10, in main',
    "ValueError: shard train-00003.parquet is corrupt",
    "[k8s_node] torchrun exited 1: rank 1: ValueError: shard train-00003.parquet is corrupt; exit 1 so the Job fails",
]


def test_a_code_error_fails_fast_with_logs_and_events_captured_before_deletion(tmp_path: Path) -> None:
    fake = FakeKube(
        steps=[
            {"pods": [lambda n: pod(n, 0, "Running"), lambda n: pod(n, 1, "Running")]},
            {
                "pods": [lambda n: pod(n, 0, "Running"), lambda n: pod(n, 1, "Failed", exit_code=1)],
                "conditions": [
                    ("FailureTarget", "PodFailurePolicy", "Container trainer for pod x failed with exit code 1")
                ],
            },
        ],
        logs={},
    )
    fake.logs = _LazyLogs(fake, {0: ["[default0]:step 1/3"], 1: CODE_ERROR_LOG})
    fake.events = [event("placeholder", "Pod", "BackOff", "x")]
    result, instance = launch(tmp_path, fake)
    assert not result.success
    failure = failure_of(result)
    text = failure.error.message
    assert "PodFailurePolicy" in text and f"pod {fake.name}-1-a (node 1) exited 1" in text
    assert "ValueError: shard train-00003.parquet is corrupt" in text
    meta = failure.user_failure_data.metadata
    assert "ValueError: shard train-00003.parquet is corrupt" in meta["error"].value
    assert {p["pod"]: p["action"] for p in meta["pods"].value}[f"{fake.name}-1-a"] == "FailJob"
    # logs and events are read before anything is deleted
    kinds = [c[0] for c in fake.calls]
    first_delete = kinds.index("delete_job")
    assert "read_log" in kinds[:first_delete] and "list_events" in kinds[:first_delete]
    assert "delete_service" in kinds
    saved = Path(meta["captured_logs"].value)
    assert "ValueError" in (saved / f"{fake.name}-1-a.log").read_text() and (saved / "job.yaml").is_file()
    captured = [t for call, t in fake.timeouts if call == "list_namespaced_event"]  # only the capture lists events
    assert captured and all(max(t) <= CAPTURE_CALL_S for t in captured)
    messages = run_messages(instance, result)
    assert "an error in the training code or data; the Job fails without retrying" in messages


def test_a_disruption_replaces_the_pod_and_pipes_continue_from_the_new_rank0(tmp_path: Path) -> None:
    closed_with_error = pipes(
        "closed",
        {
            "exception": {
                "name": "RuntimeError",
                "message": "Connection reset by peer",
                "stack": [],
                "cause": None,
                "context": None,
            }
        },
    )
    first_rank0 = [
        pipes("opened", {}),
        pipes("report_custom_message", {"payload": {"kind": "progress", "step": 1}}),
        closed_with_error,
    ]
    second_rank0 = [
        pipes("opened", {}),
        pipes("log", {"message": "resumed from /x/checkpoints/step-00000001 at step 1", "level": "INFO"}),
        pipes(
            "report_asset_materialization",
            {
                "asset_key": "trained_checkpoint",
                "metadata": {"final_loss": {"raw_value": 1.5, "type": "float"}},
                "data_version": None,
            },
        ),
        pipes("closed", {}),
    ]
    fake = FakeKube(
        steps=[
            {"pods": [lambda n: pod(n, 0, "Running"), lambda n: pod(n, 1, "Running")]},
            {"pods": [lambda n: pod(n, 0, "Running"), lambda n: pod(n, 1, "Failed", exit_code=137, disrupted=True)]},
            {
                "pods": [
                    lambda n: pod(n, 0, "Failed", exit_code=PEER_LOST_EXIT_CODE),
                    lambda n: pod(n, 1, "Failed", exit_code=137, disrupted=True),
                    lambda n: pod(n, 0, "Running", suffix="b", age=5),
                    lambda n: pod(n, 1, "Running", suffix="b", age=5),
                ]
            },
            {
                "pods": [
                    lambda n: pod(n, 0, "Failed", exit_code=PEER_LOST_EXIT_CODE),
                    lambda n: pod(n, 1, "Failed", exit_code=137, disrupted=True),
                    lambda n: pod(n, 0, "Succeeded", suffix="b", exit_code=0, age=5),
                    lambda n: pod(n, 1, "Succeeded", suffix="b", exit_code=0, age=5),
                ],
                "conditions": [("Complete", "CompletionsReached", "")],
            },
        ],
        logs={},
    )
    fake.logs = _LazyLogs(fake, {(0, "a"): first_rank0, (0, "b"): second_rank0, (1, "a"): [], (1, "b"): []})
    result, instance = launch(tmp_path, fake)
    assert result.success, failure_of(result).error
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["final_loss"].value == 1.5 and meta["progress"].value == 1
    assert followed_pods(fake) == [f"{fake.name}-0-a", f"{fake.name}-0-b"]  # the old rank 0 first, then its replacement
    messages = run_messages(instance, result)
    assert f"pod {fake.name}-1-a (node 1) was disrupted (DeletionByPodGC: node lost)" in messages
    assert f"pod {fake.name}-0-a (node 0) lost a peer node (exit {PEER_LOST_EXIT_CODE})" in messages
    assert "rank 0 stopped on an earlier pod (RuntimeError: Connection reset by peer)" in messages
    assert "resumed from /x/checkpoints/step-00000001" in messages
    assert "pipes closed with exception" not in messages  # the intermediate close was held back


def test_the_active_deadline_fails_the_run_naming_the_deadline(tmp_path: Path) -> None:
    fake = FakeKube(
        steps=[
            {"pods": [lambda n: pod(n, 0, "Running"), lambda n: pod(n, 1, "Running")]},
            {
                "pods": [lambda n: pod(n, 0, "Failed", exit_code=143), lambda n: pod(n, 1, "Failed", exit_code=143)],
                "conditions": [
                    ("FailureTarget", "DeadlineExceeded", "Job was active longer than specified deadline"),
                    ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"),
                ],
            },
        ],
        logs={},
    )
    fake.logs = _LazyLogs(fake, {0: ["[k8s_node] received SIGTERM: stopping torchrun"], 1: []})
    result, _ = launch(tmp_path, fake)
    assert not result.success
    text = failure_of(result).error.message
    assert "ran past its activeDeadlineSeconds (Job was active longer than specified deadline)" in text
    assert [c[0] for c in fake.calls][-2:] == ["delete_job", "delete_service"]


def test_the_watcher_gives_up_after_its_own_timeout_without_a_terminal_condition() -> None:
    now = [0.0]
    fake = FakeKube(steps=[{"pods": []}], logs={})
    fake.created_job = {"metadata": {"name": "sft-x"}}
    log = _Log()
    watcher = JobWatcher(
        fake,
        fake,
        "training",
        "sft-x",
        log=log,
        poll_s=10,
        timeout_s=95,
        sleep=lambda s: now.__setitem__(0, now[0] + s),
        clock=lambda: now[0],
    )
    outcome = watcher.wait()
    assert not outcome.succeeded and outcome.condition == "Timeout" and "95s" in outcome.message
    assert sum(1 for c in fake.calls if c[0] == "read_job") == 11  # counters alone never end the wait


def test_run_termination_deletes_the_job_and_service(tmp_path: Path) -> None:
    fake = FakeKube(steps=[{"pods": [lambda n: pod(n, 0, "Running"), lambda n: pod(n, 1, "Running")]}], logs={})
    fake.logs = _LazyLogs(fake, {0: [], 1: []})
    fake.interrupt_at = 2
    result, instance = launch(tmp_path, fake)
    assert not result.success
    kinds = [c[0] for c in fake.calls]
    assert "delete_job" in kinds and "delete_service" in kinds
    assert "run terminated: deleting Job" in run_messages(instance, result)
    # the cleanup fits in the run worker's termination grace period even when the API stops answering
    deletes = [t for call, t in fake.timeouts if call.startswith("delete_")]
    assert deletes and all(max(t) <= TERMINATION_CALL_S for t in deletes)


def test_a_refused_job_names_the_rbac_fix(tmp_path: Path) -> None:
    fake = FakeKube(steps=[{}], logs={})
    fake.refuse_job = ApiException(status=403, reason="Forbidden")
    result, _ = launch(tmp_path, fake)
    assert not result.success
    assert "RBAC forbids it" in failure_of(result).error.message
    assert [c[0] for c in fake.calls] == ["list_jobs", "create_job"]


def test_paths_off_the_shared_volume_are_refused_before_anything_is_created(tmp_path: Path) -> None:
    launcher = KubernetesTrainingLauncher(image="i", artifacts_mount_path=str(tmp_path / "pvc"))
    with pytest.raises(
        dg.Failure, match=r"base_model_dir=/elsewhere/base is not under .*pvc, the artifact path the trainer pods share"
    ):
        launcher._check_paths({"base_model_dir": "/elsewhere/base", "shard_dirs": []}, tmp_path / "pvc" / "out")


# ---- pieces ------------------------------------------------------------------------------------------------------


_Log = RecordingLog


def test_conditions_decide_not_counters() -> None:
    watcher = JobWatcher(None, None, "ns", "j", log=_Log())
    assert watcher.evaluate(job("j", active=0, failed=3)) is None  # failed pods, but the Job is still retrying
    assert watcher.evaluate(job("j", ("SuccessCriteriaMet", "CompletionsReached", ""))).succeeded
    outcome = watcher.evaluate(job("j", ("FailureTarget", "BackoffLimitExceeded", "limit"), active=1))
    assert outcome is not None and not outcome.succeeded and outcome.reason == "BackoffLimitExceeded"
    assert watcher.backoff_limit == 4 and watcher.policy["rules"][0]["action"] == "Ignore"


def test_parse_pipes_message_tolerates_prefixes_and_trailing_text() -> None:
    msg = pipes("log", {"message": "hi"})
    assert parse_pipes_message(msg)["method"] == "log"
    assert parse_pipes_message("[default0]:" + msg + "[default0]:")["params"] == {"message": "hi"}
    assert parse_pipes_message("plain line") is None
    assert parse_pipes_message(msg[:30]) is None  # a cut line is not a message


def test_reader_counts_unreadable_messages_and_echoes_other_lines() -> None:
    import io

    warnings: list[str] = []
    echo = io.StringIO()
    reader = PodLogMessageReader(warn=warnings.append, echo=echo)
    reader.consume("p0", "[default0]:step 1")
    reader.consume("p0", pipes("log", {"message": "x"})[:40] + "...")
    assert echo.getvalue().startswith("[p0] [default0]:step 1\n")
    assert reader.malformed == 1 and "unreadable message line from p0" in warnings[0]


def test_follower_reconnects_after_a_dropped_stream_without_repeating_lines() -> None:
    lines = [f"2026-03-01T12:00:0{i}.000000001Z line {i}" for i in range(6)]

    class Dropping(FakeKube):
        def __init__(self) -> None:
            super().__init__(steps=[{"pods": [lambda n: pod(n, 0, "Running")]}], logs={})
            self.created_job = {"metadata": {"name": "sft-x"}}
            self.attempts: list[str | None] = []

        def read_namespaced_pod_log(self, name: str, namespace: str, **kw: Any) -> Any:
            self._bound("read_namespaced_pod_log", kw)
            self.attempts.append(kw.get("since_seconds"))
            if len(self.attempts) == 1:
                return _Broken([(ln + "\n").encode() for ln in lines[:3]])
            self.steps = [{"pods": [lambda n: pod(n, 0, "Succeeded", exit_code=0)]}]
            return _Stream([(ln + "\n").encode() for ln in lines if in_window(ln, kw["since_seconds"])])

    fake = Dropping()
    seen: list[str] = []
    follower = Rank0LogFollower(fake, "training", "sft-x", lambda _pod, line: seen.append(line), poll_s=0.01)
    follower.start()
    assert follower.finish(timeout=10)
    assert seen == [f"line {i}" for i in range(6)]
    reaches_back = (datetime.now(UTC) - datetime(2026, 3, 1, 12, 0, 2, tzinfo=UTC)).total_seconds()
    assert fake.attempts[0] is None and fake.attempts[1] >= reaches_back  # back to the last line seen, at least


class _Broken(_Stream):
    def stream(self, amt: int, decode_content: bool = True) -> Any:
        yield from self.chunks
        raise ConnectionResetError("stream dropped")


def test_job_names_fit_pod_hostnames() -> None:
    name = job_name_for("3f2c9a71-1111-2222-3333-444455556666")
    assert name.startswith("sft-3f2c9a71-") and len(name) == 18
    assert job_name_for("x", "abcde") == "sft-x-abcde"


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {server: "https://k8s.lab.example:6443", insecure-skip-tls-verify: true}
users:
- name: me
  user: {token: not-a-real-token}
contexts:
- name: lab
  context: {cluster: lab, user: me}
current-context: lab
"""


def test_clients_come_from_in_cluster_config_or_a_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import kubernetes.config.incluster_config as incluster

    # Outside a cluster: the kubeconfig named in the settings (nothing is contacted to build the clients).
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    batch, core = KubernetesTrainingLauncher(image="i", kubeconfig=str(path)).clients()
    assert batch.api_client.configuration.host == core.api_client.configuration.host == "https://k8s.lab.example:6443"
    # Inside a pod: the service account token and the KUBERNETES_SERVICE_* variables.
    (tmp_path / "token").write_text("in-cluster-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(incluster, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    batch, _ = KubernetesTrainingLauncher(image="i").clients()
    assert batch.api_client.configuration.host == "https://10.96.0.1:443"
    # Neither: a failure that says what to set.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(dg.Failure, match=r"no Kubernetes credentials.*K8S_KUBECONFIG"):
        KubernetesTrainingLauncher(image="i").clients()
