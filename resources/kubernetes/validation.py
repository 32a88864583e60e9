"""Launcher settings checked before anything is submitted: names, the image reference, quantities, deadlines.

A setting the API server or the kubelet would refuse only after the Job exists leaves pods holding
their nodes until the Job's deadline; refused here, it costs nothing and the message names the fix.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resources.kubernetes.objects import TrainingJobSpec

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRETISH = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)
# Image references as container runtimes parse them (the distribution "reference" grammar).
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IMAGE_DOMAIN = re.compile(rf"^(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$")
_IMAGE_PATH = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_IMAGE_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

# Bounds of the training Job's wall-clock limit: a Job that outlives its launcher (or waits for a peer
# that never comes) holds its nodes until activeDeadlineSeconds, so it may not be unbounded in practice.
ACTIVE_DEADLINE_MIN_S = 60
ACTIVE_DEADLINE_MAX_S = 7 * 86400


class K8sConfigError(ValueError):
    """A launcher setting cannot produce valid objects; the message names the setting and the fix."""


def check_dns_label(name: str, what: str) -> str:
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise K8sConfigError(
            f"{what} {name!r} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)"
        )
    return name


def check_image_reference(image: str, setting: str = "image (K8S_IMAGE)") -> str:
    """`image` if a container runtime can pull it: [registry[:port]/]path[:tag][@sha256:<64 hex>].

    A malformed reference is only noticed by the kubelet (InvalidImageName) after the Job was created,
    and the pods then sit on their nodes until the Job's deadline; refusing it here costs nothing.
    """
    how = (
        "use registry.example.com/catalog-posttrain:0.1.0 or, pinned by digest, "
        "registry.example.com/catalog-posttrain@sha256:<64 hex digits>"
    )

    def bad(why: str) -> K8sConfigError:
        return K8sConfigError(f"{setting} {image!r} is not a valid image reference: {why}; {how}")

    if not image or image != image.strip() or any(ch.isspace() for ch in image):
        raise bad("it is empty or contains whitespace")
    name, at, digest = image.partition("@")
    if at and not _IMAGE_DIGEST.match(digest):
        raise bad(f"the digest {digest!r} must be 'sha256:' followed by 64 lowercase hex digits")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # a tag (a colon before the last slash is a registry port)
        name, tag = name[:colon], name[colon + 1 :]
        if not _IMAGE_TAG.match(tag):
            raise bad(f"the tag {tag!r} must be up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")
    parts = name.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        if not _IMAGE_DOMAIN.match(first):
            raise bad(f"the registry {first!r} is not a host name or address with an optional port")
        parts = parts[1:]
    for part in parts:
        if not _IMAGE_PATH.match(part):
            raise bad(
                f"the repository path component {part!r} must be lowercase letters and digits, "
                "separated by '.', '_', '__' or '-'"
            )
    if len(name) > 255:
        raise bad("the repository name is longer than 255 characters")
    return image


def validate_job_spec(spec: TrainingJobSpec) -> None:
    """Raise `K8sConfigError` for the first setting of `spec` that cannot make a runnable Job."""
    _check_shape(spec)
    _check_image_and_deadlines(spec)
    _check_quantities_and_volume(spec)
    _check_pod_settings(spec)


def _check_shape(spec: TrainingJobSpec) -> None:
    check_dns_label(spec.name, "job name")
    check_dns_label(spec.namespace, "namespace")
    if len(spec.pod_hostname(spec.nodes - 1)) > 63:
        raise K8sConfigError(f"job name {spec.name!r} is too long for pod hostnames '<name>-<index>'")
    if spec.nodes < 1 or spec.procs_per_node < 1:
        raise K8sConfigError(f"nodes and procs_per_node must be >= 1, got {spec.nodes} x {spec.procs_per_node}")
    if spec.gpus_per_node < 0:
        raise K8sConfigError(f"gpus_per_node must be >= 0, got {spec.gpus_per_node}")
    if spec.gpus_per_node and spec.procs_per_node > spec.gpus_per_node:
        raise K8sConfigError(
            f"procs_per_node={spec.procs_per_node} exceeds gpus_per_node={spec.gpus_per_node}: "
            "each trainer process needs its own GPU (set procs_per_node <= gpus_per_node)"
        )


def _check_image_and_deadlines(spec: TrainingJobSpec) -> None:
    if not spec.image:
        raise K8sConfigError("image is empty: set the trainer image built from deploy/Dockerfile (K8S_IMAGE)")
    check_image_reference(spec.image)
    if not ACTIVE_DEADLINE_MIN_S <= spec.active_deadline_seconds <= ACTIVE_DEADLINE_MAX_S:
        raise K8sConfigError(
            f"active_deadline_seconds={spec.active_deadline_seconds} (K8S_ACTIVE_DEADLINE_SECONDS) must be between "
            f"{ACTIVE_DEADLINE_MIN_S} and {ACTIVE_DEADLINE_MAX_S} (7 days): Kubernetes stops the training Job "
            "after it, and until then the Job holds its nodes even with no launcher watching (default 86400 = 24 h)"
        )
    if not 60 <= spec.rdzv_join_timeout_seconds <= 86400:
        raise K8sConfigError(
            f"rdzv_join_timeout_seconds={spec.rdzv_join_timeout_seconds} (K8S_RDZV_JOIN_TIMEOUT_SECONDS) must be "
            "between 60 and 86400: it bounds how long a pod waits at the rendezvous for the other nodes "
            "(default 600)"
        )


def _check_quantities_and_volume(spec: TrainingJobSpec) -> None:
    for what, value in (("cpu", spec.cpu), ("memory", spec.memory), ("shm_size", spec.shm_size)):
        if not _QUANTITY.match(value):
            raise K8sConfigError(f"{what}={value!r} is not a Kubernetes quantity (e.g. '8', '500m', '32Gi')")
    if spec.tmp_size and not _QUANTITY.match(spec.tmp_size):
        raise K8sConfigError(f"tmp_size={spec.tmp_size!r} is not a Kubernetes quantity (e.g. '10Gi')")
    if spec.artifacts_url:
        if not spec.artifacts_url.startswith("s3://"):
            raise K8sConfigError(
                f"artifacts_url={spec.artifacts_url!r} must be an s3://bucket/prefix URL (ARTIFACTS_URL)"
            )
        if not spec.config_key:
            raise K8sConfigError(
                "artifacts_url is set but config_key is empty: the launcher publishes the config first"
            )
        if not _QUANTITY.match(spec.artifacts_scratch_size):
            raise K8sConfigError(
                f"artifacts_scratch_size={spec.artifacts_scratch_size!r} is not a Kubernetes quantity (e.g. '200Gi')"
            )
    elif not spec.artifacts_pvc:
        raise K8sConfigError(
            "artifacts_pvc is empty: training needs a shared ReadWriteMany volume for its checkpoints "
            "(K8S_ARTIFACTS_PVC), or artifacts on an object store (ARTIFACTS_URL)"
        )
    if not spec.artifacts_mount_path.startswith("/"):
        raise K8sConfigError(f"artifacts_mount_path {spec.artifacts_mount_path!r} must be an absolute path")
    if not spec.config_path.startswith(spec.artifacts_mount_path.rstrip("/") + "/"):
        raise K8sConfigError(
            f"the training config {spec.config_path} is not on the shared artifact volume mounted at "
            f"{spec.artifacts_mount_path}: pods could not read it (check K8S_ARTIFACTS_MOUNT_PATH)"
        )


def _check_pod_settings(spec: TrainingJobSpec) -> None:
    if spec.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
        raise K8sConfigError(f"image_pull_policy {spec.image_pull_policy!r}: use Always, IfNotPresent or Never")
    if spec.run_as_user <= 0:
        raise K8sConfigError("run_as_user must be a non-root uid (> 0): pods run under the restricted policy")
    for name, value in spec.env.items():
        if not _ENV_NAME.match(name):
            raise K8sConfigError(f"env name {name!r} is not a valid environment variable name")
        if _SECRETISH.search(name):
            raise K8sConfigError(
                f"env {name} looks like a secret: give it as secret_env {{'{name}': 'secret-name/key'}} "
                "so the value stays in a Kubernetes Secret, not in the Job"
            )
        if not isinstance(value, str):
            raise K8sConfigError(f"env {name} must be a string, got {value!r}")
    for name, ref in spec.secret_env.items():
        if not _ENV_NAME.match(name):
            raise K8sConfigError(f"secret_env name {name!r} is not a valid environment variable name")
        secret, _, key = ref.partition("/")
        if not secret or not key:
            raise K8sConfigError(f"secret_env {name}={ref!r} must be 'secret-name/key'")
        if len(secret) > 253 or not _DNS_SUBDOMAIN.match(secret):
            raise K8sConfigError(f"secret_env {name}: {secret!r} is not a valid Secret name")
