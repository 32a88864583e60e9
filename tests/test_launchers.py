"""The local torchrun launcher and torchrun failure diagnosis."""

import json
import sys
from pathlib import Path

import dagster as dg
import pytest

from resources.launchers import LocalTorchrunLauncher
from resources.torchrun_logs import diagnose, last_traceback, parse_root_cause, strip_tee_prefix

TORCHRUN_FAILURE = """\
[default1]:Traceback (most recent call last):
[default1]:  File "/x/training/sft.py", line 5, in <module>
[default1]:ValueError: shard 3 is corrupt
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
training.sft FAILED
------------------------------------------------------------
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 24125)  (SIGTERM)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-25_15:06:48
  host      : localhost
  rank      : 3 (local_rank: 1)
  exitcode  : 1 (pid: 24126)
  error_file: <N/A>
============================================================
"""


def test_root_cause_names_the_first_failed_rank() -> None:
    assert parse_root_cause(TORCHRUN_FAILURE) == (3, 1, 1)
    assert parse_root_cause("all good") == (None, None, None)


def test_failed_rank_error_comes_from_its_own_output(tmp_path: Path) -> None:
    failure = diagnose(TORCHRUN_FAILURE, None)
    assert failure.rank == 3 and failure.exit_code == 1
    assert failure.error.endswith("ValueError: shard 3 is corrupt")
    assert failure.headline() == "rank 3 failed (exit code 1): ValueError: shard 3 is corrupt"
    # The log folder (torchrun --log-dir) wins over the console when it has the traceback.
    rank_dir = tmp_path / "run-1" / "attempt_0" / "1"
    rank_dir.mkdir(parents=True)
    (rank_dir / "stderr.log").write_text("noise\nTraceback (most recent call last):\n  x\nKeyError: 'input_ids'\n")
    assert diagnose(TORCHRUN_FAILURE, tmp_path).error.endswith("KeyError: 'input_ids'")


def test_helpers_on_plain_text() -> None:
    assert strip_tee_prefix("[default0]:a\n[default1]:b\n[default0]:c", 0) == "a\nc"
    assert last_traceback(
        "x\nTraceback (most recent call last):\n y\nE: 1\nTraceback (most recent call last):\n z\nF: 2"
    ) == ("Traceback (most recent call last):\n z\nF: 2")


def test_commands_for_one_and_several_nodes(tmp_path: Path) -> None:
    single = LocalTorchrunLauncher(nnodes=1, nproc_per_node=2).commands(tmp_path / "c.json", tmp_path, 29500)
    assert len(single) == 1 and "--standalone" in single[0]
    assert single[0][-5:] == ["-m", "training.sft", "--config", str(tmp_path / "c.json"), "--resume"]
    assert single[0][single[0].index("--nproc-per-node") + 1] == "2"
    multi = LocalTorchrunLauncher(nnodes=2, nproc_per_node=1).commands(tmp_path / "c.json", tmp_path, 29500)
    assert len(multi) == 2
    assert [cmd[cmd.index("--node-rank") + 1] for cmd in multi] == ["0", "1"]
    assert all("127.0.0.1:29500" in cmd for cmd in multi)
    assert all("--resume" in cmd for cmd in multi)


def _fake_trainer(tmp_path: Path, body: str) -> Path:
    """A stand-in for `training.sft` run by the real torchrun: same argv, same Pipes channel."""
    pkg = tmp_path / "fakepkg" / "training"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sft.py").write_text(body)
    return tmp_path / "fakepkg"


FAKE_OK = """
import json, os, sys
from pathlib import Path
cfg = json.loads(Path(sys.argv[sys.argv.index("--config") + 1]).read_text())
rank = int(os.environ["RANK"])
if rank == 0:
    from dagster_pipes import open_dagster_pipes
    with open_dagster_pipes() as pipes:
        pipes.log.info("hello from rank 0")
        pipes.report_custom_message({"kind": "progress", "step": 1, "loss": 2.5})
        Path(cfg["output_dir"], "summary.json").write_text(json.dumps({"steps": 1, "world": os.environ["WORLD_SIZE"]}))
        pipes.report_asset_materialization(metadata={"final_loss": 2.5})
"""

FAKE_FAIL = """
import os, time
if os.environ["RANK"] == "1":
    raise RuntimeError("rank one cannot read shard train-00003.parquet")
time.sleep(30)
"""


FAKE_KILLED_ONCE = """
import json, os, signal, sys
from pathlib import Path
cfg = json.loads(Path(sys.argv[sys.argv.index("--config") + 1]).read_text())
marker = Path(cfg["output_dir"], "killed-once")
if os.environ["RANK"] == "1" and not marker.exists():
    marker.write_text("x")
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer or a lost node looks like
if os.environ["RANK"] == "0":
    import time
    time.sleep(1)
    Path(cfg["output_dir"], "summary.json").write_text(json.dumps({"steps": 1, "world": os.environ["WORLD_SIZE"]}))
"""


def _materialize(
    tmp_path: Path, body: str, nnodes: int = 1, nproc: int = 2, retries: int = 0
) -> dg.ExecuteInProcessResult:
    fake = _fake_trainer(tmp_path, body)
    launcher = LocalTorchrunLauncher(
        nnodes=nnodes, nproc_per_node=nproc, working_dir=str(fake), termination_timeout_s=5
    )
    out = tmp_path / "out"

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=retries) if retries else None)
    def trained(context: dg.AssetExecutionContext, trainer: LocalTorchrunLauncher) -> dg.MaterializeResult:
        result = trainer.launch(context, {"output_dir": str(out)}, out)
        return dg.MaterializeResult(
            metadata={**result.reported_metadata, "world": result.summary["world"], "progress": len(result.progress)}
        )

    return dg.materialize([trained], resources={"trainer": launcher}, raise_on_error=False)


@pytest.mark.slow
@pytest.mark.parametrize("nnodes,nproc", [(1, 2), (2, 1)])
def test_rank_zero_reports_through_pipes(tmp_path: Path, nnodes: int, nproc: int) -> None:
    result = _materialize(tmp_path, FAKE_OK, nnodes, nproc)
    assert result.success
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["final_loss"].value == 2.5 and meta["world"].value == "2" and meta["progress"].value == 1
    assert json.loads((tmp_path / "out" / "train_config.json").read_text()) == {"output_dir": str(tmp_path / "out")}


@pytest.mark.slow
def test_a_failed_rank_fails_the_materialization_with_its_error(tmp_path: Path) -> None:
    result = _materialize(tmp_path, FAKE_FAIL)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    info = failure.step_failure_data
    text = info.error.message if info.error else ""
    assert "rank 1 failed" in text and "cannot read shard train-00003.parquet" in text
    assert info.user_failure_data.metadata["failed_rank"].value == 1
    assert info.user_failure_data.metadata["retryable"].value is False  # a raised error is not retried
    assert "RuntimeError" in info.user_failure_data.metadata["error"].value


def test_python_executable_defaults_to_this_interpreter(tmp_path: Path) -> None:
    cmd = LocalTorchrunLauncher().commands(tmp_path / "c.json", tmp_path, 1)[0]
    assert cmd[0] == sys.executable and cmd[1:3] == ["-m", "torch.distributed.run"]


@pytest.mark.slow
def test_a_killed_rank_is_retried_and_the_retry_succeeds(tmp_path: Path) -> None:
    result = _materialize(tmp_path, FAKE_KILLED_ONCE, retries=1)
    assert result.success
    assert any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
