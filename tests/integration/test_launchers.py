"""The local torchrun launcher and torchrun failure diagnosis."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from support.processes import gone, kill_all, processes_mentioning, wait_gone

from resources.launchers import LIFELINE_SCRIPT, LocalTorchrunLauncher, _run_all
from training.torchrun_logs import diagnose, last_traceback, parse_root_cause, strip_tee_prefix

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


# ---- trainers die with their launcher (training/lifeline.py) and within their wall-clock budget ----------------

LIFELINE = str(LIFELINE_SCRIPT)
IS_LINUX = sys.platform.startswith("linux")


def _wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().endswith("\n"):
            return path.read_text()
        assert proc.poll() is None, f"the launcher exited early with {proc.returncode}"
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {timeout}s")


# A stand-in for torchrun: its worker gets a session of its own (as torchrun's ranks do), and SIGTERM makes it
# stop that worker first. The worker calls die_with_parent(), as training/distributed.py does for every rank.
AGENT = """
import os, signal, subprocess, sys, time
from pathlib import Path
worker_code, pid_file, lifeline_dir = sys.argv[1:4]
ready = pid_file + ".ready"
worker = subprocess.Popen([sys.executable, "-c", worker_code, lifeline_dir, ready], start_new_session=True)
def stop(*_):
    worker.terminate()
    worker.wait()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while not Path(ready).exists():
    time.sleep(0.01)
Path(pid_file).write_text(f"{os.getpid()} {worker.pid}\\n")
time.sleep(600)
"""
WORKER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from lifeline import die_with_parent
assert die_with_parent()
Path(sys.argv[2]).write_text("ready")
time.sleep(600)
"""
# The launcher: starts the agent through the lifeline wrapper exactly as resources/launchers.py does.
LAUNCHER = """
import os, subprocess, sys, time
from pathlib import Path
lifeline, pid_file, watch, agent, worker = sys.argv[1:6]
read_end, write_end = os.pipe()
cmd = [sys.executable, lifeline, "--parent", str(os.getpid()), "--fd", str(read_end), "--grace", "5"]
cmd += ["--watch"] if watch == "1" else []
cmd += ["--", sys.executable, "-c", agent, worker, pid_file + ".agent", str(Path(lifeline).parent)]
proc = subprocess.Popen(cmd, pass_fds=(read_end,), start_new_session=True)
os.close(read_end)
Path(pid_file).write_text(f"{os.getpid()} {proc.pid}\\n")
time.sleep(600)
"""


def _ignore_stop_signals() -> None:
    """What a Dagster run worker whose SIGINT was ignored (a background job of a non-interactive shell) passes on
    after any in-process execution: Dagster gives SIGTERM SIGINT's disposition. Blocked too, for good measure."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _sigterm_in(status: str, field: str) -> bool:
    """Whether SIGTERM is in a signal-set field (SigIgn, SigBlk) of a /proc/<pid>/status text."""
    line = next(line for line in status.splitlines() if line.startswith(f"{field}:"))
    return bool(int(line.split(":", 1)[1], 16) & (1 << (signal.SIGTERM - 1)))


def _start_tree(
    tmp_path: Path, watch: bool, launcher_ignores_sigterm: bool = False
) -> tuple[subprocess.Popen, list[int]]:
    """launcher -> lifeline wrapper -> agent -> worker; returns the launcher and [wrapper, agent, worker] pids."""
    pid_file = tmp_path / "pids"
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, LIFELINE, str(pid_file), "1" if watch else "0", AGENT, WORKER],
        start_new_session=True,
        preexec_fn=_ignore_stop_signals if launcher_ignores_sigterm else None,
    )
    _, wrapper = map(int, _wait_for_file(pid_file, launcher).split())
    agent, worker = map(int, _wait_for_file(Path(f"{pid_file}.agent"), launcher).split())
    return launcher, [wrapper, agent, worker]


@pytest.mark.parametrize("watch", [False, True], ids=["prctl", "pipe-watchdog"])
def test_a_sigkilled_launcher_takes_its_agent_and_the_agents_worker_with_it(tmp_path: Path, watch: bool) -> None:
    if not watch and not IS_LINUX:
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    launcher, tree = _start_tree(tmp_path, watch)
    wrapper, agent, _ = tree
    try:
        # prctl: the wrapper became the agent (exec), so the process group kill of a normal stop still reaches it.
        assert (wrapper == agent) is (not watch)
        assert not any(gone(pid) for pid in tree)
        launcher.kill()
        launcher.wait()
        assert wait_gone(tree) == [], "processes outlived their launcher"
    finally:
        kill_all([launcher.pid, *tree])


@pytest.mark.skipif(not IS_LINUX, reason="PR_SET_PDEATHSIG is Linux only")
def test_a_rank_dies_with_its_agent_even_when_the_agent_is_sigkilled(tmp_path: Path) -> None:
    """torchrun stops its ranks on SIGTERM; SIGKILL leaves that to the ranks' own parent-death signal."""
    launcher, tree = _start_tree(tmp_path, watch=False)
    _, agent, worker = tree
    try:
        os.kill(agent, signal.SIGKILL)
        assert wait_gone([worker]) == [], "the worker outlived its SIGKILLed agent"
    finally:
        kill_all([launcher.pid, *tree])


def test_a_normal_stop_still_kills_the_agents_process_group(tmp_path: Path) -> None:
    launcher, tree = _start_tree(tmp_path, watch=False)
    wrapper, agent, worker = tree
    try:
        os.killpg(wrapper, signal.SIGTERM)  # what _terminate does on cancellation
        assert wait_gone([agent, worker]) == []
        assert not gone(launcher.pid)  # only the agent's group, not the launcher
    finally:
        kill_all([launcher.pid, *tree])


@pytest.mark.skipif(not IS_LINUX, reason="PR_SET_PDEATHSIG and /proc/<pid>/status are Linux only")
@pytest.mark.parametrize("stop", ["group SIGTERM", "launcher SIGKILL", "agent SIGKILL"])
def test_trainers_stop_even_when_their_launcher_ignores_sigterm(tmp_path: Path, stop: str) -> None:
    """An ignored or blocked SIGTERM is inherited through fork and exec; the lifeline and every rank undo it, or a
    cancelled run's trainers (and a dead launcher's) would run on."""
    launcher, tree = _start_tree(tmp_path, watch=False, launcher_ignores_sigterm=True)
    wrapper, agent, worker = tree
    try:
        assert _sigterm_in(Path(f"/proc/{launcher.pid}/status").read_text(), "SigIgn"), "the setup did not take"
        if stop == "group SIGTERM":
            os.killpg(wrapper, signal.SIGTERM)
            assert wait_gone([agent, worker]) == []
        elif stop == "launcher SIGKILL":
            launcher.kill()
            launcher.wait()
            assert wait_gone(tree) == []
        else:
            os.kill(agent, signal.SIGKILL)
            assert wait_gone([worker]) == []
    finally:
        kill_all([launcher.pid, *tree])


@pytest.mark.skipif(not IS_LINUX, reason="/proc/<pid>/status is Linux only")
def test_a_rank_started_with_sigterm_ignored_still_dies_with_its_parent() -> None:
    """die_with_parent (every rank calls it) honours the signal it asks for, whatever the rank inherited."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from lifeline import die_with_parent; "
        "assert die_with_parent(); print(open('/proc/self/status').read())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(LIFELINE).parent)],
        preexec_fn=_ignore_stop_signals,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert not _sigterm_in(out, "SigIgn") and not _sigterm_in(out, "SigBlk")


FAKE_SLEEPER = """
import os, time
from pathlib import Path
Path(os.environ["PID_DIR"], f"rank{os.environ['RANK']}").write_text(f"{os.getpid()} {os.getppid()}\\n")
time.sleep(600)
"""

# Materializes one asset through LocalTorchrunLauncher in its own process: the run worker the test SIGKILLs.
RUN_WORKER = """
import sys
import dagster as dg
from resources.launchers import LocalTorchrunLauncher
fake, out, pid_dir = sys.argv[1:4]
launcher = LocalTorchrunLauncher(nproc_per_node=2, working_dir=fake, extra_env={"PID_DIR": pid_dir})
@dg.asset
def trained(context: dg.AssetExecutionContext, trainer: LocalTorchrunLauncher) -> None:
    trainer.launch(context, {"output_dir": out}, __import__("pathlib").Path(out))
dg.materialize([trained], resources={"trainer": launcher})
"""


@pytest.mark.slow
def test_torchrun_and_its_ranks_exit_when_the_run_worker_is_sigkilled(tmp_path: Path) -> None:
    """The real torchrun: the kernel's SIGTERM (parent death) makes it stop its ranks; nothing is left."""
    fake = _fake_trainer(tmp_path, FAKE_SLEEPER)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    worker = subprocess.Popen(
        [sys.executable, "-c", RUN_WORKER, str(fake), str(tmp_path / "out"), str(pid_dir)],
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
    )
    trainers: list[int] = []
    try:
        for rank in (0, 1):
            trainers += map(int, _wait_for_file(pid_dir / f"rank{rank}", worker).split())
        agent = trainers[1]
        assert trainers[3] == agent  # both ranks are children of the one torchrun agent
        worker.kill()
        worker.wait()
        assert wait_gone([agent, trainers[0], trainers[2]]) == [], "trainer processes outlived the run worker"
    finally:
        kill_all([worker.pid, *trainers])


@pytest.mark.slow
def test_an_interrupted_run_stops_torchrun_and_its_ranks_and_then_exits(tmp_path: Path) -> None:
    """Normal cancellation (an interrupt in the run worker) still stops the trainers through their process group."""
    fake = _fake_trainer(tmp_path, FAKE_SLEEPER)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-c", RUN_WORKER, str(fake), str(tmp_path / "out"), str(pid_dir)],
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    trainers: list[int] = []
    try:
        for rank in (0, 1):
            trainers += map(int, _wait_for_file(pid_dir / f"rank{rank}", worker).split())
        worker.send_signal(signal.SIGINT)
        assert wait_gone([trainers[1], trainers[0], trainers[2]]) == [], "trainers survived the interrupt"
        assert worker.wait(timeout=120) != 0  # the worker itself finished, reporting the interruption
        assert "run terminated: stopping the trainer processes" in log.read_text()  # by the launcher, not the kernel
    finally:
        kill_all([worker.pid, *trainers])


def test_the_wall_clock_limit_stops_a_command_that_runs_too_long(tmp_path: Path) -> None:
    marker = tmp_path / "child"
    # Ignores SIGTERM: the limit must still end it (SIGKILL of its process group after the grace period).
    stubborn = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(600)\n"
    )
    quick = [sys.executable, "-c", "print('done')"]
    with dg.build_asset_context() as context:
        codes, output, timed_out = _run_all(
            [[sys.executable, "-c", stubborn], quick],
            [dict(os.environ)] * 2,
            cwd=tmp_path,
            context=context,
            grace=1.0,
            max_wall_clock_s=2.0,
        )
    assert timed_out
    assert codes == [-signal.SIGKILL, 0]
    assert "done" in output
    assert wait_gone([int(marker.read_text())]) == []  # its child went with the process group


def test_commands_that_finish_in_time_are_not_stopped(tmp_path: Path) -> None:
    with dg.build_asset_context() as context:
        codes, output, timed_out = _run_all(
            [[sys.executable, "-c", "print('ok')"]],
            [dict(os.environ)],
            cwd=tmp_path,
            context=context,
            grace=1.0,
            max_wall_clock_s=600.0,
        )
    assert (codes, output.strip(), timed_out) == ([0], "ok", False)


@pytest.mark.slow
def test_training_past_its_wall_clock_limit_fails_once_with_a_clear_message(tmp_path: Path) -> None:
    fake = _fake_trainer(tmp_path, FAKE_SLEEPER)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    out = tmp_path / "out"
    launcher = LocalTorchrunLauncher(
        nproc_per_node=2,
        working_dir=str(fake),
        termination_timeout_s=5,
        max_wall_clock_s=8,
        extra_env={"PID_DIR": str(pid_dir)},
    )

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=2))
    def trained(context: dg.AssetExecutionContext, trainer: LocalTorchrunLauncher) -> None:
        trainer.launch(context, {"output_dir": str(out)}, out)

    result = dg.materialize([trained], resources={"trainer": launcher}, raise_on_error=False)
    assert not result.success
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)  # no pointless retry
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data
    text = failure.error.message if failure.error else ""
    assert "wall-clock limit of 8 s" in text and "TRAINING_MAX_WALL_CLOCK_SECONDS" in text
    assert str(out / "checkpoints") in text
    assert failure.user_failure_data.metadata["wall_clock_limit_s"].value == 8
    # torchrun and whichever ranks it had started by then: no process is left that works on this run's config.
    ranks = [int(p.read_text().split()[0]) for p in pid_dir.iterdir()]
    assert wait_gone(ranks) == []
    assert processes_mentioning(str(out)) == []
