"""The artifact store: versioned, immutable directories per asset (and partition), on a local (or shared)
filesystem or on an object store.

With an object-store root (`s3://bucket/prefix`) every version is written locally first, uploaded, and published
by its marker object (core/object_store.py); readers fetch a published version into `cache_dir` once and use the
local copy, so the assets and the trainer keep working with directories either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from core.atomic_io import (
    STAGING_PREFIX,
    Leftover,
    atomic_directory,
    fsync_dir,
    fsync_tree,
    list_versions,
    new_version_id,
    sweep_staging_dirs,
    sweep_stale_temp_dirs,
)
from core.object_store import VersionStore, is_url


class ArtifactStore(dg.ConfigurableResource):
    """Artifact store rooted at `root` (PLATFORM_HOME/artifacts by default, or ARTIFACTS_URL).

    Layout: `<root>/<asset>/[<partition>/]<version>/`. `root` is a directory (a shared volume in a team
    deployment) or an object-store URL, whose versions are copied into `cache_dir` to be read.
    """

    root: str
    cache_dir: str = ""  # local copies of published versions (object-store roots only)
    # A temporary directory whose owner runs on another host (or left no owner marker) is removed once nothing in
    # it changed for this long; one whose owner process on this host is gone is removed at once.
    temp_dir_max_age_hours: float = 24.0
    # A run's staging directory is removed once every run of its lineage finished and it was idle this long: until
    # then a re-execution of the failed run may still resume from its checkpoints.
    staging_retention_hours: float = 72.0

    @property
    def remote(self) -> VersionStore | None:
        """The object store holding the published versions, or None for a directory root."""
        if not is_url(self.root):
            return None
        if not self.cache_dir:
            raise ValueError(f"the artifact store at {self.root} needs a local cache_dir for the versions it reads")
        return VersionStore(self.root.rstrip("/"))

    @property
    def local_root(self) -> Path:
        """Where versions live as directories: `root` itself, or the cache of an object-store root."""
        return Path(self.cache_dir) if is_url(self.root) else Path(self.root)

    def asset_dir(self, asset: str, partition: str | None = None) -> Path:
        base = self.local_root / asset
        return base / partition if partition else base

    @staticmethod
    def _key(asset: str, partition: str | None, version: str | None = None) -> str:
        return "/".join(part for part in (asset, partition, version) if part)

    def clean_stale_temp_dirs(self, asset: str, partition: str | None = None) -> list[Leftover]:
        """Remove crashed writers' temporary directories of this asset (partition); logged, never raises."""
        try:
            found = sweep_stale_temp_dirs(
                self.asset_dir(asset, partition), max_age_s=self.temp_dir_max_age_hours * 3600
            )
        except OSError as exc:  # a cleanup problem must never fail the write that triggered it
            dg.get_dagster_logger().warning(f"could not sweep temporary directories of {asset}: {exc}")
            return []
        remote = self.remote
        if remote is not None:  # uploads that crashed before their marker: never readable, only in the way
            age = timedelta(hours=self.temp_dir_max_age_hours)
            try:
                found += [
                    Leftover(f"{remote.url}/{key}", "unpublished_upload", f"no marker and untouched for {age}")
                    for key in remote.sweep_unpublished(self._key(asset, partition), age)
                ]
            except Exception as exc:  # the object store's own errors too: a sweep never fails the write
                dg.get_dagster_logger().warning(f"could not sweep unpublished uploads of {asset}: {exc}")
        _log_leftovers(found)
        return found

    def clean_stale_staging_dirs(
        self, asset: str, runs_finished: Callable[[str], bool | None], keep: frozenset[str] = frozenset()
    ) -> list[Leftover]:
        """Remove staging directories of finished, idle run lineages (see `sweep_staging_dirs`); never raises."""
        try:
            removed, unknown = sweep_staging_dirs(
                self.asset_dir(asset),
                runs_finished=runs_finished,
                max_age_s=self.staging_retention_hours * 3600,
                keep=keep,
            )
        except OSError as exc:
            dg.get_dagster_logger().warning(f"could not sweep staging directories of {asset}: {exc}")
            return []
        removed += self._clean_remote_staging(asset, runs_finished, keep)
        _log_leftovers(removed)
        for entry in unknown:
            dg.get_dagster_logger().info(f"kept {entry.path}: {entry.detail}; remove it by hand if it is abandoned")
        return removed

    def _clean_remote_staging(
        self, asset: str, runs_finished: Callable[[str], bool | None], keep: frozenset[str]
    ) -> list[Leftover]:
        """What trainer pods published under a run's staging prefix (checkpoints, config, result), once every run
        of its lineage finished and nothing was written there for `staging_retention_hours`; never raises."""
        remote = self.remote
        if remote is None:
            return []
        removed: list[Leftover] = []
        try:
            for name in remote.children(asset):
                key = name[len(STAGING_PREFIX) :]
                if not name.startswith(STAGING_PREFIX) or key in keep or runs_finished(key) is not True:
                    continue
                newest = remote.newest_change(f"{asset}/{name}")
                idle = datetime.now(UTC) - newest if newest else timedelta(0)
                if newest is not None and idle >= timedelta(hours=self.staging_retention_hours):
                    count = remote.delete_prefix(f"{asset}/{name}")
                    detail = f"runs of {key} finished; idle for {idle.total_seconds() / 3600:.1f} h; {count} objects"
                    removed.append(Leftover(f"{remote.url}/{asset}/{name}", "run_finished", detail))
        except Exception as exc:  # the object store's own errors too: a sweep never fails the step
            dg.get_dagster_logger().warning(f"could not sweep staging prefixes of {asset}: {exc}")
        return removed

    @contextmanager
    def new_version(
        self, asset: str, partition: str | None = None, *, leftovers: list[Leftover] | None = None
    ) -> Iterator[tuple[str, Path]]:
        """Yield (version, temp dir); the directory appears atomically at exit.

        Crashed writers' leftovers of the same asset (partition) are swept first; pass `leftovers` to get them.
        """
        found = self.clean_stale_temp_dirs(asset, partition)
        if leftovers is not None:
            leftovers.extend(found)
        version = new_version_id()
        final = self.asset_dir(asset, partition) / version
        remote = self.remote
        with atomic_directory(final) as tmp:
            yield version, tmp
            if remote is not None:  # published before the local copy appears: a reader never gets ahead of it
                remote.upload(tmp, self._key(asset, partition, version))

    def staging_path(self, asset: str, key: str) -> Path:
        """Where `staging_dir` puts the work directory of `key` (nothing is created)."""
        return self.asset_dir(asset) / f"{STAGING_PREFIX}{key}"

    def staging_dir(self, asset: str, key: str) -> Path:
        """A resumable work directory (hidden from `versions`), e.g. one per Dagster run lineage.

        A retried run gets the same directory back, so a trainer can resume from its checkpoints.
        """
        path = self.staging_path(asset, key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, asset: str, staging: Path) -> tuple[str, Path]:
        """Atomically turn a finished staging directory into a new immutable version."""
        version = new_version_id()
        final = self.asset_dir(asset) / version
        fsync_tree(staging)
        remote = self.remote
        if remote is not None:
            remote.upload(staging, self._key(asset, None, version))
        staging.rename(final)
        fsync_dir(final.parent)
        return version, final

    def version_path(self, asset: str, version: str, partition: str | None = None) -> Path:
        return self.asset_dir(asset, partition) / version

    def version_ids(self, asset: str, partition: str | None = None) -> list[str]:
        """Published versions, oldest first (version names sort by time)."""
        remote = self.remote
        if remote is None:
            return [p.name for p in list_versions(self.asset_dir(asset, partition))]
        return remote.published(self._key(asset, partition))

    def fetch(self, asset: str, version: str, partition: str | None = None) -> Path:
        """The local directory of a published version (downloaded into the cache once, for an object store)."""
        path = self.version_path(asset, version, partition)
        remote = self.remote
        return path if remote is None else remote.fetch(self._key(asset, partition, version), path)

    def read_text(self, asset: str, version: str, name: str, partition: str | None = None) -> str | None:
        """One small file of a version (a manifest, lineage.json) without fetching the rest; None if absent."""
        remote = self.remote
        if remote is None:
            path = self.version_path(asset, version, partition) / name
            return path.read_text() if path.is_file() else None
        try:
            return remote.read_bytes(f"{self._key(asset, partition, version)}/{name}").decode()
        except FileNotFoundError:
            return None

    def partitions(self, asset: str) -> list[str]:
        """Partitions of `asset` with at least one published version."""
        remote = self.remote
        if remote is None:
            base = self.asset_dir(asset)
            names = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        else:
            names = remote.children(asset)
        return [name for name in names if not name.startswith(".") and self.version_ids(asset, name)]

    def versions(self, asset: str, partition: str | None = None) -> list[Path]:
        """Local directories of every published version (an object store's are all fetched: prefer version_ids)."""
        return [self.fetch(asset, v, partition) for v in self.version_ids(asset, partition)]

    def latest(self, asset: str, partition: str | None = None) -> Path | None:
        found = self.version_ids(asset, partition)
        return self.fetch(asset, found[-1], partition) if found else None

    def require_latest(self, asset: str, partition: str | None = None) -> Path:
        found = self.latest(asset, partition)
        if found is None:
            where = f"{asset}[{partition}]" if partition else asset
            # Permanent until someone materializes the upstream asset: a step retry would fail the same way.
            raise dg.Failure(
                description=f"no version of {where} under {self.asset_dir(asset, partition)}: "
                f"materialize {asset} first",
                allow_retries=False,
            )
        return found


def _log_leftovers(found: list[Leftover]) -> None:
    log = dg.get_dagster_logger()
    for entry in found:
        if entry.removed:
            log.info(f"removed stale {entry.path} ({entry.reason}: {entry.detail})")
        else:
            log.warning(f"stale {entry.path} ({entry.reason}): {entry.detail}")


def leftovers_metadata(found: list[Leftover]) -> dg.MetadataValue:
    """What a sweep removed, for an asset's metadata (an empty list says the sweep ran and found nothing)."""
    return dg.MetadataValue.json([entry.as_dict() for entry in found])
