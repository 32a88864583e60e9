"""Atomic, immutable artifact versions on a POSIX filesystem.

A version directory becomes visible only once complete: files are written under
a hidden temporary name in the same parent, fsynced, then renamed into place.
Readers never see half-written data, and an existing version is never
overwritten (immutability is what lets a downstream asset keep reading while a
new version is produced).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

TMP_PREFIX = ".tmp-"
# Resumable work directories (ArtifactStore.staging_dir): owned by a run lineage, never by one process.
STAGING_PREFIX = f"{TMP_PREFIX}run-"


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
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
