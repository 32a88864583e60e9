"""The landing area: where raw drops arrive (synthetic generator or the user's files)."""

from __future__ import annotations

import glob
from datetime import date
from pathlib import Path

import dagster as dg

from core import ingest, synthetic


class LandingArea(dg.ConfigurableResource):
    """Resolves which files feed a raw asset.

    `source="synthetic"`: the built-in generator's layout under `root`; a missing
    drop is generated on demand (the generator is deterministic, so this is the
    same data a scheduled drop would have written).
    `source="files"`: the user's CSV/Parquet files named by globs, read through
    the documented column mappings (JSON objects).
    """

    root: str
    source: str = "synthetic"
    synthetic_seed: int = 7
    synthetic_titles: int = 3000
    synthetic_members: int = 4000
    synthetic_start: str = "2026-01-01"
    synthetic_days: int = 7
    catalog_files: str = ""
    interaction_files: str = ""
    catalog_mapping: str = "{}"
    interaction_mapping: str = "{}"

    def synthetic_config(self) -> synthetic.SyntheticConfig:
        return synthetic.SyntheticConfig(
            seed=self.synthetic_seed,
            n_titles=self.synthetic_titles,
            n_members=self.synthetic_members,
            start_day=date.fromisoformat(self.synthetic_start),
            days=self.synthetic_days,
        )

    @property
    def is_synthetic(self) -> bool:
        return self.source == "synthetic"

    def catalog_mapping_obj(self) -> ingest.CatalogMapping:
        return (
            ingest.catalog_mapping_from_json(self.catalog_mapping) if not self.is_synthetic else ingest.CatalogMapping()
        )

    def interaction_mapping_obj(self) -> ingest.InteractionMapping:
        if self.is_synthetic:
            return ingest.InteractionMapping()
        return ingest.interaction_mapping_from_json(self.interaction_mapping)

    def catalog_paths(self, log: dg.DagsterLogManager | None = None) -> list[Path]:
        if self.is_synthetic:
            path = synthetic.landing_paths(Path(self.root), self.synthetic_config().start_day)["catalog"]
            if not path.exists():
                synthetic.write_catalog(Path(self.root), self.synthetic_config())
                if log:
                    log.info(f"no catalog drop under {self.root}; wrote the synthetic catalog to {path}")
            return [path]
        return _glob_required(self.catalog_files, "CATALOG_FILES")

    def interaction_paths(self, day: date, log: dg.DagsterLogManager | None = None) -> tuple[list[Path], bool]:
        """(files, per_day): per_day is True when the files hold exactly this day's events."""
        if self.is_synthetic:
            path = synthetic.landing_paths(Path(self.root), day)["interactions"]
            if not path.exists():
                synthetic.ensure_drop(Path(self.root), self.synthetic_config(), day)
                if log:
                    log.info(f"no landing drop for {day}; generated the synthetic drop under {path.parent}")
            return [path], True
        pattern = self.interaction_files
        per_day = "{day}" in pattern
        return _glob_required(pattern.replace("{day}", day.isoformat()), "INTERACTION_FILES"), per_day

    def conversation_paths(self, day: date) -> list[Path]:
        """External JSONL conversations for the day (optional in both modes)."""
        folder = synthetic.landing_paths(Path(self.root), day)["conversations"].parent
        return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def _glob_required(pattern: str, setting: str) -> list[Path]:
    if not pattern:
        raise ValueError(
            f"{setting} is not set; with PLATFORM_DATA_SOURCE=files it must be a glob of CSV or Parquet files "
            "(see README 'Bring your own data')"
        )
    found = sorted(Path(p) for p in glob.glob(pattern))
    if not found:
        raise FileNotFoundError(f"{setting}={pattern!r} matches no files")
    return found
