"""Runs that die must not block anything, end to end: a real daemon, a real code server, real (tiny) training.

Platform: a temporary PLATFORM_HOME seeded like the dagster dev tests (catalog, one day, a tiny base model and
its shards), a `dagster api grpc` code server for the platform's definitions, and `dagster-daemon run` with the
instance template (QueuedRunCoordinator, the "training" pool of 1, run monitoring) polling every 2 s.

Two training runs are queued; the second waits for the training pool. Then:
1. the first run's worker is SIGKILLed while torchrun trains: the run ends FAILURE, its trainers exit, its pool
   slot comes back and the queued run starts training;
2. the second run's worker is SIGKILLed together with the code server (what `dagster dev` being killed or the
   host restarting does): nothing is left to report the run's end but run monitoring, which marks it FAILURE.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import dagster as dg
import pytest
import yaml
from support.dagster_dev_platform import BIN, REPO, SEED, SMALL_ENV, free_port
from support.processes import kill_all, processes_mentioning, wait_gone

from dagster_project.instance import INSTANCE_TEMPLATE, run_worker

pytestmark = pytest.mark.slow
POLL_S = 2  # run monitoring's poll interval in this test's dagster.yaml
T = TypeVar("T")
# Long enough that it is still training when killed; tiny model and sequences so that each step is quick.
ENDLESS_TRAINING = {
    "ops": {
        "trained_checkpoint": {
            "config": {
                "max_steps": 100000,
                "seq_len": 256,
                "micro_batch_rows": 2,
                "grad_accum_steps": 1,
                "warmup_steps": 1,
                "checkpoint_every": 100000,
                "log_every": 50,
            }
        }
    }
}


def wait_for(what: str, check: Callable[[], T | None], timeout: float, log: Path | None = None) -> T:
    """Poll `check` until it returns something truthy (the event waited for); fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    tail = log.read_text()[-4000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


class Platform:
    def __init__(self, tmp_path: Path) -> None:
        self.home = tmp_path / "home"
        self.dagster_home = self.home / "dagster"
        self.dagster_home.mkdir(parents=True)
        config = yaml.safe_load(INSTANCE_TEMPLATE.read_text())
        config["run_monitoring"].update(poll_interval_seconds=POLL_S, free_slots_after_run_end_seconds=POLL_S)
        (self.dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.workspace = tmp_path / "workspace.yaml"
        server = {"host": "127.0.0.1", "port": self.port, "location_name": "catalog_posttrain"}
        self.workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": server}]}))
        self.run_config = tmp_path / "endless.yaml"
        self.run_config.write_text(json.dumps(ENDLESS_TRAINING))
        self.log = tmp_path / "platform.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "PLATFORM_", "SYNTHETIC_"))},
            **SMALL_ENV,
            "PLATFORM_HOME": str(self.home),
            "DAGSTER_HOME": str(self.dagster_home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        self.services: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with open(self.log, "a") as log:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.services[name] = proc
        return proc

    def start_code_server(self) -> subprocess.Popen:
        grpc = [str(BIN / "dagster"), "api", "grpc", "-m", "dagster_project.definitions"]
        return self.start("code_server", [*grpc, "-h", "127.0.0.1", "-p", str(self.port)])

    def launch_training(self, count: int) -> None:
        """`count` x `dagster job launch` (in parallel) through the instance's run queue; retried until the code
        server answers."""
        cmd = [str(BIN / "dagster"), "job", "launch", "-w", str(self.workspace), "-j", "training_job"]
        cmd += ["-c", str(self.run_config), "--tags", json.dumps({"dagster/max_retries": "0"})]
        pending = count
        deadline = time.monotonic() + 240
        while pending:
            assert time.monotonic() < deadline, f"dagster job launch kept failing:\n{self.log.read_text()[-4000:]}"
            procs = [
                subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for _ in range(pending)
            ]
            pending = sum(proc.wait() != 0 for proc in procs)

    def stop(self) -> None:
        """Kill every service's process group and every process working under this PLATFORM_HOME."""
        for proc in self.services.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        leftovers = [pid for pid, _ in processes_mentioning(str(self.home))]
        kill_all(leftovers)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    platform = Platform(tmp_path)
    # Create the SQLite storage once, before three processes (seed, code server, daemon) open it at the same time.
    with dg.DagsterInstance.from_config(str(platform.dagster_home)):
        pass
    try:
        seed = subprocess.Popen(
            [sys.executable, "-c", SEED], cwd=REPO, env=platform.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        platform.services["seed"] = seed
        platform.start_code_server()
        platform.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(platform.workspace)])
        out, _ = seed.communicate(timeout=600)
        assert seed.returncode == 0, f"seeding failed:\n{out.decode()[-4000:]}"
        yield platform
    finally:
        platform.stop()


def trainers_of(run_id: str) -> list[tuple[int, str]]:
    """torchrun and its ranks working for `run_id` (their config path holds the run's staging dir)."""
    return [(pid, cmd) for pid, cmd in processes_mentioning(run_id) if "training.sft" in cmd]


def training_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return sorted(instance.get_runs(dg.RunsFilter(job_name="training_job")), key=lambda r: r.run_id)


def test_a_dead_run_worker_blocks_nothing_and_leaves_no_trainer(platform: Platform) -> None:
    with dg.DagsterInstance.from_config(str(platform.dagster_home)) as instance:
        platform.launch_training(2)
        runs = training_runs(instance)
        assert len(runs) == 2
        rank = "-u -m training.sft"  # a rank process, started by torchrun after the agent
        first = wait_for(
            "a training run's trainer",
            lambda: next((r for r in runs if any(rank in cmd for _, cmd in trainers_of(r.run_id))), None),
            timeout=300,
            log=platform.log,
        )
        (second,) = [r for r in runs if r.run_id != first.run_id]
        assert trainers_of(second.run_id) == []  # held back by the training pool (limit 1)

        # 1. The run worker dies mid-step (SIGKILL: no handler runs, nothing is reported).
        worker = run_worker(instance, instance.get_run_by_id(first.run_id))
        assert worker is not None
        os.kill(worker[0], signal.SIGKILL)
        wait_for(
            "the first run to end FAILURE",
            lambda: instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.FAILURE,
            timeout=10 * POLL_S,
        )
        assert wait_gone(pid for pid, _ in trainers_of(first.run_id)) == []
        # torchrun, its ranks, the lifeline: nothing is left. Dagster's own compute-log `tail -F` of the dead
        # worker also mentions the run; Dagster's orphan watcher ends it on its next poll, so wait, don't peek.
        assert wait_gone(pid for pid, _ in processes_mentioning(first.run_id)) == []
        wait_for(
            "the queued run to get the training pool and train",
            lambda: any(rank in cmd for _, cmd in trainers_of(second.run_id)),
            timeout=300,
            log=platform.log,
        )

        # 2. The run worker dies together with its code server: only run monitoring can end the run now.
        worker = run_worker(instance, instance.get_run_by_id(second.run_id))
        assert worker is not None
        code_server = platform.services["code_server"]
        os.killpg(code_server.pid, signal.SIGKILL)  # the server's group: it and the run workers it spawned
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker[0], signal.SIGKILL)
        code_server.wait()
        wait_for(
            "run monitoring to mark the second run FAILURE",
            lambda: instance.get_run_by_id(second.run_id).status == dg.DagsterRunStatus.FAILURE,
            timeout=15 * POLL_S,
            log=platform.log,
        )
        messages = [e.message or "" for e in instance.all_logs(second.run_id)]
        assert any(f"run worker (pid {worker[0]})" in m for m in messages), messages[-5:]
        assert wait_gone(pid for pid, _ in trainers_of(second.run_id)) == []
        assert processes_mentioning(second.run_id) == []
