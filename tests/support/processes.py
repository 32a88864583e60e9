"""Process helpers for tests that start real process trees and must leave nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path


def gone(pid: int) -> bool:
    """True once `pid` has exited; a zombie (exited, not yet reaped by whoever adopted it) counts as exited."""
    if not Path("/proc/self/stat").exists():  # macOS: signal 0 only says whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(pids: Iterable[int], timeout: float = 60.0) -> list[int]:
    """Poll until every pid has exited (the event waited for); the survivors after a generous timeout."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(pid) for pid in pids):
            return []
        time.sleep(0.05)
    return [pid for pid in pids if not gone(pid)]


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains `text` (Linux /proc), e.g. a run's config path."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in cmdline and int(entry.name) != os.getpid() and not gone(int(entry.name)):
                found.append((int(entry.name), cmdline))
    return found


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL each pid that still exists (teardown after a failed assertion)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def training_ranks(root: int, module: str = "training.sft") -> dict[int, int]:
    """RANK -> pid of each `module` rank process below `root` (a torchrun agent, or what started it)."""
    ranks = {}
    for pid in descendants(root):
        with contextlib.suppress(OSError, ValueError):
            if module.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if item.startswith(b"RANK="):
                    ranks[int(item[len(b"RANK=") :])] = pid
    return ranks
