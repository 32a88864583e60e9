"""The artifact store: versioned, immutable directories per asset (and partition)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


class ArtifactStore(dg.ConfigurableResource):
    """Local-filesystem artifact store rooted at `root` (PLATFORM_HOME/artifacts by default).

    Layout: `<root>/<asset>/[<partition>/]<version>/`. A team deployment points
    `root` at a shared volume (a ReadWriteMany PVC or a mounted bucket).
    """

    root: str
    # A temporary directory whose owner runs on another host (or left no owner marker) is removed once nothing in
    # it changed for this long; one whose owner process on this host is gone is removed at once.
    temp_dir_max_age_hours: float = 24.0
    # A run's staging directory is removed once every run of its lineage finished and it was idle this long: until
    # then a re-execution of the failed run may still resume from its checkpoints.
    staging_retention_hours: float = 72.0

    def asset_dir(self, asset: str, partition: str | None = None) -> Path:
        base = Path(self.root) / asset
        return base / partition if partition else base

    def clean_stale_temp_dirs(self, asset: str, partition: str | None = None) -> list[Leftover]:
        """Remove crashed writers' temporary directories of this asset (partition); logged, never raises."""
        try:
            found = sweep_stale_temp_dirs(
                self.asset_dir(asset, partition), max_age_s=self.temp_dir_max_age_hours * 3600
            )
        except OSError as exc:  # a cleanup problem must never fail the write that triggered it
            dg.get_dagster_logger().warning(f"could not sweep temporary directories of {asset}: {exc}")
            return []
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
        _log_leftovers(removed)
        for entry in unknown:
            dg.get_dagster_logger().info(f"kept {entry.path}: {entry.detail}; remove it by hand if it is abandoned")
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
        with atomic_directory(final) as tmp:
            yield version, tmp

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
        staging.rename(final)
        fsync_dir(final.parent)
        return version, final

    def version_path(self, asset: str, version: str, partition: str | None = None) -> Path:
        return self.asset_dir(asset, partition) / version

    def versions(self, asset: str, partition: str | None = None) -> list[Path]:
        return list_versions(self.asset_dir(asset, partition))

    def latest(self, asset: str, partition: str | None = None) -> Path | None:
        found = self.versions(asset, partition)
        return found[-1] if found else None

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
