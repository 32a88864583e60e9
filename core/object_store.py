"""Immutable artifact versions on an object store (s3://), with the local store's guarantees.

An object store has no rename, so a version cannot appear at once the way a directory rename makes it appear.
Instead a version is published by one object written last: its files are uploaded under
``<prefix>/<version>/``, then ``<prefix>/<version>/_PUBLISHED.json`` (the manifest of every file with its
size and sha256) is created with a conditional write that fails if it exists. Readers list only versions whose
marker exists and fetch exactly the files it names, checking each against it, so:

- a crashed upload (files, no marker) is never read, and is swept once old;
- a published version is never changed: its marker cannot be written twice and names the bytes it vouches for;
- a local copy (the cache) is made with the local store's atomic directory rename, so it too is whole or absent.

Credentials and endpoint come from the AWS_* settings (core.settings.object_store_settings).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.atomic_io import VERSION_ID_RE, atomic_directory
from core.settings import object_store_settings

MARKER = "_PUBLISHED.json"
MARKER_FORMAT = 1
_CHUNK = 8 << 20


class UnpublishedVersion(FileNotFoundError):
    """A version without its marker: still uploading, crashed, or never there."""


class CorruptVersion(OSError):
    """A stored file does not match the size or sha256 its marker names."""


def is_url(root: str) -> bool:
    return "://" in root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class VersionStore:
    """Versions under one object-store URL, e.g. ``s3://bucket/platform/artifacts``."""

    url: str

    @cached_property
    def _store(self) -> Any:
        import obstore.store

        parts = urlsplit(self.url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"artifact root {self.url!r}: use a directory or an s3://bucket/prefix URL")
        settings = object_store_settings()
        options: dict[str, Any] = {"region": settings.region}
        if settings.key_id:
            options |= {"access_key_id": settings.key_id, "secret_access_key": settings.secret}
        if settings.session_token:
            options["session_token"] = settings.session_token
        if settings.endpoint_url:
            options["endpoint"] = settings.endpoint_url
            options["client_options"] = {"allow_http": settings.endpoint_url.startswith("http://")}
        return obstore.store.from_url(self.url, **options)

    # ---- writing ------------------------------------------------------------------------------------------------

    def upload(self, local_dir: Path, key: str) -> dict[str, Any]:
        """Upload every file under `local_dir` to `key/`, then create the marker; returns the marker.

        Raises FileExistsError if `key` is already published (versions are immutable)."""
        files = {
            path.relative_to(local_dir).as_posix(): path
            for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
        }
        return self.upload_files(files, key)

    def upload_files(self, files: dict[str, Path], key: str) -> dict[str, Any]:
        """Upload `files` (name under the version -> local file) to `key/`, then create the marker."""
        import obstore

        if self.marker(key) is not None:
            raise FileExistsError(f"{self.url}/{key} is already published; versions are immutable")
        listed: dict[str, dict[str, Any]] = {}
        for rel, path in sorted(files.items()):
            if rel == MARKER:
                continue
            with path.open("rb") as f:
                obstore.put(self._store, f"{key}/{rel}", f)
            listed[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        marker = {"format": MARKER_FORMAT, "published_at": datetime.now(UTC).isoformat(), "files": listed}
        try:
            obstore.put(self._store, f"{key}/{MARKER}", json.dumps(marker, indent=1).encode(), mode="create")
        except Exception as exc:  # obstore's AlreadyExistsError: another writer published the same key
            if "exist" in type(exc).__name__.lower():
                raise FileExistsError(f"{self.url}/{key} was published by another writer meanwhile") from exc
            raise
        return marker

    def put_new(self, key: str, data: bytes) -> bool:
        """Create one small object unless it exists (a compare-and-swap on the name); False if it existed."""
        import obstore

        try:
            obstore.put(self._store, key, data, mode="create")
        except Exception as exc:
            if "exist" in type(exc).__name__.lower():
                return False
            raise
        return True

    # ---- reading ------------------------------------------------------------------------------------------------

    def marker(self, key: str) -> dict[str, Any] | None:
        """The marker of version `key`, or None while it is unpublished."""
        try:
            return json.loads(self.read_bytes(f"{key}/{MARKER}"))
        except FileNotFoundError:
            return None

    def read_bytes(self, key: str) -> bytes:
        import obstore

        return bytes(obstore.get(self._store, key).bytes())

    def children(self, prefix: str) -> list[str]:
        """Names directly under `prefix/` (its "subdirectories"), sorted."""
        import obstore

        listed = obstore.list_with_delimiter(self._store, prefix.rstrip("/") + "/" if prefix else None)
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in listed["common_prefixes"])

    def objects(self, prefix: str) -> list[str]:
        """Object names directly under `prefix/` (not in its "subdirectories"), sorted."""
        import obstore

        listed = obstore.list_with_delimiter(self._store, prefix.rstrip("/") + "/")
        return sorted(o["path"].rsplit("/", 1)[-1] for o in listed["objects"])

    def published(self, prefix: str) -> list[str]:
        """Published version names under `prefix/`, oldest first (version names sort by time)."""
        return [name for name in self.children(prefix) if self.marker(f"{prefix}/{name}") is not None]

    def fetch(self, key: str, dest: Path) -> Path:
        """A local copy of published version `key` at `dest` (made once; whole or absent, checked file by file)."""
        if dest.is_dir():
            return dest
        marker = self.marker(key)
        if marker is None:
            raise UnpublishedVersion(f"{self.url}/{key} is not published (no {MARKER})")
        try:
            self._download(key, marker, dest)
        except OSError:
            if dest.is_dir():  # another process made the same copy first: versions are immutable, so it is ours
                return dest
            raise
        return dest

    def _download(self, key: str, marker: dict[str, Any], dest: Path) -> None:
        import obstore

        with atomic_directory(dest) as tmp:
            for rel, expected in marker["files"].items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with target.open("wb") as out:
                    for chunk in obstore.get(self._store, f"{key}/{rel}"):
                        out.write(chunk)
                        digest.update(chunk)
                size = target.stat().st_size
                if size != expected["size"] or digest.hexdigest() != expected["sha256"]:
                    raise CorruptVersion(
                        f"{self.url}/{key}/{rel}: {size} bytes, sha256 {digest.hexdigest()[:12]}…, but the marker "
                        f"says {expected['size']} bytes, {expected['sha256'][:12]}…; the object was changed after "
                        "publishing"
                    )

    # ---- clean-up -----------------------------------------------------------------------------------------------

    def newest_change(self, prefix: str) -> datetime | None:
        """When anything under `prefix/` was last written (None if nothing is there)."""
        import obstore

        times = [o["last_modified"] for chunk in obstore.list(self._store, prefix.rstrip("/") + "/") for o in chunk]
        return max(times) if times else None

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix/`; returns how many."""
        import obstore

        paths = [o["path"] for chunk in obstore.list(self._store, prefix.rstrip("/") + "/") for o in chunk]
        if paths:
            obstore.delete(self._store, paths)
        return len(paths)

    def sweep_unpublished(self, prefix: str, max_age: timedelta) -> list[str]:
        """Delete versions under `prefix/` that have no marker and no object newer than `max_age` (crashed uploads).

        A young unpublished version may still be uploading and is left alone."""
        import obstore

        removed = []
        now = datetime.now(UTC)
        for name in self.children(prefix):
            key = f"{prefix}/{name}"
            # Only what new_version_id names: partitions and a registry's folders are not uploads.
            if not VERSION_ID_RE.match(name) or self.marker(key) is not None:
                continue
            objects = [o for chunk in obstore.list(self._store, key + "/") for o in chunk]
            if objects and all(now - o["last_modified"] > max_age for o in objects):
                obstore.delete(self._store, [o["path"] for o in objects])
                removed.append(key)
        return removed
