"""Where the champion registry keeps its records: a directory, or a prefix of an object store.

The registry needs four things of its storage: list names, read one, and create a name only if it is free (the
compare-and-swap a promotion commits with), atomically (a reader never sees half a record). A directory gives
that with link() (atomic on local filesystems and NFS); an object store with a conditional write (If-None-Match),
which S3 and S3-compatible stores support.
"""

from __future__ import annotations

import errno
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.atomic_io import TMP_PREFIX, atomic_write_bytes, fsync_dir
from core.object_store import VersionStore


class RegistryStorage(Protocol):
    def where(self, name: str) -> str:
        """The location of `name`, for messages."""
        ...

    def names(self, sub: str = "") -> list[str]:
        """Names (not sub-folders) in the registry, or in its sub-folder `sub`, sorted."""
        ...

    def read(self, name: str) -> bytes: ...

    def create(self, name: str, data: bytes) -> bool:
        """Write `name` whole if it does not exist; False (and nothing written) if it does."""
        ...


def _link_exclusive(src: Path, dst: Path, data: bytes) -> bool:
    """Create `dst` with `src`'s bytes only if the name is free; False when it already exists.

    link() is the atomic create-if-absent that works on NFS too; a retransmitted NFS link whose first try
    succeeded reports EEXIST, hence the same-file check. Filesystems without hard links get O_CREAT|O_EXCL.
    """
    try:
        os.link(src, dst)
        return True
    except FileExistsError:
        return os.path.samefile(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
            raise
    try:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


@dataclass(frozen=True)
class DirectoryRegistry:
    root: Path

    def where(self, name: str) -> str:
        return str(self.root / name)

    def names(self, sub: str = "") -> list[str]:
        folder = self.root / sub if sub else self.root
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(TMP_PREFIX))

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def create(self, name: str, data: bytes) -> bool:
        final = self.root / name
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = self.root / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
        atomic_write_bytes(staging, data)
        try:
            created = _link_exclusive(staging, final, data)
        finally:
            staging.unlink(missing_ok=True)
        if created:
            fsync_dir(final.parent)
        return created


@dataclass(frozen=True)
class ObjectRegistry:
    store: VersionStore
    prefix: str

    def where(self, name: str) -> str:
        return f"{self.store.url}/{self.prefix}/{name}"

    def names(self, sub: str = "") -> list[str]:
        return self.store.objects(f"{self.prefix}/{sub}" if sub else self.prefix)

    def read(self, name: str) -> bytes:
        return self.store.read_bytes(f"{self.prefix}/{name}")

    def create(self, name: str, data: bytes) -> bool:
        return self.store.put_new(f"{self.prefix}/{name}", data)


def registry_storage(registry: Path | str | RegistryStorage) -> RegistryStorage:
    """A directory path or an s3:// URL as registry storage (storage objects pass through)."""
    if isinstance(registry, DirectoryRegistry | ObjectRegistry):
        return registry
    text = str(registry)
    if "://" in text:
        root, _, prefix = text.rstrip("/").rpartition("/")
        return ObjectRegistry(VersionStore(root), prefix)
    return DirectoryRegistry(Path(registry))
