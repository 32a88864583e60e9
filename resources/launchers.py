"""Training launchers: run a trainer module (`training.sft`, `training.dpo`) on N nodes x M processes.

One small interface for every backend (local torchrun here; Kubernetes in resources/kubernetes/):
`launch(context, train_config, output_dir)` runs the trainer to completion under a
Dagster Pipes session and returns what rank 0 reported. Rank 0 is the only
process that talks to Dagster; every rank's output is streamed into the run's
logs; a failed rank fails the materialization with that rank's error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from core.object_store import VersionStore
from core.settings import DEFAULT_TRAINING_MAX_WALL_CLOCK_S
from training.artifact_sync import RESULT_ENV as SYNC_RESULT_ENV
from training.artifact_sync import ROOT_ENV as SYNC_ROOT_ENV
from training.artifact_sync import URL_ENV as SYNC_URL_ENV
from training.artifact_sync import ArtifactSync
from training.torchrun_logs import diagnose

REPO_ROOT = Path(__file__).resolve().parent.parent
# Runs each torchrun agent so that it dies with this process (see training/lifeline.py). Stdlib only, run by path.
LIFELINE_SCRIPT = REPO_ROOT / "training" / "lifeline.py"
# Under training_job's dagster/max_runtime: the trainer stops first (core.settings holds both defaults).
DEFAULT_MAX_WALL_CLOCK_S = float(DEFAULT_TRAINING_MAX_WALL_CLOCK_S)


@dataclass
class LaunchResult:
    output_dir: Path
    summary: dict[str, Any]
    reported_metadata: dict[str, Any] = field(default_factory=dict)
    progress: list[dict[str, Any]] = field(default_factory=list)
    data_version: str | None = None


class TrainingLauncher(dg.ConfigurableResource):
    """The launcher interface. Implementations run the trainer and return its results."""

    def launch(
        self,
        context: dg.AssetExecutionContext,
        train_config: dict[str, Any],
        output_dir: Path,
        entry_point: str = "training.sft",
    ) -> LaunchResult:
        """Run `python -m <entry_point> --config <train_config> --resume` and return its results."""
        raise NotImplementedError

    @property
    def world_size(self) -> int:
        raise NotImplementedError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_train_config(train_config: dict[str, Any], output_dir: Path) -> Path:
    """The config file is the whole contract with the trainer; it sits next to its outputs."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "train_config.json"
    path.write_text(json.dumps(train_config, indent=2, sort_keys=True))
    return path


class LocalTorchrunLauncher(TrainingLauncher):
    """`torchrun` on this machine: `nnodes` agents x `nproc_per_node` processes.

    With nnodes > 1 every agent runs here and meets the others through a c10d
    rendezvous on 127.0.0.1 — the same code path a multi-node cluster uses.
    """

    nnodes: int = 1
    nproc_per_node: int = 2
    python_executable: str = ""
    working_dir: str = ""  # where `-m training.sft` is resolved; default: this checkout
    threads_per_process: int = 1
    extra_env: dict[str, str] = Field(default_factory=dict)
    termination_timeout_s: float = 30.0  # SIGTERM -> SIGKILL grace when trainers are stopped
    # Wall-clock budget of one launch (all agents, from start to exit); 0 = none. Past it the trainers are stopped
    # (SIGTERM, grace, SIGKILL) and the step fails without a step retry: the checkpoints stay for a re-execution.
    max_wall_clock_s: float = DEFAULT_MAX_WALL_CLOCK_S
    # Artifacts on an object store (ARTIFACTS_URL): rank 0 publishes every checkpoint there and a launch fetches
    # the newest published one first, so a run retried on another machine (a new run worker pod) resumes.
    artifacts_url: str = ""
    artifacts_root: str = ""  # the local mirror of artifacts_url (the artifact cache)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def artifact_env(self, output_dir: Path, log: Any) -> dict[str, str]:
        """With artifacts on an object store: fetch the run's newest published checkpoint, and the trainer's
        environment for publishing the next ones (the result is published by the asset, as a version)."""
        if not self.artifacts_url:
            return {}
        sync = ArtifactSync(VersionStore(self.artifacts_url.rstrip("/")), Path(self.artifacts_root))
        fetched = sync.pull_checkpoint(output_dir)
        if fetched is not None:
            log.info(f"fetched checkpoint {fetched.name} of this run from {self.artifacts_url} to resume from")
        return {SYNC_URL_ENV: self.artifacts_url, SYNC_ROOT_ENV: self.artifacts_root, SYNC_RESULT_ENV: "0"}

    def commands(
        self, config_path: Path, log_dir: Path, port: int, entry_point: str = "training.sft"
    ) -> list[list[str]]:
        """One torchrun command per node (agent)."""
        python = self.python_executable or sys.executable
        base = [python, "-m", "torch.distributed.run", "--nnodes", str(self.nnodes)]
        base += ["--nproc-per-node", str(self.nproc_per_node), "--tee", "3"]
        tail = ["-m", entry_point, "--config", str(config_path), "--resume"]
        if self.nnodes == 1:
            return [[*base, "--standalone", "--log-dir", str(log_dir / "node0"), *tail]]
        rdzv = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"local-{port}"]
        return [
            [*base, *rdzv, "--node-rank", str(n), "--log-dir", str(log_dir / f"node{n}"), *tail]
            for n in range(self.nnodes)
        ]

    def launch(
        self,
        context: dg.AssetExecutionContext,
        train_config: dict[str, Any],
        output_dir: Path,
        entry_point: str = "training.sft",
    ) -> LaunchResult:
        if self.nnodes < 1 or self.nproc_per_node < 1:
            raise dg.Failure(f"nnodes and nproc_per_node must be >= 1, got {self.nnodes} x {self.nproc_per_node}")
        config_path = write_train_config(train_config, output_dir)
        log_dir = output_dir / "torchrun_logs"
        commands = self.commands(config_path, log_dir, free_port(), entry_point)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.threads_per_process),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])),
            **self.artifact_env(output_dir, context.log),
            **self.extra_env,
        }
        context.log.info(f"launching {self.nnodes} node(s) x {self.nproc_per_node} process(es): {commands[0]}")
        with dg.open_pipes_session(
            context=context,
            context_injector=dg.PipesTempFileContextInjector(),
            message_reader=dg.PipesTempFileMessageReader(),
            extras={"output_dir": str(output_dir)},
        ) as session:
            pipes_env = session.get_bootstrap_env_vars()
            # Only node 0 hosts global rank 0, the one process that reports through Pipes.
            envs = [{**env, **pipes_env}] + [env] * (len(commands) - 1)
            cwd = Path(self.working_dir) if self.working_dir else REPO_ROOT
            codes, output, timed_out = _run_all(
                commands,
                envs,
                cwd=cwd,
                context=context,
                grace=self.termination_timeout_s,
                max_wall_clock_s=self.max_wall_clock_s,
            )
        if timed_out:
            raise wall_clock_failure(self.max_wall_clock_s, output_dir, codes, log_dir)
        if any(codes):
            failure = diagnose(output, log_dir / "node0" if self.nnodes == 1 else None)
            context.log.error(f"training failed: {failure.headline()}\n{failure.error}")
            # A rank killed by a signal (OOM killer, lost node) is worth a retry, which resumes from the last
            # checkpoint; a rank that raised (bad config, bad data, a bug) would fail the same way again.
            transient = failure.exit_code is not None and failure.exit_code < 0
            raise dg.Failure(
                description=f"training failed: {failure.headline()}",
                allow_retries=transient,
                metadata={
                    "exit_codes": dg.MetadataValue.json(codes),
                    "failed_rank": failure.rank if failure.rank is not None else -1,
                    "retryable": transient,
                    "error": dg.MetadataValue.md(f"```\n{failure.error}\n```"),
                    "logs": dg.MetadataValue.path(str(log_dir)),
                },
            )
        return collect_result(session, output_dir)


def wall_clock_failure(limit_s: float, output_dir: Path, codes: list[int], log_dir: Path) -> dg.Failure:
    """The step failure for a launch stopped at its wall-clock limit: not retried, since a retry would only
    spend the same budget again; a re-execution of the run resumes from the checkpoints that were kept."""
    checkpoints = output_dir / "checkpoints"
    return dg.Failure(
        description=(
            f"training stopped after the wall-clock limit of {limit_s:g} s (LocalTorchrunLauncher.max_wall_clock_s, "
            f"env TRAINING_MAX_WALL_CLOCK_SECONDS). Its checkpoints are kept in {checkpoints}: raise the limit or "
            "lower max_steps, then re-execute this run from failure to resume from the newest checkpoint."
        ),
        allow_retries=False,
        metadata={
            "wall_clock_limit_s": limit_s,
            "exit_codes": dg.MetadataValue.json(codes),
            "retryable": False,
            "checkpoints": dg.MetadataValue.path(str(checkpoints)),
            "logs": dg.MetadataValue.path(str(log_dir)),
        },
    )


def collect_result(session: Any, output_dir: Path) -> LaunchResult:
    """What rank 0 reported through Pipes, plus summary.json from disk (the source of truth)."""
    summary_path = output_dir / "summary.json"
    if not summary_path.is_file():
        raise dg.Failure(f"the trainer exited cleanly but wrote no {summary_path}")
    summary = json.loads(summary_path.read_text())
    metadata: dict[str, Any] = {}
    data_version = None
    for result in session.get_results():
        if isinstance(result, dg.MaterializeResult):
            metadata.update(result.metadata or {})
            data_version = result.data_version.value if result.data_version else None
    progress = [m for m in session.get_custom_messages() if isinstance(m, dict) and m.get("kind") == "progress"]
    return LaunchResult(
        output_dir=output_dir, summary=summary, reported_metadata=metadata, progress=progress, data_version=data_version
    )


def lifeline_command(cmd: Sequence[str], lifeline_fd: int, grace: float) -> list[str]:
    """`cmd` (a python -m torch.distributed.run ...) run through training/lifeline.py with the same interpreter."""
    head = [cmd[0], str(LIFELINE_SCRIPT), "--parent", str(os.getpid()), "--fd", str(lifeline_fd)]
    return [*head, "--grace", f"{grace:g}", "--", *cmd]


def _run_all(
    commands: Sequence[Sequence[str]],
    envs: Sequence[dict[str, str]],
    *,
    cwd: Path,
    context: dg.AssetExecutionContext,
    grace: float,
    max_wall_clock_s: float = 0.0,
) -> tuple[list[int], str, bool]:
    """Start every agent, stream their output into this process's stdout (captured by Dagster).

    Returns (exit codes, output tail, whether the wall-clock limit stopped them). Each agent is its own session
    (the process-group kill below reaches torchrun, which stops its ranks) and dies with this process: on Linux
    the kernel sends it SIGTERM when the *thread* that forked it exits (PR_SET_PDEATHSIG), so the agents are
    started and waited for by this same thread, which does not return while any of them runs.
    """
    tail: deque[str] = deque(maxlen=4000)
    lock = threading.Lock()
    # The lifeline pipe: its write end lives only in this process (non-inheritable); where prctl is missing the
    # wrapper stops its agent when the read end reaches EOF, i.e. when this process is gone.
    lifeline_read, lifeline_write = os.pipe()
    procs: list[subprocess.Popen[str]] = []
    try:
        for cmd, env in zip(commands, envs, strict=True):
            procs.append(
                subprocess.Popen(
                    lifeline_command(cmd, lifeline_read, grace),
                    cwd=cwd,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                    pass_fds=(lifeline_read,),
                )
            )
    except BaseException:  # an agent that started must not outlive a launch that failed to start the others
        _terminate(procs, grace)
        os.close(lifeline_write)
        raise
    finally:
        os.close(lifeline_read)

    def pump(index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        prefix = f"[node{index}]" if len(procs) > 1 else ""
        for line in proc.stdout:
            with lock:
                tail.append(prefix + line)
                sys.stdout.write(prefix + line)
                sys.stdout.flush()

    threads = [threading.Thread(target=pump, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + max_wall_clock_s if max_wall_clock_s > 0 else None
    timed_out = False
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):  # one agent failed: the others must not hang
                _terminate(procs, grace)
                break
            if deadline is not None and time.monotonic() >= deadline:
                context.log.error(f"training ran past its wall-clock limit of {max_wall_clock_s:g} s: stopping it")
                timed_out = True
                _terminate(procs, grace)
                break
            time.sleep(0.2)
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
        context.log.warning("run terminated: stopping the trainer processes")
        _terminate(procs, grace)
        raise
    except BaseException:
        _terminate(procs, grace)
        raise
    finally:
        os.close(lifeline_write)
    codes = [p.wait() for p in procs]
    for thread in threads:
        thread.join(timeout=10)
    return codes, "".join(tail), timed_out


def _terminate(procs: Sequence[subprocess.Popen[str]], grace: float) -> None:
    """SIGTERM each agent's process group, SIGKILL what is left after `grace` seconds."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
