"""The names the launcher, the trainer pods and the watch agree on: labels, annotations, the container.

The Service selects the pods by `JOB_LABEL`, the watch finds them by it, and the cleanup of an earlier
attempt finds its Jobs by `LINEAGE_LABEL`; a value set in one place and read in another lives here.
"""

from __future__ import annotations

import re

CONTAINER = "trainer"
APP = "catalog-posttrain"
JOB_LABEL = f"{APP}/training-job"  # pods, Job and Service carry it; the Service selects on it
LINEAGE_LABEL = f"{APP}/lineage"  # the Dagster run's root run id: every attempt of one run shares it
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
GPU_RESOURCE = "nvidia.com/gpu"

_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def label_value(text: str) -> str:
    """`text` made into a valid label value (<= 63 chars of [A-Za-z0-9_.-], alphanumeric at both ends)."""
    value = _LABEL_VALUE_BAD.sub("_", text)[:63].strip("_.-")
    return value
