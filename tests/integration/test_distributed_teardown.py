"""A finished rank exits: tearing down the process group never hangs."""

import subprocess
import sys
from pathlib import Path

import pytest
from support.training_builders import REPO, subprocess_env

ROUNDS = 10


@pytest.mark.slow
def test_ddp_ranks_exit_after_the_group_is_destroyed(tmp_path: Path) -> None:
    script = REPO / "tests" / "support" / "teardown_rounds.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    # The old teardown deadlocked within the first few rounds; ten rounds take about 15 s.
    done = subprocess.run(
        [*cmd, str(ROUNDS), str(tmp_path)], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"rank 0: {ROUNDS} rounds" in done.stdout and f"rank 1: {ROUNDS} rounds" in done.stdout
