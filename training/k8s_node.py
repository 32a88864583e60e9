"""The trainer container's entry point on Kubernetes: `python -m training.k8s_node --wait-for HOST -- torchrun ...`.

Runs inside each pod of the Indexed Job (no dagster import: it only needs the standard library):

1. waits until pod 0's stable DNS name resolves (the headless Service publishes it once
   pod 0 has an address; every pod, pod 0 included, needs it for the rendezvous);
2. runs the torchrun command given after `--`, passing its stdout and stderr through
   line by line (rank 0's Dagster Pipes messages travel on stderr as whole JSON lines);
3. turns torchrun's result into the exit code the Job's podFailurePolicy reads:
   0 = done; 75 = the first failed rank lost a peer or the rendezvous (a node went away):
   the Job replaces this pod and training resumes from the last checkpoint; any other
   non-zero code = an error in the training code or data: the Job fails at once.
   3 = pod 0's name never resolved (a configuration error).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from training.artifact_sync import ArtifactSync
from training.torchrun_logs import last_traceback, parse_root_cause

# The Job's podFailurePolicy (resources.kubernetes.objects) reads these; they are defined here only.
PEER_LOST_EXIT_CODE = 75  # EX_TEMPFAIL: a peer node or the rendezvous went away; retrying can succeed
DNS_TIMEOUT_EXIT_CODE = 3  # pod 0's name never resolved: a configuration problem, fails the Job
TAIL_LINES = 3000

# Exceptions that mean "a peer process, node or the rendezvous store went away", not "our code is wrong".
_PEER_LOST = re.compile(
    r"Connection reset by peer|Connection closed by peer|Broken pipe|Connection refused|No route to host"
    r"|Network is unreachable|DistNetworkError|DistStoreError|Rendezvous(Connection|Timeout|Closed)Error"
    r"|gloo/transport/tcp|Timed out waiting .* for peer|NCCL communicator was aborted"
    r"|remote process exited or there was a network error|ncclRemoteError|Watchdog caught collective operation timeout"
    r"|socket timeout|Socket Timeout|failed to recv, got 0 bytes|Connection timed out",
)
_TRAINER_FAILED = re.compile(r"^\[rank (?P<rank>\d+)\] training failed:\s*$", re.M)


def log(message: str) -> None:
    print(f"[k8s_node] {message}", flush=True)


def wait_for_name(host: str, timeout_s: float, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
    """The first address `host` resolves to, or None after `timeout_s`."""
    started = clock()
    last_report = started
    while True:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            if infos:
                return infos[0][4][0]
        except socket.gaierror:
            pass
        now = clock()
        if now - started >= timeout_s:
            return None
        if now - last_report >= 15:
            log(f"still waiting for {host} to resolve ({now - started:.0f}s)")
            last_report = now
        time.sleep(interval_s)


@dataclass(frozen=True)
class Verdict:
    exit_code: int
    kind: str  # "ok" | "peer_lost" | "code_error"
    rank: int | None
    error: str  # the failed rank's exception (last traceback), or the tail of the output

    def headline(self) -> str:
        last = next((ln.strip() for ln in reversed(self.error.splitlines()) if ln.strip()), "no error output")
        who = f"rank {self.rank}" if self.rank is not None else "torchrun"
        return f"{who}: {last}"


def rank_error(output: str, rank: int | None) -> str:
    """The traceback `training.sft` printed for `rank` ("[rank N] training failed:"), else torchrun's own."""
    blocks = list(_TRAINER_FAILED.finditer(output))
    if rank is not None:
        mine = [m for m in blocks if int(m["rank"]) == rank]
        if mine:
            start = mine[-1].end()
            following = [m.start() for m in blocks if m.start() > start]
            chunk = output[start : following[0] if following else len(output)]
            # stop at torchrun's own report, which follows the worker's traceback
            chunk = chunk.split("torch.distributed.elastic.multiprocessing.api")[0]
            chunk = re.split(r"^[EWI]\d{4} ", chunk, flags=re.M)[0]
            return last_traceback(chunk)
    return last_traceback(output)


def classify(returncode: int, output: str) -> Verdict:
    """What torchrun's exit means for the Job: done, a lost peer (retry) or an error in the code (fail).

    `output` is torchrun's stderr (with `--tee 1` the workers' stderr is not prefixed and holds their
    tracebacks; torchrun's own "Root Cause" report names the first failed rank).
    """
    if returncode == 0:
        return Verdict(0, "ok", None, "")
    rank, _local, code = parse_root_cause(output)
    error = rank_error(output, rank)
    if code is not None and code < 0:
        # A worker killed by a signal inside a live pod: the out-of-memory killer or a crash, not a lost peer.
        # (A disrupted pod is handled by its DisruptionTarget condition, whatever it exits with.)
        sig = -code
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return Verdict(returncode if returncode > 0 else 1, "code_error", rank, f"{error}\nkilled by {name}")
    if _PEER_LOST.search(error):
        return Verdict(PEER_LOST_EXIT_CODE, "peer_lost", rank, error)
    code_error = returncode if 0 < returncode < 256 and returncode != PEER_LOST_EXIT_CODE else 1
    return Verdict(code_error, "code_error", rank, error)


def run(argv: Sequence[str]) -> tuple[int, str]:
    """Run `argv`, copying its stdout/stderr to ours line by line; returns (exit code, tail of its stderr)."""
    err_tail: deque[str] = deque(maxlen=TAIL_LINES)
    lock = threading.Lock()
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def forward(sig: int, _frame: object) -> None:
        log(f"received {signal.Signals(sig).name}: stopping torchrun")
        if proc.poll() is None:
            proc.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    def pump(src, dst, tail: deque[str] | None) -> None:
        for raw in iter(src.readline, b""):
            with lock:
                dst.buffer.write(raw)  # whole lines: a Pipes message is one JSON line
                dst.buffer.flush()
            if tail is not None:
                tail.append(raw.decode("utf-8", errors="replace"))

    threads = [
        threading.Thread(target=pump, args=(proc.stdout, sys.stdout, None), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, sys.stderr, err_tail), daemon=True),
    ]
    for t in threads:
        t.start()
    code = proc.wait()
    for t in threads:
        t.join(timeout=30)
    return code, "".join(err_tail)


CONFIG_KEY_ENV = "POSTTRAIN_ARTIFACT_SYNC_CONFIG"  # where the launcher published this launch's config


def config_argument(command: Sequence[str]) -> str:
    """The trainer's --config path in the torchrun command."""
    for i, arg in enumerate(command):
        if arg == "--config" and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    raise ValueError(f"no --config in the trainer command {' '.join(command)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait-for", required=True, help="pod 0's DNS name (the rendezvous host)")
    parser.add_argument("--wait-seconds", type=float, default=600.0)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- torchrun ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the torchrun command after --")
    sys.stdout.reconfigure(line_buffering=True)
    pod = os.environ.get("POD_NAME", socket.gethostname())
    index = os.environ.get("JOB_COMPLETION_INDEX", "?")
    started = time.monotonic()
    address = wait_for_name(args.wait_for, args.wait_seconds)
    if address is None:
        log(
            f"{args.wait_for} did not resolve within {args.wait_seconds:.0f}s: is the headless Service "
            "(publishNotReadyAddresses) present and the pod's subdomain set to it?"
        )
        return DNS_TIMEOUT_EXIT_CODE
    log(f"pod {pod} (index {index}): {args.wait_for} -> {address} after {time.monotonic() - started:.1f}s")
    sync = ArtifactSync.from_env()
    if sync is not None:
        pulled = time.monotonic()
        try:
            sync.pull_inputs(os.environ[CONFIG_KEY_ENV], Path(config_argument(command)))
        except (OSError, RuntimeError) as exc:  # the store unreachable or throttling: a new pod may succeed
            log(f"could not fetch the inputs from {sync.store.url}: {exc}; exit {PEER_LOST_EXIT_CODE} to retry")
            return PEER_LOST_EXIT_CODE
        log(f"fetched the config, base model, shards and newest checkpoint in {time.monotonic() - pulled:.1f}s")
    code, output = run(command)
    verdict = classify(code, output)
    if verdict.kind == "ok":
        log("torchrun finished")
    elif verdict.kind == "peer_lost":
        log(
            f"torchrun exited {code}: a peer or the rendezvous went away ({verdict.headline()}); "
            f"exit {verdict.exit_code} so the Job replaces this pod and training resumes from the last checkpoint"
        )
    else:
        log(f"torchrun exited {code}: {verdict.headline()}; exit {verdict.exit_code} so the Job fails")
    return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
