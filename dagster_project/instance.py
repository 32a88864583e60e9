"""Prepare DAGSTER_HOME for the embedded default (`python -m dagster_project.instance`), and its run launcher.

The embedded default runs everything on one host: `dagster dev` starts the webserver, the daemon and a code
server, and the code server starts one run worker process per run. `LocalRunLauncher` lets the daemon's run
monitoring notice a run whose worker is gone, which Dagster's DefaultRunLauncher cannot (see its docstring).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import DagsterEventType, DagsterInstance, DefaultRunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import GRPC_INFO_TAG

INSTANCE_TEMPLATE = Path(__file__).with_name("instance_config.yaml")
LAUNCHER_CLASS = "LocalRunLauncher"
log = logging.getLogger(__name__)

# /proc/<pid>/stat gives a start time in clock ticks after boot and /proc/stat the boot time in whole seconds:
# allow for that rounding when comparing with the RUN_START timestamp.
_START_TIME_SLACK_S = 2.0


class LocalRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose run workers the daemon can health-check: for deployments on ONE host.

    Dagster's DefaultRunLauncher says `supports_check_run_worker_health = False`, so with run monitoring on the
    daemon still never looks at a STARTED run's worker. The code server notices a dead worker, but only while it
    lives itself: when both are gone (`dagster dev` killed or OOM-killed, the host restarted) the run stays
    STARTED for good, holding its tag-limit lane (ingestion) and its pool slot (training), so nothing queued
    behind it ever starts. This launcher answers the health check from the run's own event log: the process
    that wrote RUN_START is the run worker; if no such process is alive (a pid since reused by a younger process
    does not count), the worker is gone and the daemon marks the run FAILURE.

    Only valid where the daemon sees the run workers' processes (same host, same pid namespace), which is what
    `dagster dev` gives. Runs served by a code server at a non-local TCP address are left alone (RUNNING).
    """

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = run_worker(self._instance, run)
        if worker is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no RUN_START event yet: nothing to check")
        pid, started_at = worker
        if not served_locally(run):
            return CheckRunHealthResult(WorkerStatus.RUNNING, "run worker on another host: not checked")
        if process_alive_since(pid, started_at):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker pid {pid} is alive", run_worker_id=str(pid))
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"the run worker (pid {pid}) that started this run is gone without reporting the run's end "
            "(killed, out of memory, or its host restarted)",
            run_worker_id=str(pid),
        )


def run_worker(instance: DagsterInstance, run: DagsterRun) -> tuple[int, float] | None:
    """(pid, timestamp) of the process that wrote the run's RUN_START event: its run worker."""
    records = instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.RUN_START, limit=1, ascending=False
    ).records
    if not records:
        return None
    entry = records[0].event_log_entry
    pid = entry.dagster_event.pid if entry.dagster_event else None
    return (pid, entry.timestamp) if pid else None


def served_locally(run: DagsterRun) -> bool:
    """Whether the run's code server (and so its worker) is on this host; runs executed in-process are."""
    raw = run.tags.get(GRPC_INFO_TAG)
    if not raw:
        return True
    try:
        info = json.loads(raw)
    except ValueError:
        return False
    if info.get("socket"):  # a unix socket is reachable from this host only
        return True
    return info.get("host") in {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}


def process_alive_since(pid: int, not_after: float) -> bool:
    """Whether `pid` is a live (non-zombie) process that already existed at UNIX time `not_after`."""
    started = _start_time_from_proc(pid) if Path("/proc/self/stat").exists() else _start_time_from_ps(pid)
    return started is not None and started <= not_after + _START_TIME_SLACK_S


def _start_time_from_proc(pid: int) -> float | None:
    """Linux: the start time of a live process from /proc; None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    if fields[0] in ("Z", "X"):  # exited, waiting to be reaped
        return None
    return float(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: starttime


def _start_time_from_ps(pid: int) -> float | None:
    """Elsewhere (macOS): `ps` gives the state and the start time (local time, whole seconds)."""
    proc = subprocess.run(
        ["ps", "-o", "stat=", "-o", "lstart=", "-p", str(pid)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},  # English month and day names for strptime
    )
    line = proc.stdout.strip()
    if proc.returncode != 0 or not line:
        return None
    state, _, lstart = line.partition(" ")
    if state.startswith("Z"):
        return None
    try:
        return time.mktime(time.strptime(" ".join(lstart.split()), "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return 0.0  # alive, start time unreadable: count it as the worker rather than fail a live run


# ---- DAGSTER_HOME ----------------------------------------------------------------------------------------------


def instance_config_gaps(config: Mapping[str, Any]) -> list[str]:
    """What an instance config lacks for dead runs to stop blocking others (empty when nothing)."""
    gaps = []
    monitoring = config.get("run_monitoring") or {}
    if not monitoring.get("enabled"):
        gaps.append("run_monitoring.enabled is not true: runs whose worker died stay STARTED and block their lane")
    elif not monitoring.get("free_slots_after_run_end_seconds"):
        gaps.append(
            "run_monitoring.free_slots_after_run_end_seconds is not set: a dead run's training pool slot is never freed"
        )
    launcher = config.get("run_launcher") or {}
    if launcher.get("class") is None:
        gaps.append(
            f"run_launcher is Dagster's default: set module dagster_project.instance, class {LAUNCHER_CLASS} so the "
            "daemon notices a run worker that died together with its code server"
        )
    return gaps


def check_instance_config(home: Path) -> list[str]:
    """Validate DAGSTER_HOME/dagster.yaml with Dagster's own loader and log what it lacks; returns the gaps."""
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(home))
    gaps = instance_config_gaps(config)
    if gaps:
        log.warning(
            "%s was not created from %s and is left as it is; it lacks:\n  - %s\nCopy those settings from %s.",
            home / "dagster.yaml",
            INSTANCE_TEMPLATE.name,
            "\n  - ".join(gaps),
            INSTANCE_TEMPLATE,
        )
    return gaps


def ensure_dagster_home() -> Path:
    """Create DAGSTER_HOME (default PLATFORM_HOME/dagster) with our dagster.yaml unless one exists.

    An existing dagster.yaml is the operator's (storage, launcher, limits they chose): it is never rewritten, but
    what it lacks for run monitoring is logged as a warning with the file to copy the settings from.
    """
    from core.settings import dagster_home

    home = dagster_home()
    # Exported for this process: Dagster's own DagsterInstance.get() (the demo's runs) reads DAGSTER_HOME.
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(INSTANCE_TEMPLATE, config)
    else:
        check_instance_config(home)
    return home


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(message)s", stream=sys.stderr)
    print(ensure_dagster_home())
