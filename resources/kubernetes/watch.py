"""Watching one training Job until it ends: its conditions decide the outcome, its pods are narrated
(scheduling trouble, image pulls, disruptions, lost peers, errors) in the run's log as they happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resources.kubernetes.api import api_status, to_dict, within
from resources.kubernetes.pods import (
    PodRecord,
    list_job_pods,
    pod_failure_action,
    pod_index,
    trainer_terminated,
    true_condition,
)
from training.k8s_node import PEER_LOST_EXIT_CODE


@dataclass
class JobOutcome:
    """How the watch ended: the Job's terminal condition, or the launcher's own Timeout / Deleted."""

    succeeded: bool
    condition: str  # Complete | SuccessCriteriaMet | FailureTarget | Failed | Timeout | Deleted
    reason: str = ""
    message: str = ""

    def describe(self) -> str:
        text = f"{self.condition}"
        if self.reason:
            text += f" ({self.reason})"
        return f"{text}: {self.message}" if self.message else text


class JobWatcher:
    """Polls the Job's status until a terminal condition, and narrates what happens to its pods."""

    SUCCESS = ("SuccessCriteriaMet", "Complete")
    FAILURE = ("FailureTarget", "Failed")

    def __init__(
        self,
        batch: Any,
        core: Any,
        namespace: str,
        job_name: str,
        *,
        log: Any,
        poll_s: float = 5.0,
        timeout_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_api_errors: int = 10,
    ) -> None:
        self.batch, self.core = batch, core
        self.namespace, self.job_name = namespace, job_name
        self.log = log  # info/warning/error callables, e.g. context.log
        self.poll_s, self.timeout_s = poll_s, timeout_s
        self.sleep, self.clock = sleep, clock
        self.max_api_errors = max_api_errors
        self.pods: dict[str, PodRecord] = {}
        self.policy: dict[str, Any] | None = None
        self.backoff_limit: int | None = None
        self._warned: set[str] = set()

    def wait(self, timeout_s: float | None = None) -> JobOutcome:
        """Poll until the Job reaches a terminal condition, or `timeout_s` (default: the watcher's) passes.

        The deadline holds while the API fails too: an API server that stops answering ends the wait
        with a Timeout outcome naming the last error, never an endless retry loop.
        """
        limit = self.timeout_s if timeout_s is None else timeout_s
        started = self.clock()
        errors = 0
        while True:
            batch = within(self.batch, limit - (self.clock() - started) if limit else None)
            try:
                job = batch.read_namespaced_job_status(self.job_name, self.namespace)
                errors = 0
            except Exception as exc:
                if api_status(exc) == 404:
                    gone = f"Job {self.job_name} was deleted outside the launcher"
                    return JobOutcome(False, "Deleted", "NotFound", gone)
                errors += 1
                if errors > self.max_api_errors:
                    raise
                if limit and self.clock() - started > limit:
                    return JobOutcome(
                        False,
                        "Timeout",
                        "ApiUnavailable",
                        f"no status of Job {self.namespace}/{self.job_name} within {limit:.0f}s; "
                        f"the last API call failed: {exc}",
                    )
                self.log.warning(f"reading Job {self.job_name} failed ({exc}); retrying")
                self.sleep(self.poll_s)
                continue
            outcome = self.evaluate(job)
            try:
                self.observe_pods(within(self.core, limit - (self.clock() - started) if limit else None))
            except Exception as exc:  # narration only; the Job's conditions decide
                self.log.warning(f"listing the Job's pods failed ({exc})")
            if outcome is not None:
                return outcome
            if limit and self.clock() - started > limit:
                return JobOutcome(
                    False,
                    "Timeout",
                    "LauncherDeadline",
                    f"no terminal condition after {limit:.0f}s (activeDeadlineSeconds plus a grace period)",
                )
            self.sleep(self.poll_s)

    def evaluate(self, job: Any) -> JobOutcome | None:
        """A terminal outcome from the Job's conditions (not its counters), or None while it runs."""
        if self.policy is None and job.spec is not None:
            self.policy = to_dict(job.spec.pod_failure_policy)
            self.backoff_limit = job.spec.backoff_limit
        conditions = {c.type: c for c in (job.status.conditions or []) if c.status == "True"} if job.status else {}
        for kind in self.SUCCESS:
            if kind in conditions:
                c = conditions[kind]
                return JobOutcome(True, kind, c.reason or "", c.message or "")
        for kind in self.FAILURE:
            if kind in conditions:
                c = conditions[kind]
                return JobOutcome(False, kind, c.reason or "", c.message or "")
        return None

    def observe_pods(self, core: Any = None) -> None:
        for pod in list_job_pods(core or self.core, self.namespace, self.job_name):
            data = to_dict(pod)
            name = pod.metadata.name
            phase = pod.status.phase or "Pending"
            record = self.pods.get(name)
            if record is None:
                record = self.pods[name] = PodRecord(name, pod_index(pod), "")
            if phase == record.phase:
                if phase == "Pending":
                    self._warn_pending(name, data)
                continue
            record.phase = phase
            where = f"pod {name} (node {record.index})"
            if phase == "Running":
                self.log.info(f"{where} running on {pod.spec.node_name or '?'} at {pod.status.pod_ip or '?'}")
            elif phase == "Succeeded":
                self.log.info(f"{where} finished")
            elif phase == "Failed":
                self._narrate_failure(record, data, where)

    def _narrate_failure(self, record: PodRecord, data: dict[str, Any], where: str) -> None:
        terminated = trainer_terminated(data) or {}
        record.exit_code = terminated.get("exitCode")
        record.action = pod_failure_action(self.policy, data)
        disruption = true_condition(data, "DisruptionTarget")
        if disruption is not None:
            record.reason = disruption.get("reason") or "DisruptionTarget"
        else:
            record.reason = terminated.get("reason") or (data.get("status") or {}).get("reason") or ""
        limit = f" of backoffLimit={self.backoff_limit}" if self.backoff_limit is not None else ""
        if record.action == "Ignore":
            why = f"{record.reason}: {disruption.get('message', '')}" if disruption else record.reason
            self.log.warning(
                f"{where} was disrupted ({why}); the Job replaces it without counting a failure, and "
                "training resumes from the last checkpoint"
            )
        elif record.action == "Count" and record.exit_code == PEER_LOST_EXIT_CODE:
            self.log.warning(
                f"{where} lost a peer node (exit {PEER_LOST_EXIT_CODE}); the Job replaces it (a counted failure"
                f"{limit}) and training resumes from the last checkpoint"
            )
        elif record.action == "FailJob":
            self.log.error(
                f"{where} failed with exit code {record.exit_code}: an error in the training code or data; "
                "the Job fails without retrying"
            )
        else:
            self.log.warning(
                f"{where} failed ({record.reason or 'no reason'}, exit code {record.exit_code}); counted{limit}"
            )

    def _warn_pending(self, name: str, pod: dict[str, Any]) -> None:
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and name not in self._warned:
                self._warned.add(name)
                self.log.warning(f"pod {name} cannot be scheduled yet: {cond.get('message') or cond.get('reason')}")
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            key = f"{name}:{reason}"
            stuck = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError")
            if reason in stuck and key not in self._warned:
                self._warned.add(key)
                self.log.warning(f"pod {name} is waiting: {reason}: {waiting.get('message', '')}")
