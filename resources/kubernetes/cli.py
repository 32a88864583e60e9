"""`python -m resources.kubernetes render`: the Service and Job a launch would submit, printed as YAML
without a cluster, so a configuration can be reviewed (or applied by hand) before Dagster runs it.
"""

from __future__ import annotations

import argparse
import sys

from core.settings import K8S_DEFAULT_NAMESPACE
from resources.kubernetes.launcher import KubernetesTrainingLauncher, job_name_for
from resources.kubernetes.objects import render_yaml
from resources.kubernetes.validation import K8sConfigError

DESCRIPTION = "`KubernetesTrainingLauncher`: `training.sft` on N Kubernetes pods x M processes, as an Indexed Job."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resources.kubernetes", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="print the Service and Job a launch would submit, as YAML")
    render.add_argument("--image", required=True)
    render.add_argument("--nodes", type=int, default=2)
    render.add_argument("--procs-per-node", type=int, default=1)
    render.add_argument("--gpus-per-node", type=int, default=0)
    render.add_argument("--namespace", default=K8S_DEFAULT_NAMESPACE)
    render.add_argument("--cpu", default=None, help="CPU request = limit per pod (default: 8 per GPU, else 4)")
    render.add_argument("--memory", default=None, help="memory request = limit per pod (default: 64Gi/GPU, else 16Gi)")
    render.add_argument("--shm-size", default=None, help="/dev/shm size (default: 16Gi with GPUs, else 2Gi)")
    render.add_argument("--artifacts-pvc", default="catalog-posttrain-artifacts")
    render.add_argument("--artifacts-mount-path", default="/platform/artifacts")
    render.add_argument("--service-account", default="catalog-posttrain-trainer")
    render.add_argument("--run-id", default="00000000-0000-0000-0000-000000000000", help="Dagster run id (labels)")
    render.add_argument("--name", default=None, help="Job name (default: sft-<run id>-xxxxx)")
    args = parser.parse_args(argv)
    gpus = args.gpus_per_node
    launcher = KubernetesTrainingLauncher(
        namespace=args.namespace,
        image=args.image,
        nodes=args.nodes,
        procs_per_node=args.procs_per_node,
        gpus_per_node=gpus,
        cpu=args.cpu or (str(8 * gpus) if gpus else "4"),
        memory=args.memory or (f"{64 * gpus}Gi" if gpus else "16Gi"),
        shm_size=args.shm_size or ("16Gi" if gpus else "2Gi"),
        artifacts_pvc=args.artifacts_pvc,
        artifacts_mount_path=args.artifacts_mount_path,
        service_account=args.service_account,
    )
    name = args.name or job_name_for(args.run_id, "xxxxx")
    output_dir = f"{args.artifacts_mount_path.rstrip('/')}/trained_checkpoint/.tmp-run-{args.run_id}"
    labels = {"dagster/run-id": args.run_id, "dagster/job": "training_job", "dagster/asset": "trained_checkpoint"}
    annotations = {
        "dagster/run-id": args.run_id,
        "dagster/root-run-id": args.run_id,
        "dagster/job": "training_job",
        "dagster/asset-key": "trained_checkpoint",
        "catalog-posttrain/output-dir": output_dir,
        "catalog-posttrain/world-size": str(launcher.world_size),
    }
    try:
        spec = launcher.job_spec(name, f"{output_dir}/train_config.json", labels, annotations)
        sys.stdout.write(render_yaml(spec.objects()))
    except K8sConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
