"""Which days a command may run: the requested days checked against the daily partitions and the user's data.

Checked before anything runs. A day before PLATFORM_PARTITION_START otherwise fails inside Dagster with an error
that names neither the variable nor the day to set it to, and events before the first partition are never
ingested at all, without a word. For the files source the data's first and last day are read cheaply: from the
day folders of an INTERACTION_FILES pattern with `{day}`, otherwise from the timestamp column alone.
"""

from __future__ import annotations

import fnmatch
import glob
import re
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from assets.partitions import require_within_partitions
from core import ingest
from core.landing_files import resolve_glob
from core.settings import PlatformSettings

_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_SUFFIXES = tuple(ingest.SUPPORTED_SUFFIXES)
_PARQUET = (".parquet", ".pq")


@dataclass(frozen=True)
class DataDates:
    """The first and last day (UTC) of the user's interaction data, and where they were read from."""

    first: date
    last: date
    origin: str


def days_between(first: date, last: date) -> list[str]:
    """Partition keys of first..last, both included."""
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def check_days(settings: PlatformSettings, first: date, last: date) -> DataDates | None:
    """Raise a ValueError saying what to change when first..last cannot run; the data's dates when known.

    The data's own range is checked first, so that the suggested PLATFORM_PARTITION_START is its first day.
    """
    if first > last:
        raise ValueError(f"the first day {first} is after the last day {last}")
    data = interaction_dates(settings)
    if data is not None:
        require_within_partitions(data.first, data.last, f"your interaction data ({data.origin})", data.first)
    require_within_partitions(first, last, f"the requested range {first}..{last}", data.first if data else None)
    if data is not None and (last < data.first or first > data.last):
        raise ValueError(
            f"the requested range {first}..{last} holds none of your interaction data, which covers "
            f"{data.first}..{data.last}: choose days inside it"
        )
    return data


def interaction_dates(settings: PlatformSettings) -> DataDates | None:
    """The files source's first and last day of events; None for the synthetic source or when no row has a
    readable timestamp (the runs then quarantine those rows with their reason)."""
    if settings.data_source != "files":
        return None
    pattern = settings.interaction_files
    if not pattern:
        raise ValueError("INTERACTION_FILES is not set; with PLATFORM_DATA_SOURCE=files it must name your files")
    if "{day}" in pattern:
        return _dates_from_day_folders(pattern)
    column = ingest.interaction_mapping_from_json(settings.interaction_mapping).timestamp
    return _dates_from_timestamps(pattern, column, settings.landing_dir)


def _dates_from_day_folders(pattern: str) -> DataDates | None:
    """Days whose substitution into the pattern matches an existing path: no file is opened."""
    days: set[date] = set()
    for name in glob.glob(pattern.replace("{day}", "*")):
        for match in _ISO_DAY.finditer(name):
            if fnmatch.fnmatchcase(name, pattern.replace("{day}", match.group())):
                try:
                    days.add(date.fromisoformat(match.group()))
                except ValueError:  # 2026-13-45: a folder name, not a day
                    continue
    if not days:
        return None
    return DataDates(min(days), max(days), f"day folders of INTERACTION_FILES={pattern}")


def _dates_from_timestamps(pattern: str, column: str, landing_root: Path) -> DataDates | None:
    files = _data_files(resolve_glob(landing_root, pattern, ingest.SUPPORTED_SUFFIXES).paths)
    if not files:
        raise FileNotFoundError(f"INTERACTION_FILES={pattern!r} matches no readable CSV/Parquet files")
    days: list[date] = []
    for path in files:
        parsed = ingest.parse_timestamps(_column_as_read(path, column)).drop_nulls()
        if parsed.len():
            days += [parsed.min().date(), parsed.max().date()]
    if not days:
        return None
    shown = str(files[0]) if len(files) == 1 else f"{len(files)} files of INTERACTION_FILES={pattern}"
    return DataDates(min(days), max(days), f"timestamps in {shown}")


def _data_files(paths: list[Path]) -> list[Path]:
    """Matched files, and the supported files inside matched directories (the readers expand them alike)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(_SUFFIXES))
        else:
            out.append(path)
    return out


def _column_as_read(path: Path, column: str) -> pl.Series:
    """One column of a CSV/TSV (as text) or Parquet file; header names compared without surrounding spaces,
    as the ingest reads them. Undecodable bytes are replaced: a timestamp is ASCII in every encoding we read."""
    if path.name.lower().endswith(_PARQUET):
        header = list(pl.read_parquet_schema(path))
        return pl.read_parquet(path, columns=[_header_name(path, header, column)]).to_series()
    options = {
        "separator": "\t" if path.name.lower().endswith(".tsv") else ",",
        "infer_schema": False,
        "encoding": "utf8-lossy",
    }
    header = pl.read_csv(path, n_rows=0, **options).columns
    name = _header_name(path, header, column)
    frame = pl.read_csv(path, columns=[name], truncate_ragged_lines=True, ignore_errors=True, **options)
    return frame.to_series()


def _header_name(path: Path, header: list[str], column: str) -> str:
    for name in header:
        if name.strip().lstrip("\ufeff").strip() == column:
            return name
    raise ValueError(
        f"{path}: INTERACTION_MAPPING's timestamp column {column!r} is not in the header; columns present: {header}"
    )
