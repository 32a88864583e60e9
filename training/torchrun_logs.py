"""Reading torchrun's output: which rank failed first, and that rank's error.

Pure functions over text and log folders so they are unit-tested without a cluster;
the local and Kubernetes launchers both use them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_ROOT_CAUSE = re.compile(
    r"Root Cause \(first observed failure\):.*?rank\s*:\s*(?P<rank>\d+)\s*\(local_rank:\s*(?P<local>\d+)\)"
    r".*?exitcode\s*:\s*(?P<code>-?\d+)",
    re.S,
)


@dataclass(frozen=True)
class RankFailure:
    rank: int | None
    local_rank: int | None
    exit_code: int | None
    error: str  # the rank's traceback (or the tail of its stderr)

    def headline(self) -> str:
        last = next((line for line in reversed(self.error.splitlines()) if line.strip()), "no error output")
        who = f"rank {self.rank}" if self.rank is not None else "a rank"
        return f"{who} failed (exit code {self.exit_code}): {last.strip()}"


def parse_root_cause(output: str) -> tuple[int | None, int | None, int | None]:
    """(global rank, local rank, exit code) of torchrun's 'Root Cause' block, if present."""
    match = _ROOT_CAUSE.search(output)
    if not match:
        return None, None, None
    return int(match["rank"]), int(match["local"]), int(match["code"])


def last_traceback(text: str, max_lines: int = 60) -> str:
    """The last Python traceback in `text` (or its last lines when there is none)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    chunk = lines[starts[-1] :] if starts else lines[-max_lines:]
    return "\n".join(chunk[-max_lines:])


def strip_tee_prefix(text: str, local_rank: int) -> str:
    """Lines torchrun --tee printed for one local rank, without the `[defaultN]:` prefix."""
    prefix = f"[default{local_rank}]:"
    return "\n".join(line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix))


def rank_stderr_from_log_dir(log_dir: Path, local_rank: int) -> str:
    """stderr of `local_rank` in the newest attempt under a torchrun --log-dir."""
    candidates = sorted(Path(log_dir).glob(f"*/attempt_*/{local_rank}/stderr.log"), key=lambda p: p.stat().st_mtime)
    return candidates[-1].read_text(errors="replace") if candidates else ""


def diagnose(output: str, log_dir: Path | None) -> RankFailure:
    """Name the first failed rank and its error from torchrun's console output and log folder."""
    rank, local, code = parse_root_cause(output)
    error = ""
    if local is not None and log_dir is not None:
        error = last_traceback(rank_stderr_from_log_dir(log_dir, local))
    if not error and local is not None:
        error = last_traceback(strip_tee_prefix(output, local))
    if not error:
        error = last_traceback(output)
    return RankFailure(rank=rank, local_rank=local, exit_code=code, error=error)
