"""What a failed training Job leaves behind for the run: pod logs, events and the Job's status, read
before anything is deleted, and a headline that names the pod and the error that ended the run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from resources.kubernetes.api import to_dict
from resources.kubernetes.names import CONTAINER
from resources.kubernetes.pods import PodRecord, list_job_pods, pod_index, trainer_terminated
from resources.kubernetes.watch import JobOutcome
from training.k8s_node import PEER_LOST_EXIT_CODE, rank_error
from training.torchrun_logs import parse_root_cause

_NODE_VERDICT = re.compile(r"\[k8s_node\] torchrun exited .*")


@dataclass
class FailureReport:
    """A failed run's evidence: the headline and error become the Dagster failure, the rest its metadata."""

    headline: str
    error: str
    pods: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)
    saved_to: Path | None = None

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "pods": dg.MetadataValue.json(self.pods),
            "error": dg.MetadataValue.md(f"```\n{self.error}\n```"),
            "events": dg.MetadataValue.md("```\n" + ("\n".join(self.events) or "(none)") + "\n```"),
        }
        if self.saved_to is not None:
            meta["captured_logs"] = dg.MetadataValue.path(str(self.saved_to))
        return meta


def _event_line(event: Any) -> str:
    when = event.last_timestamp or event.event_time or event.first_timestamp
    obj = event.involved_object
    who = f"{obj.kind}/{obj.name}" if obj is not None else "?"
    count = f" (x{event.count})" if event.count and event.count > 1 else ""
    return f"{when} {event.type} {who} {event.reason}: {event.message}{count}"


def capture_failure(
    core: Any,
    batch: Any,
    namespace: str,
    job_name: str,
    outcome: JobOutcome,
    pods: Mapping[str, PodRecord],
    *,
    tail_lines: int = 300,
    save_dir: Path | None = None,
) -> FailureReport:
    """Pod logs, events and the Job's final status, read while the objects still exist (before any delete)."""
    logs: dict[str, str] = {}
    pod_rows: list[dict[str, Any]] = []
    names: list[str] = [job_name]
    try:
        live = list_job_pods(core, namespace, job_name)
    except Exception as exc:
        live = []
        logs["(pods)"] = f"listing pods failed: {exc}"
    for pod in live:
        data = to_dict(pod)
        name = pod.metadata.name
        names.append(name)
        terminated = trainer_terminated(data) or {}
        record = pods.get(name)
        pod_rows.append(
            {
                "pod": name,
                "index": pod_index(pod),
                "phase": pod.status.phase,
                "exit_code": terminated.get("exitCode"),
                "reason": (record.reason if record else "") or terminated.get("reason") or "",
                "action": record.action if record else None,
                "node": pod.spec.node_name if pod.spec else None,
            }
        )
        try:
            logs[name] = core.read_namespaced_pod_log(name, namespace, container=CONTAINER, tail_lines=tail_lines)
        except Exception as exc:
            logs[name] = f"(log unavailable: {getattr(exc, 'status', '')} {getattr(exc, 'reason', exc)})"
    events = _events(core, namespace, names)
    headline, error = _explain(outcome, pod_rows, logs)
    report = FailureReport(headline=headline, error=error, pods=pod_rows, events=events, logs=logs)
    if save_dir is not None:
        report.saved_to = _save(save_dir, logs, events, batch, namespace, job_name)
    return report


def _events(core: Any, namespace: str, names: list[str]) -> list[str]:
    """The events of the Job and each of its pods; one that cannot be listed leaves a line saying so."""
    events: list[str] = []
    for name in names:
        try:
            found = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items or []
        except Exception as exc:
            events.append(f"(events of {name} unavailable: {exc})")
            continue
        events += [_event_line(e) for e in found]
    return events


def _save(
    save_dir: Path, logs: Mapping[str, str], events: list[str], batch: Any, namespace: str, job_name: str
) -> Path | None:
    """Write the logs, events and the Job's status under `save_dir` (kept after the objects are deleted).

    None when the directory cannot be written: the report still carries everything in its metadata.
    """
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        for name, text in logs.items():
            (save_dir / f"{name}.log").write_text(text if isinstance(text, str) else str(text))
        (save_dir / "events.txt").write_text("\n".join(events) + "\n")
        status: Any = None
        try:
            status = to_dict(batch.read_namespaced_job_status(job_name, namespace))
        except Exception as exc:
            status = {"error": str(exc)}
        (save_dir / "job.yaml").write_text(yaml.safe_dump(status, sort_keys=False))
    except OSError:
        return None
    return save_dir


def _explain(outcome: JobOutcome, pods: list[dict[str, Any]], logs: Mapping[str, str]) -> tuple[str, str]:
    """One line for the failure message, and the failed rank's error text."""
    failed = [p for p in pods if p["phase"] == "Failed"]
    culprit = next((p for p in failed if p["action"] == "FailJob"), None)
    culprit = culprit or next((p for p in failed if p["exit_code"] not in (None, PEER_LOST_EXIT_CODE)), None)
    culprit = culprit or (failed[-1] if failed else None)
    error = ""
    verdict = ""
    if culprit is not None:
        text = logs.get(culprit["pod"], "")
        text = text if isinstance(text, str) else str(text)
        rank, _local, _code = parse_root_cause(text)
        error = rank_error(text, rank)
        found = _NODE_VERDICT.findall(text)
        verdict = found[-1] if found else ""
    if outcome.reason == "DeadlineExceeded":
        head = f"the Job ran past its activeDeadlineSeconds ({outcome.message})"
    elif outcome.reason == "BackoffLimitExceeded":
        head = f"pods failed more often than backoffLimit allows ({outcome.message})"
    elif outcome.condition == "Timeout":
        head = f"the launcher gave up waiting: {outcome.message}"
    else:
        head = outcome.describe()
    if culprit is not None:
        head += f"; pod {culprit['pod']} (node {culprit['index']}) exited {culprit['exit_code']}"
        if verdict:
            head += f": {verdict.removeprefix('[k8s_node] ')}"
    return head, error or "(no traceback in the captured logs)"
