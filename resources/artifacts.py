"""The artifact store: versioned, immutable directories per asset (and partition)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from core.atomic_io import STAGING_PREFIX, atomic_directory, fsync_dir, fsync_tree, list_versions, new_version_id


class ArtifactStore(dg.ConfigurableResource):
    """Local-filesystem artifact store rooted at `root` (PLATFORM_HOME/artifacts by default).

    Layout: `<root>/<asset>/[<partition>/]<version>/`. A team deployment points
    `root` at a shared volume (a ReadWriteMany PVC or a mounted bucket).
    """

    root: str

    def asset_dir(self, asset: str, partition: str | None = None) -> Path:
        base = Path(self.root) / asset
        return base / partition if partition else base

    @contextmanager
    def new_version(self, asset: str, partition: str | None = None) -> Iterator[tuple[str, Path]]:
        """Yield (version, temp dir); the directory appears atomically at exit."""
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
