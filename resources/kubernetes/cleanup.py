"""Deleting a run's training objects: after the Job ends, when the run is terminated, and the Jobs an
earlier attempt of the same run left behind (before a new Job may write the same checkpoints).
"""

from __future__ import annotations

import time
from typing import Any

import dagster as dg

from resources.kubernetes.api import api_status, refusal
from resources.kubernetes.names import LINEAGE_LABEL


def delete_objects(batch: Any, core: Any, namespace: str, name: str, log: Any) -> None:
    """Delete the Job (its pods with it) and the Service; already-gone objects are fine."""
    for what, call, left in (
        (
            "Job",
            lambda: batch.delete_namespaced_job(name, namespace, propagation_policy="Background"),
            f"it ends at its activeDeadlineSeconds at the latest; to free its nodes now: "
            f"kubectl -n {namespace} delete job {name}",
        ),
        (
            "Service",
            lambda: core.delete_namespaced_service(name, namespace),
            f"it goes with its Job (ownerReference), or: kubectl -n {namespace} delete service {name}",
        ),
    ):
        try:
            call()
            log.info(f"deleted {what} {namespace}/{name}")
        except Exception as exc:
            if api_status(exc) != 404:
                log.warning(f"could not delete {what} {namespace}/{name}: {exc}; {left}")


def clear_leftovers(
    batch: Any, core: Any, namespace: str, lineage: str, log: Any, *, wait_s: float, poll_s: float
) -> None:
    """Delete the training Jobs an earlier attempt of this run left behind; wait until their pods are gone.

    A run worker that dies (lost node, OOM kill) cannot delete its Job. Run monitoring then resumes
    the run in a new worker, or run retries start a new run of the same lineage; both write to the
    lineage's staging directory. Two trainers must never write the same checkpoints, so the old Job
    and its pods go before the new Job is created (training resumes from the last checkpoint).
    """
    selector = f"{LINEAGE_LABEL}={lineage}"
    try:
        left = batch.list_namespaced_job(namespace, label_selector=selector).items or []
    except Exception as exc:
        raise dg.Failure(refusal("listing earlier training Jobs of this run", namespace, exc)) from exc
    for old in left:
        log.warning(
            f"training Job {namespace}/{old.metadata.name} of an earlier attempt of this run is still there "
            "(its run worker ended without deleting it): deleting it before starting a new one"
        )
        delete_objects(batch, core, namespace, old.metadata.name, log)
    if not left:
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            listed = core.list_namespaced_pod(namespace, label_selector=selector).items or []
            pods = [p.metadata.name for p in listed]
        except Exception as exc:  # keep asking until the deadline
            pods = [f"(listing failed: {exc})"]
        if not pods:
            return
        if time.monotonic() > deadline:
            raise dg.Failure(
                f"pods {', '.join(pods)} of an earlier training Job of this run are still there after "
                f"{wait_s:.0f}s; a new Job would write the same checkpoints. Re-execute the run "
                f"once `kubectl -n {namespace} get pods -l {selector}` lists none."
            )
        time.sleep(min(poll_s, 5.0))
