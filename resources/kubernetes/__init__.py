"""The Kubernetes training launcher: `training.sft` as an Indexed Job of N pods x M processes.

One module per concern: `names` (labels and annotations everyone agrees on), `validation` (settings
refused before submit), `objects` (the Job and Service as dicts), `api` (clients and bounded calls),
`pods` (pod state and podFailurePolicy rules), `pipes` and `logs` (Dagster Pipes read from rank 0's
log), `watch` (the Job until it ends), `failures` (what a failed Job leaves for the run), `cleanup`
(deleting objects), `launcher` (the Dagster resource) and `cli` (`python -m resources.kubernetes render`).
"""

from resources.kubernetes.api import (
    API_CONNECT_TIMEOUT_S,
    API_READ_TIMEOUT_S,
    BoundedApi,
    KubeApiUnavailable,
    load_clients,
    to_dict,
    within,
)
from resources.kubernetes.cleanup import clear_leftovers, delete_objects
from resources.kubernetes.failures import FailureReport, capture_failure
from resources.kubernetes.launcher import (
    CAPTURE_CALL_S,
    TERMINATION_CALL_S,
    KubernetesTrainingLauncher,
    job_name_for,
)
from resources.kubernetes.logs import Rank0LogFollower, seconds_since, split_timestamp
from resources.kubernetes.names import (
    APP,
    COMPLETION_INDEX_ANNOTATION,
    CONTAINER,
    GPU_RESOURCE,
    JOB_LABEL,
    LINEAGE_LABEL,
    label_value,
)
from resources.kubernetes.objects import TrainingJobSpec, owned_by, render_yaml, with_env
from resources.kubernetes.pipes import PodLogMessageReader, parse_pipes_message
from resources.kubernetes.pods import PodRecord, list_job_pods, pod_failure_action, pod_index
from resources.kubernetes.validation import (
    ACTIVE_DEADLINE_MAX_S,
    ACTIVE_DEADLINE_MIN_S,
    K8sConfigError,
    check_dns_label,
    check_image_reference,
)
from resources.kubernetes.watch import JobOutcome, JobWatcher

__all__ = [
    "ACTIVE_DEADLINE_MAX_S",
    "ACTIVE_DEADLINE_MIN_S",
    "API_CONNECT_TIMEOUT_S",
    "API_READ_TIMEOUT_S",
    "APP",
    "CAPTURE_CALL_S",
    "COMPLETION_INDEX_ANNOTATION",
    "CONTAINER",
    "GPU_RESOURCE",
    "JOB_LABEL",
    "LINEAGE_LABEL",
    "TERMINATION_CALL_S",
    "BoundedApi",
    "FailureReport",
    "JobOutcome",
    "JobWatcher",
    "K8sConfigError",
    "KubeApiUnavailable",
    "KubernetesTrainingLauncher",
    "PodLogMessageReader",
    "PodRecord",
    "Rank0LogFollower",
    "TrainingJobSpec",
    "capture_failure",
    "check_dns_label",
    "check_image_reference",
    "clear_leftovers",
    "delete_objects",
    "job_name_for",
    "label_value",
    "list_job_pods",
    "load_clients",
    "owned_by",
    "parse_pipes_message",
    "pod_failure_action",
    "pod_index",
    "render_yaml",
    "seconds_since",
    "split_timestamp",
    "to_dict",
    "with_env",
    "within",
]
