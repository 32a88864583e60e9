"""What a training Job's pods say: which node each one is, how its trainer ended, and which
podFailurePolicy rule the Job controller applies to it.

The watch narrates a failed pod by the action the controller takes (replace it uncounted, count it,
fail the Job), and the multi-host test's stand-in controller applies the same rules; both read
them here so the narration and the emulation agree with the policy the launcher submits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from resources.kubernetes.names import COMPLETION_INDEX_ANNOTATION, CONTAINER, JOB_LABEL


def pod_index(pod: Any) -> int | None:
    annotations = (pod.metadata.annotations or {}) if pod.metadata else {}
    value = annotations.get(COMPLETION_INDEX_ANNOTATION)
    return int(value) if value is not None and str(value).isdigit() else None


def list_job_pods(core: Any, namespace: str, job_name: str) -> list[Any]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}={job_name}").items or []
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return sorted(pods, key=lambda p: (p.metadata.creation_timestamp or epoch, p.metadata.name))


@dataclass
class PodRecord:
    """What the watch learned about one pod: the failure report names the pod that ended the run from it."""

    name: str
    index: int | None
    phase: str
    exit_code: int | None = None
    action: str | None = None  # the podFailurePolicy action for a failed pod
    reason: str = ""


def trainer_terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer container's `terminated` state (dict form), None while it has not ended."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER and (cs.get("state") or {}).get("terminated"):
            return cs["state"]["terminated"]
    return None


def true_condition(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The pod's condition of type `kind` (dict form) if its status is "True"."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


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
