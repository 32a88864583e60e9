"""Atomic, immutable artifact versions on a POSIX filesystem.

A version directory becomes visible only once complete: files are written under
a hidden temporary name in the same parent, fsynced, then renamed into place.
Readers never see half-written data, and an existing version is never
overwritten (immutability is what lets a downstream asset keep reading while a
new version is produced).

A writer that dies (SIGKILL, lost node) leaves its temporary directory behind. Each
one has a sibling owner marker ``<temp dir>.owner`` (host, boot, pid namespace, pid,
process start time), so ``sweep_stale_temp_dirs`` can remove exactly the leftovers
whose owner is provably gone, and those of other hosts only after a generous age.
Staging directories of runs (``STAGING_PREFIX``) belong to a run lineage, not to a
process: ``sweep_staging_dirs`` removes one only when the caller says its runs are
finished and it has been idle long enough.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

TMP_PREFIX = ".tmp-"
# Resumable work directories (ArtifactStore.staging_dir): owned by a run lineage, never by one process.
STAGING_PREFIX = f"{TMP_PREFIX}run-"
OWNER_SUFFIX = ".owner"


VERSION_ID_RE = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{6}$")


def new_version_id(now: datetime | None = None) -> str:
    """Sortable, unique version name: UTC timestamp (microseconds) plus a random suffix."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:6]}"


def fsync_tree(path: Path) -> None:
    """Flush every file and directory under `path` (and `path` itself) to disk."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary directory that is renamed to `final` if the block succeeds.

    On error the temporary directory is removed and `final` never appears.
    Refuses to replace an existing `final`: versions are immutable.
    """
    final = Path(final)
    if final.exists():
        raise FileExistsError(f"artifact version {final} already exists; versions are immutable")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    marker = owner_marker(tmp)
    # The marker exists before the directory, so a sweeper never sees an owned directory without its owner.
    atomic_write_bytes(marker, json.dumps(asdict(Owner.this_process())).encode())
    try:
        tmp.mkdir()
        yield tmp
        fsync_tree(tmp)
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        marker.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a single file atomically (temp file in the same directory, fsync, replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def list_versions(parent: Path) -> list[Path]:
    """Complete version directories under `parent`, oldest first (names sort by time)."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX))


# --------------------------------------------------------------------------------------
# Leftovers of crashed writers


def owner_marker(tmp_dir: Path) -> Path:
    """The owner file of a temporary directory: a sibling, so it never ends up inside the published version."""
    return tmp_dir.with_name(tmp_dir.name + OWNER_SUFFIX)


def _read_text(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot (Linux /proc), to tell a live owner from a reused pid."""
    stat = _read_text(f"/proc/{pid}/stat")
    if not stat:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def _host_identity() -> tuple[str, str, str]:
    """Where a pid means something: hostname, boot id and pid namespace (a pid check is valid only there)."""
    return socket.gethostname(), _read_text("/proc/sys/kernel/random/boot_id"), _pid_namespace()


@dataclass(frozen=True)
class Owner:
    """Who writes a temporary directory. Same host = same hostname, boot and pid namespace (containers differ)."""

    host: str
    boot_id: str
    pid_namespace: str
    pid: int
    start_ticks: int | None
    created_at: float

    @classmethod
    def this_process(cls) -> Owner:
        pid = os.getpid()
        host, boot_id, pid_namespace = _host_identity()
        return cls(host, boot_id, pid_namespace, pid, _start_ticks(pid), time.time())

    def on_this_host(self) -> bool:
        return (self.host, self.boot_id, self.pid_namespace) == _host_identity()

    def alive(self) -> bool | None:
        """True/False when this host can tell, None for another host (whose processes we cannot see)."""
        if not self.on_this_host():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
        if self.start_ticks is not None:
            now = _start_ticks(self.pid)
            if now is not None and now != self.start_ticks:
                return False  # the pid was reused by a newer process
        return True

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"

    @classmethod
    def read(cls, marker: Path) -> Owner | None:
        try:
            data = json.loads(marker.read_text())
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True)
class Leftover:
    """One temporary or staging directory (or file) that a sweep looked at and removed, or could not remove."""

    path: str
    reason: str  # owner_gone | older_than_max_age | orphan_owner_marker | run_finished
    detail: str
    removed: bool = True

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def newest_mtime(path: Path) -> float:
    """The last time anything under `path` changed (without following links): a writer's heartbeat."""
    newest = os.lstat(path).st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except FileNotFoundError:
                    continue
    return newest


def _remove(path: Path) -> str | None:
    """Remove a file or directory tree; the error text when it could not be removed (never raises)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return None  # another sweeper was faster
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _sweep_one(path: Path, reason: str, detail: str) -> Leftover:
    error = _remove(path)
    if error is None and not path.name.endswith(OWNER_SUFFIX):
        owner_marker(path).unlink(missing_ok=True)
    return Leftover(str(path), reason, detail if error is None else f"{detail}; not removed: {error}", error is None)


def sweep_stale_temp_dirs(parent: Path, *, max_age_s: float, now: float | None = None) -> list[Leftover]:
    """Remove the temporary directories/files under `parent` that no live writer owns; returns what was removed.

    Stale means: the owner marker names a process of this host that is gone (removed at once), or the entry
    has not changed for `max_age_s` (another host's writer, or a leftover from before owner markers).
    Staging directories (`STAGING_PREFIX`) are never touched here.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    now = time.time() if now is None else now
    found: list[Leftover] = []
    for path in sorted(parent.iterdir()):
        name = path.name
        if not name.startswith(TMP_PREFIX) or name.startswith(STAGING_PREFIX):
            continue
        try:
            entry = _judge_temp(path, now, max_age_s)
        except FileNotFoundError:  # removed meanwhile (published, or swept together with its directory)
            continue
        if entry is not None:
            found.append(entry)
    return found


def _judge_temp(path: Path, now: float, max_age_s: float) -> Leftover | None:
    """Remove one temporary entry if it is stale; None when it is kept."""
    if path.name.endswith(OWNER_SUFFIX):
        if path.with_name(path.name[: -len(OWNER_SUFFIX)]).exists():
            return None  # judged with its directory
        owner = Owner.read(path)
        if (owner is not None and owner.alive() is False) or _age(path, now) >= max_age_s:
            return _sweep_one(path, "orphan_owner_marker", "owner marker without its directory")
        return None
    age = _age(path, now)
    owner = Owner.read(owner_marker(path))
    state = owner.alive() if owner is not None else None
    if owner is not None and state is False:
        return _sweep_one(path, "owner_gone", f"{owner.describe()} is no longer running")
    if state is None and age >= max_age_s:
        who = owner.describe() if owner else "no owner marker"
        return _sweep_one(path, "older_than_max_age", f"unchanged for {age / 3600:.1f} h ({who})")
    return None


def _age(path: Path, now: float) -> float:
    return now - newest_mtime(path)


def sweep_staging_dirs(
    parent: Path,
    *,
    runs_finished: Callable[[str], bool | None],
    max_age_s: float,
    keep: frozenset[str] = frozenset(),
    now: float | None = None,
) -> tuple[list[Leftover], list[Leftover]]:
    """Remove staging directories (`STAGING_PREFIX<key>`) whose runs are all finished and idle for `max_age_s`.

    `runs_finished(key)` answers for the run lineage `key`: True (every run finished), False (one may still
    run or be retried) or None (unknown here). Only True and idle long enough is removed: a staging dir holds
    the checkpoints a retried run resumes from. Returns (removed, kept-with-reason for the unknown ones).
    """
    parent = Path(parent)
    if not parent.is_dir():
        return [], []
    now = time.time() if now is None else now
    removed: list[Leftover] = []
    unknown: list[Leftover] = []
    for path in sorted(parent.iterdir()):
        if not path.name.startswith(STAGING_PREFIX) or not path.is_dir() or path.is_symlink():
            continue
        key = path.name[len(STAGING_PREFIX) :]
        if key in keep:
            continue
        finished = runs_finished(key)
        if finished is None:
            unknown.append(Leftover(str(path), "run_unknown", f"run {key} is not in this Dagster instance", False))
            continue
        if not finished:
            continue
        try:
            age = _age(path, now)
        except FileNotFoundError:
            continue
        if age >= max_age_s:
            removed.append(_sweep_one(path, "run_finished", f"runs of {key} finished; idle for {age / 3600:.1f} h"))
    return removed, unknown
