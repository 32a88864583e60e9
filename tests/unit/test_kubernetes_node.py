"""`training.k8s_node`, the trainer container's entry point: DNS wait, pass-through of torchrun's
output (Pipes messages intact), and the exit code that tells the Job's podFailurePolicy whether a
failure is a lost peer (retry from the checkpoint) or an error in the code (fail the Job).
"""

import json
import subprocess
import sys

import pytest
from support.training_builders import REPO

from training.k8s_node import DNS_TIMEOUT_EXIT_CODE, PEER_LOST_EXIT_CODE, classify, rank_error

pytestmark = pytest.mark.kubernetes

# What torchrun's stderr looks like here (`--tee 1`: worker stderr unprefixed) when a peer node dies.
PEER_LOST = """\
[rank 0] training failed:
Traceback (most recent call last):
  File "/app/training/sft.py", line 367, in main
  File "/app/training/distributed.py", line 46, in all_reduce_sum
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [10.244.1.7]:16559: \
Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application.

E1125 15:33:56.903000 1 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1) local_rank: 0
Traceback (most recent call last):
  File "torch/distributed/run.py", line 1032, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
training.sft FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-25_15:33:56
  host      : sft-x-0.sft-x.ns.svc.cluster.local
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 5)
============================================================
"""

# Rank 9 raised first (a corrupt shard); rank 8, on the same node, then lost its connection to it.
CODE_ERROR = """\
[rank 9] training failed:
Traceback (most recent call last):
  File "/app/training/data.py", line 88, in load_corpus
ValueError: shard /platform/artifacts/tokenized_shards/2026-01-03/v1/train-00003.parquet: sha256 mismatch
[rank 8] training failed:
Traceback (most recent call last):
RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error [10.244.1.8]:1: Connection reset by peer.
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Root Cause (first observed failure):
[0]:
  time      : 2026-11-25_15:33:56
  host      : sft-x-1.sft-x.ns.svc.cluster.local
  rank      : 9 (local_rank: 1)
  exitcode  : 1 (pid: 7)
"""

RENDEZVOUS_LOST = """\
Traceback (most recent call last):
  File "torch/distributed/elastic/rendezvous/dynamic_rendezvous.py", line 1100, in next_rendezvous
torch.distributed.elastic.rendezvous.api.RendezvousConnectionError: The connection to the C10d store has failed.
"""

OOM_KILLED = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Root Cause (first observed failure):
[0]:
  rank      : 2 (local_rank: 2)
  exitcode  : -9 (pid: 99)
"""


def test_a_lost_peer_is_retried() -> None:
    verdict = classify(1, PEER_LOST)
    assert (verdict.exit_code, verdict.kind, verdict.rank) == (PEER_LOST_EXIT_CODE, "peer_lost", 0)
    assert "Connection reset by peer" in verdict.headline()


def test_a_code_error_fails_even_when_other_ranks_then_lose_their_peer() -> None:
    verdict = classify(1, CODE_ERROR)
    assert (verdict.exit_code, verdict.kind, verdict.rank) == (1, "code_error", 9)
    assert verdict.headline().endswith("train-00003.parquet: sha256 mismatch")
    assert "Connection reset" not in rank_error(CODE_ERROR, 9)


def test_a_lost_rendezvous_store_is_retried_and_a_killed_worker_is_not() -> None:
    assert classify(1, RENDEZVOUS_LOST).exit_code == PEER_LOST_EXIT_CODE
    oom = classify(1, OOM_KILLED)
    assert (oom.kind, oom.rank, oom.exit_code) == ("code_error", 2, 1) and "SIGKILL" in oom.error
    assert classify(0, "").exit_code == 0


def _node(*args: str, wait_for: str = "localhost", wait_seconds: str = "10") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "training.k8s_node",
            "--wait-for",
            wait_for,
            "--wait-seconds",
            wait_seconds,
            "--",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_output_passes_through_whole_lines_and_success_exits_zero() -> None:
    message = json.dumps({"__dagster_pipes_version": "0.1", "method": "log", "params": {"message": "x" * 200_000}})
    script = (
        "import json, sys; print('step 1'); "
        "print(json.dumps({'__dagster_pipes_version': '0.1', 'method': 'log', 'params': {'message': 'x' * 200_000}}),"
        " file=sys.stderr)"
    )
    done = _node(sys.executable, "-c", script)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "localhost -> " in done.stdout and "step 1" in done.stdout
    assert message in done.stderr.splitlines()  # one intact line, 200 kB long


def test_the_exit_code_follows_the_failure_kind() -> None:
    peer = _node(sys.executable, "-c", f"import sys; sys.stderr.write({PEER_LOST!r}); sys.exit(1)")
    assert peer.returncode == PEER_LOST_EXIT_CODE
    assert "the Job replaces this pod and training resumes from the last checkpoint" in peer.stdout
    code = _node(sys.executable, "-c", f"import sys; sys.stderr.write({CODE_ERROR!r}); sys.exit(1)")
    assert code.returncode == 1 and "rank 9" in code.stdout and "so the Job fails" in code.stdout


def test_an_unresolvable_rendezvous_name_fails_with_its_own_exit_code() -> None:
    done = _node("true", wait_for="pod-0.no-such-service.invalid", wait_seconds="1")
    assert done.returncode == DNS_TIMEOUT_EXIT_CODE
    assert "pod-0.no-such-service.invalid did not resolve within 1s" in done.stdout
