"""A real `dagster dev` (webserver + daemon) on a temporary PLATFORM_HOME, shared by the e2e and browser tests.

`platform_session()` runs the whole operations story once per pytest session (both test modules import
the `dev_platform` fixture; the first one to run builds it, later ones reuse it):

1. seed: raw_catalog, day 1 (raw + curated), a tiny base_model and day 1's shards, in a subprocess;
   meanwhile `dagster dev` starts on a free loopback port;
2. `dagster job backfill -j ingestion_job --from DAY2 --to DAY4 --noprompt` from the CLI; wait for the runs;
3. `python -m core.synthetic drop` writes the next day; the landing sensor launches its ingestion run;
4. `dagster sensor start retraining_sensor`; it requests one (tiny) training run -> trained_checkpoint + eval_report.

What each step did (run ids, timings) is kept in `DevPlatform.facts` for the tests to assert on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.training_builders import NO_COMPILE_EXTRA_JSON, TINY_MODEL

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]  # day 1 seeded, days 2..3 backfilled
NEW_DAY = "2026-01-04"  # dropped by the synthetic CLI: the day after the newest existing drop
TINY_RETRAIN = {
    "ops": {
        "trained_checkpoint": {
            "config": {
                "max_steps": 6,
                "seq_len": 256,
                "micro_batch_rows": 2,
                "grad_accum_steps": 1,
                "warmup_steps": 1,
                "checkpoint_every": 3,
                "log_every": 2,
                "lr": 3e-3,
                "extra_json": NO_COMPILE_EXTRA_JSON,  # this story is about runs and sensors, not inductor
            }
        },
        "eval_report": {"config": {"generation_cases": 6, "max_new_tokens": 16, "batch_size": 8}},
    }
}
SMALL_ENV = {
    "SYNTHETIC_TITLES": "300",
    "SYNTHETIC_MEMBERS": "400",
    "PLATFORM_PARTITION_START": DAYS[0],
    "TRAINING_NPROC_PER_NODE": "1",
    "LANDING_SENSOR_INTERVAL_SECONDS": "5",
    "RETRAIN_SENSOR_INTERVAL_SECONDS": "5",
    "RETRAIN_MIN_NEW_LOSS_TOKENS": "1000",
}

SEED = f"""
import dagster as dg
from dagster_project.definitions import ASSETS
from dagster_project.instance import ensure_dagster_home
from dagster_project.resources import build_resources
from core.settings import load_settings

ensure_dagster_home()
instance = dg.DagsterInstance.get()
resources = build_resources(load_settings())
def run(selection, partition=None, config=None):
    ops = {{k: {{"config": v}} for k, v in (config or {{}}).items()}}
    result = dg.materialize(ASSETS, selection=selection, partition_key=partition, resources=resources,
                            instance=instance, run_config={{"ops": ops}})
    assert result.success, selection
run(["raw_catalog"])
run(["raw_interactions", "curated_conversations"], "{DAYS[0]}")
run(["base_model"], config={{"base_model": {TINY_MODEL!r}}})
run(["tokenized_shards"], "{DAYS[0]}")
"""

RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId jobName status startTime endTime tags { key value } } }
    ... on PythonError { message }
  }
}
"""

MATERIALIZED_PARTITIONS_QUERY = """
query Partitions($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset { assetMaterializations { partition runId timestamp } }
  }
}
"""

TICKS_QUERY = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 1) { timestamp status } } }
  }
}
"""

DONE = {"SUCCESS", "FAILURE", "CANCELED"}
LOCATION = "catalog_posttrain"  # workspace.yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DevPlatform:
    home: Path
    env: dict[str, str]
    port: int
    log: Path
    artifacts_dir: Path  # screenshots and logs a CI run keeps
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"GraphQL HTTP {exc.code}: {exc.read()[:2000]!r}") from exc
        assert "errors" not in payload, payload["errors"]
        return payload["data"]

    def runs(self, **filters: Any) -> list[dict[str, Any]]:
        data = self.graphql(RUNS_QUERY, {"filter": filters})["runsOrError"]
        assert data["__typename"] == "Runs", data
        for run in data["results"]:
            run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
        return data["results"]

    def materialized_partitions(self, asset: str) -> set[str]:
        data = self.graphql(MATERIALIZED_PARTITIONS_QUERY, {"key": {"path": [asset]}})["assetOrError"]
        return {m["partition"] for m in data.get("assetMaterializations", [])}

    def wait_for_tick_after(self, sensor: str, after: float, timeout: float = 120) -> None:
        """Wait until `sensor` has finished a tick that started after `after` (a UNIX time)."""
        selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "sensorName": sensor}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.graphql(TICKS_QUERY, {"selector": selector})["sensorOrError"]
            ticks = data["sensorState"]["ticks"]
            if ticks and ticks[0]["timestamp"] > after and ticks[0]["status"] != "STARTED":
                return
            time.sleep(1.0)
        raise AssertionError(f"{sensor} did not tick after {after} within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def cli(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run(
            list(args), cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout + proc.stderr

    def wait_for_runs(
        self, count: int, timeout: float, has_tag: str | None = None, **filters: Any
    ) -> list[dict[str, Any]]:
        """Wait until at least `count` runs match (and carry tag `has_tag`) and all of them are finished."""
        deadline = time.monotonic() + timeout
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            runs = [r for r in self.runs(**filters) if has_tag is None or has_tag in r["tags"]]
            if len(runs) >= count and all(r["status"] in DONE for r in runs):
                return runs
            time.sleep(1.0)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {count} finished runs matching {filters}; got "
            f"{[(r['jobName'], r['status'], r['tags'].get('dagster/partition')) for r in runs]}\n"
            f"dagster dev log tail:\n{self.log.read_text()[-4000:]}"
        )


def _wait_ready(platform: DevPlatform, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dagster dev exited with {proc.returncode}:\n{platform.log.read_text()[-4000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{platform.url}/server_info", timeout=2):
                pass
            # The webserver answers before the code location has loaded; wait for the job to be there.
            data = platform.graphql(
                "{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } } } } }"
            )
            nodes = data["repositoriesOrError"].get("nodes", [])
            if any(job["name"] == "ingestion_job" for node in nodes for job in node["jobs"]):
                return
        time.sleep(0.5)
    raise AssertionError(f"dagster dev did not come up in {timeout}s:\n{platform.log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop dagster dev and everything it started (webserver, daemon, code server, run workers, torchrun)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # dagster dev shuts its services down in order on Ctrl-C
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the process group
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextlib.contextmanager
def dagster_dev(home: Path, artifacts_dir: Path) -> Iterator[DevPlatform]:
    retrain_config = home / "retrain.yaml"
    home.mkdir(parents=True, exist_ok=True)
    retrain_config.write_text(json.dumps(TINY_RETRAIN))  # JSON is YAML
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "PLATFORM_", "SYNTHETIC_"))},
        **SMALL_ENV,
        "PLATFORM_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "RETRAIN_RUN_CONFIG": str(retrain_config),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    shutil_copy(REPO / "dagster_project" / "instance_config.yaml", home / "dagster" / "dagster.yaml")
    platform = DevPlatform(
        home=home, env=env, port=free_port(), log=artifacts_dir / "dagster_dev.log", artifacts_dir=artifacts_dir
    )
    started = time.monotonic()
    # Seed before the daemon starts: a landing sensor that ticked while the seed's day-1 drop was not yet
    # materialized would launch its own run for that day and race the seed's (the tests assert it launched none).
    seed = subprocess.run(
        [sys.executable, "-c", SEED],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    assert seed.returncode == 0, f"seeding failed:\n{seed.stdout[-4000:]}"
    platform.facts["seed_s"] = time.monotonic() - started
    with open(platform.log, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(platform.port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown kills the whole tree
        )
    try:
        _wait_ready(platform, proc, timeout=180)
        platform.facts["ready_s"] = time.monotonic() - started
        platform.facts["startup_log"] = platform.log.read_text()
        yield platform
    finally:
        _stop(proc)


def shutil_copy(src: Path, dst: Path) -> None:
    dst.write_bytes(src.read_bytes())


def run_operations(platform: DevPlatform) -> None:
    """Backfill, landing drop, retraining: what a user does on day two. Records facts; asserts only on failure."""
    facts = platform.facts
    dagster = str(BIN / "dagster")

    # 1. A backfill of the ingestion job over days 2..3, submitted from the CLI to the running daemon.
    started = time.monotonic()
    out = platform.cli(
        dagster, "job", "backfill", "-w", "workspace.yaml", "-j", "ingestion_job",
        "--from", DAYS[1], "--to", DAYS[-1], "--noprompt",
    )  # fmt: skip
    facts["backfill_cli_output"] = out
    backfill_runs = platform.wait_for_runs(
        len(DAYS) - 1, timeout=300, has_tag="dagster/backfill", pipelineName="ingestion_job"
    )
    facts["backfill_runs"] = backfill_runs
    facts["backfill_s"] = time.monotonic() - started

    # 2. A new day lands; the landing sensor (running by default) launches its ingestion run.
    started = time.monotonic()
    facts["drop_output"] = platform.cli(
        sys.executable, "-m", "core.synthetic", "drop", "--landing", str(platform.home / "landing"),
        "--n-titles", SMALL_ENV["SYNTHETIC_TITLES"], "--n-members", SMALL_ENV["SYNTHETIC_MEMBERS"],
    )  # fmt: skip
    sensor_filter = {"tags": [_tag("dagster/sensor_name", "landing_sensor")]}
    deadline = time.monotonic() + 180
    while not any(r["tags"].get("dagster/partition") == NEW_DAY for r in platform.runs(**sensor_filter)):
        assert time.monotonic() < deadline, f"landing_sensor launched no run for {NEW_DAY}:\n{_tail(platform)}"
        time.sleep(1.0)
    (run,) = platform.wait_for_runs(1, timeout=180, **sensor_filter)
    # A tick after the run finished still requests nothing: exactly one run for the drop.
    platform.wait_for_tick_after("landing_sensor", run["endTime"])
    facts["landing_runs"] = platform.runs(**sensor_filter)
    facts["landing_s"] = time.monotonic() - started

    # 3. Turn the retraining sensor on from the CLI (as the UI toggle does); it requests one training run.
    started = time.monotonic()
    facts["sensor_start_output"] = platform.cli(dagster, "sensor", "start", "retraining_sensor", "-w", "workspace.yaml")
    retrain_filter = {"tags": [_tag("dagster/sensor_name", "retraining_sensor")]}
    (run,) = platform.wait_for_runs(1, timeout=300, **retrain_filter)
    platform.wait_for_tick_after("retraining_sensor", run["endTime"])  # the new checkpoint covers every shard
    facts["training_runs"] = platform.runs(**retrain_filter)
    facts["training_s"] = time.monotonic() - started
    facts["all_runs"] = platform.runs()
    summary = {k: v for k, v in facts.items() if k.endswith("_s")}
    summary["runs"] = [
        {k: r[k] for k in ("jobName", "status", "startTime", "endTime")}
        | {"partition": r["tags"].get("dagster/partition")}
        for r in facts["all_runs"]
    ]
    (platform.artifacts_dir / "operations_summary.json").write_text(json.dumps(summary, indent=1))


def _tag(key: str, value: str) -> dict[str, str]:
    return {"key": key, "value": value}


def _tail(platform: DevPlatform) -> str:
    return platform.log.read_text()[-4000:]


_SESSION: dict[str, Any] = {}


@pytest.fixture(scope="session")
def dev_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevPlatform]:
    """One dagster dev for the session; imported by both test modules, built once (the cache below)."""
    if "error" in _SESSION:
        pytest.fail(f"the shared dagster dev session failed earlier: {_SESSION['error']}")
    if "platform" in _SESSION:
        yield _SESSION["platform"]
        return
    home = tmp_path_factory.mktemp("dev_home")
    artifacts_dir = Path(os.environ.get("TEST_ARTIFACTS_DIR") or tmp_path_factory.mktemp("ui_artifacts"))
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    try:
        with dagster_dev(home, artifacts_dir) as platform:
            run_operations(platform)
            _SESSION["platform"] = platform
            try:
                yield platform
            finally:
                _SESSION.pop("platform", None)
    except BaseException as exc:
        _SESSION.setdefault("error", repr(exc)[:500])
        raise
