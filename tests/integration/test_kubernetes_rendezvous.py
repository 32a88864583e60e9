"""A trainer pod waiting alone at the rendezvous gives up, and the Job's retry budget bounds the rest.

When a node is lost and only one replacement pod can be scheduled, that pod waits at torchrun's c10d
rendezvous for a peer that does not come. torchrun's join_timeout ends the wait; the entry point turns
the rendezvous timeout into the "lost peer" exit code, which the Job counts toward backoffLimit. So a
lone pod holds its node for about join_timeout per attempt, never until the Job's activeDeadlineSeconds.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from support.training_builders import REPO
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import _get_timeout
from torch.distributed.run import config_from_args, get_args_parser

from resources.kubernetes import TrainingJobSpec, pod_failure_action
from training.k8s_node import PEER_LOST_EXIT_CODE

pytestmark = pytest.mark.kubernetes


def spec(**overrides: object) -> TrainingJobSpec:
    base: dict[str, object] = {
        "name": "sft-lone-abcde",
        "namespace": "training",
        "image": "registry.example.com/catalog-posttrain:0.1.0",
        "nodes": 2,
        "procs_per_node": 1,
        "config_path": "/platform/artifacts/trained_checkpoint/.tmp-run-1/train_config.json",
    }
    return TrainingJobSpec(**{**base, **overrides})  # type: ignore[arg-type]


def torchrun_args(job: TrainingJobSpec, index: int = 0) -> list[str]:
    """The container's torchrun arguments as the kubelet runs them for pod `index`."""
    return [a.replace("$(JOB_COMPLETION_INDEX)", str(index)) for a in job.container_args()]


def test_torchrun_reads_the_join_timeout_the_launcher_sets() -> None:
    args = torchrun_args(spec(rdzv_join_timeout_seconds=900))
    assert args[0] == "torchrun"
    parsed = get_args_parser().parse_args(args[1:])
    config, _, _ = config_from_args(parsed)
    params = RendezvousParameters(
        backend=config.rdzv_backend,
        endpoint=config.rdzv_endpoint,
        run_id=config.run_id,
        min_nodes=config.min_nodes,
        max_nodes=config.max_nodes,
        **config.rdzv_configs,
    )
    assert (config.min_nodes, config.max_nodes) == (2, 2)  # no elastic shrinking: all nodes or none
    assert _get_timeout(params, "join") == timedelta(seconds=900)


@pytest.mark.slow
def test_a_pod_alone_at_the_rendezvous_exits_as_a_lost_peer_after_the_join_timeout() -> None:
    """The real torchrun and entry point, one node of two; join_timeout shortened to 5 s for the test."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job = spec(rdzv_port=port)
    args = torchrun_args(job)
    args[args.index("--rdzv-endpoint") + 1] = f"127.0.0.1:{port}"  # pod 0's name -> this machine
    args[args.index("--local-addr") + 1] = "127.0.0.1"
    assert args[args.index("--rdzv-conf") + 1] == "join_timeout=600"  # the default the pods get
    args[args.index("--rdzv-conf") + 1] = "join_timeout=5"
    command = [sys.executable, "-m", "training.k8s_node", "--wait-for", "localhost", "--wait-seconds", "5", "--"]
    command += [sys.executable, "-m", "torch.distributed.run", *args[1:]]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == PEER_LOST_EXIT_CODE, done.stdout[-2000:] + done.stderr[-2000:]
    assert "RendezvousTimeoutError" in done.stderr
    assert "a peer or the rendezvous went away" in done.stdout
    # ... which the Job counts toward backoffLimit and replaces: bounded retries, not a 24 h wait
    failed = {
        "status": {
            "containerStatuses": [
                {"name": "trainer", "state": {"terminated": {"exitCode": done.returncode}}},
            ]
        }
    }
    assert pod_failure_action(job.pod_failure_policy(), failed) == "Count"
    assert job.job()["spec"]["backoffLimit"] == 2 * job.nodes
