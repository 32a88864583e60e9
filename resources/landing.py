"""The landing area: where raw drops arrive (synthetic generator or the user's files)."""

from __future__ import annotations

import os
import stat
from datetime import date
from pathlib import Path

import dagster as dg
import pydantic

from core import ingest, synthetic
from core.landing_files import (
    Listing,
    conversation_encoding,
    describe_ignored,
    list_day_folder,
    resolve_glob,
)
from core.settings import SYNTHETIC_DEFAULTS


class LandingArea(dg.ConfigurableResource):
    """Resolves which files feed a raw asset.

    `source="synthetic"`: the built-in generator's layout under `root`; a missing
    drop is generated on demand (the generator is deterministic, so this is the
    same data a scheduled drop would have written).
    `source="files"`: the user's CSV/Parquet files named by globs, read through
    the documented column mappings (JSON objects).

    Files under the landing root are read only when `core.landing_files` accepts them (regular files, no
    symlinks, suffix of the folder's format), the same filter the landing sensor uses; the `*_encoding`
    fields name the text encoding of each source (any Python codec name).
    """

    root: str
    source: str = "synthetic"
    synthetic_seed: int = SYNTHETIC_DEFAULTS.seed
    synthetic_titles: int = SYNTHETIC_DEFAULTS.titles
    synthetic_members: int = SYNTHETIC_DEFAULTS.members
    synthetic_start: str = SYNTHETIC_DEFAULTS.start.isoformat()
    synthetic_days: int = SYNTHETIC_DEFAULTS.days
    catalog_files: str = ""
    interaction_files: str = ""
    catalog_mapping: str = "{}"
    interaction_mapping: str = "{}"
    catalog_encoding: str = "utf-8"
    interaction_encoding: str = "utf-8"
    conversation_encoding: str = "utf-8"

    @pydantic.field_validator("catalog_encoding", "interaction_encoding", "conversation_encoding")
    @classmethod
    def _known_codec(cls, value: str, info: pydantic.ValidationInfo) -> str:
        setting = f"LandingArea.{info.field_name}"  # named in the error
        if info.field_name == "conversation_encoding":
            return conversation_encoding(value, setting)
        ingest.text_encoding(value, setting)
        return value

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
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise ValueError(f"{path} is not a regular file (a symlink, FIFO or directory); replace it with one")
            return [path]
        return _glob_required(self.catalog_files, "CATALOG_FILES", self.root, log)

    def interaction_paths(self, day: date, log: dg.DagsterLogManager | None = None) -> tuple[list[Path], bool]:
        """(files, per_day): per_day is True when the files hold exactly this day's events.

        Synthetic source: the accepted files of `interactions/day=D/` (the generated events.parquet, written
        when missing, plus any CSV/Parquet an operator put there), exactly what the landing sensor counts.
        """
        if self.is_synthetic:
            path = synthetic.landing_paths(Path(self.root), day)["interactions"]
            if not path.exists():
                synthetic.ensure_drop(Path(self.root), self.synthetic_config(), day)
                if log:
                    log.info(f"no landing drop for {day}; generated the synthetic drop under {path.parent}")
            listing = list_day_folder(Path(self.root), "interactions", day.isoformat())
            _warn_ignored(listing, log)
            if not listing.accepted:
                raise FileNotFoundError(
                    f"no readable interactions file under {path.parent} "
                    f"(ignored: {describe_ignored(listing.ignored)}); replace it with a regular CSV/Parquet file"
                )
            return listing.paths, True
        pattern = self.interaction_files
        per_day = "{day}" in pattern
        return _glob_required(pattern.replace("{day}", day.isoformat()), "INTERACTION_FILES", self.root, log), per_day

    def conversation_listing(self, day: date) -> Listing:
        """External JSONL conversations for the day (optional in both modes): accepted and ignored files."""
        return list_day_folder(Path(self.root), "conversations", day.isoformat())

    def preference_listing(self, day: date) -> Listing:
        """External JSONL preference pairs for the day (optional in both modes): accepted and ignored files."""
        return list_day_folder(Path(self.root), "preferences", day.isoformat())

    def conversation_paths(self, day: date) -> list[Path]:
        return self.conversation_listing(day).paths


def _warn_ignored(listing: Listing, log: dg.DagsterLogManager | None) -> None:
    if log and listing.ignored:
        log.warning(
            f"not reading {len(listing.ignored)} landing entries: {describe_ignored(listing.ignored)} "
            "(reasons: README 'Landing area')"
        )


def _glob_required(
    pattern: str, setting: str, landing_root: str, log: dg.DagsterLogManager | None = None
) -> list[Path]:
    """The files (or directories of files) the configured glob names.

    Matches under the landing root get the landing rules (`core.landing_files`: no symlinks, regular files with a
    read suffix; a matched directory is replaced by its accepted files), since partners write there. Elsewhere the
    glob is the operator's own configuration: symlinks are followed, and only FIFOs, sockets and devices are left
    out (opening a FIFO would block the run). Everything left out is logged with its reason.
    """
    if not pattern:
        raise ValueError(
            f"{setting} is not set; with PLATFORM_DATA_SOURCE=files it must be a glob of CSV or Parquet files "
            "(see README 'Bring your own data')"
        )
    match = resolve_glob(Path(landing_root), pattern, ingest.SUPPORTED_SUFFIXES)
    skipped = [f"{i.rel} ({i.reason})" for i in match.ignored]
    if skipped and log:
        log.warning(f"{setting}={pattern!r}: not reading {', '.join(skipped)} (README 'Landing area')")
    if not match.paths:
        extra = f"; left out: {', '.join(skipped)}" if skipped else ""
        raise FileNotFoundError(f"{setting}={pattern!r} matches no readable CSV/Parquet files{extra}")
    return match.paths
