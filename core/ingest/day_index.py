"""Interactions for one day from files that hold many days, without re-parsing them for every day.

Why: with one file for all days (a public ``ratings.csv`` named by INTERACTION_FILES), every day partition
used to decode, parse and normalize the whole file to keep one day of it, so a backfill cost days x file.
Now the first day that reads a file set splits it once into a per-day index, and later days read only
their own rows from it.

The index holds the records as read (before any check), never results: which rows are kept or quarantined
depends on raw.catalog, which may change between days. A day served from the index runs the same
``ingest_interactions`` on its own rows, the rows whose timestamp no day owns and the unreadable records,
in file order, so it returns exactly the rows, quarantine and stats a full read returns (the stats count
the other days' rows from the index's record count). The day that builds the index is answered from the
same split, held in memory, so every indexed day takes one path.

Layout: ``<index_dir>/<file set>/<version>/`` with ``days.parquet`` (records with a parsed day, sorted by
day, so a day's read touches only the row groups holding it), ``undated.parquet`` (records with no
parseable timestamp), ``rejects.parquet`` (records that could not be read) and ``manifest.json``. The
version is a digest of what decides the index's content: each file's path, device, inode, size, mtime and
a SHA-256 of its bytes, the encoding and the mapping; a changed file gets a new version and the old ones
of the same file set are removed. A version is published with one atomic rename (core.atomic_io): readers
see a whole index or none, and two runs that build the same version at once both succeed (the second
rename loses and its copy is discarded). Whatever goes wrong with the index, the day is answered from a
full read: the index only ever saves work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from core.atomic_io import TMP_PREFIX, atomic_directory, sweep_stale_temp_dirs
from core.ingest.encodings import ENCODING_SETTINGS, text_encoding
from core.ingest.interactions import ingest_interactions
from core.ingest.mappings import InteractionMapping, _column
from core.ingest.reading import _expand, _open_input, read_tables_with_rejects
from core.ingest.timestamps import parse_timestamps
from core.ingest.values import _P, _screen_values
from core.safe_open import is_inside

INDEX_FORMAT = 1  # bump when the layout or the day split changes, so old indexes are not read
INDEX_STATES = {
    "off": "the files were read whole: they are one day's own files, or no index directory is configured",
    "read": "the day's rows were read from the per-day index; the files were not parsed",
    "built": "the files were parsed and split by day, and the per-day index was written (or another run wrote "
    "it meanwhile)",
    "not_built": "the files were parsed, but no index could be written (see index_note)",
}
_DAY = f"{_P}index_day"
_ROW = f"{_P}index_row"
_ROW_GROUP_ROWS = 65_536  # small enough that one day's read skips most of a large file
_STALE_TEMP_S = 6 * 3600.0  # a half-written index older than this has no live writer (other hosts)
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class InteractionLoad:
    """One day's ``ingest_interactions`` result, how many records could not be read, and how it was read.

    ``index`` is a key of ``INDEX_STATES``; ``index_note`` says why an index was not written ("" otherwise).
    """

    rows: pl.DataFrame
    quarantine: pl.DataFrame
    stats: dict[str, int]
    unreadable_records: int
    index: str
    index_note: str = ""


@dataclass(frozen=True)
class _FileId:
    """What identifies one input file's content: where it is, its inode and stat, and a digest of its bytes."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    sha256: str

    def same_stat(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (self.device, self.inode, self.size, self.mtime_ns)


class _NotIndexable(Exception):
    """The records cannot be stored so that they read back identically; the day is served from a full read."""


def ingest_interaction_files(
    paths: Sequence[Path],
    encoding: str,
    mapping: InteractionMapping | None,
    day: date,
    known_title_ids: pl.Series | Sequence[str],
    *,
    per_day_files: bool,
    landing_root: str | Path | None = None,
    index_dir: Path | None = None,
) -> InteractionLoad:
    """Read the interaction files and normalize the rows of ``day``; the raw_interactions asset's whole job.

    Same result as ``read_tables_with_rejects`` followed by ``ingest_interactions`` (and the same errors, raised
    by those same calls). With ``per_day_files=False`` and an ``index_dir``, the files are parsed once per
    content and later days read only their rows from the per-day index (see the module docstring).
    """
    mapping = mapping or InteractionMapping()
    if per_day_files or index_dir is None or (identity := _identify(paths, encoding, mapping, landing_root)) is None:
        # No index wanted, or a file cannot be identified (the full read raises the error, as without an index).
        frame, rejects = read_tables_with_rejects(paths, encoding, source="interactions", landing_root=landing_root)
        return _ingest_whole(frame, rejects, mapping, day, known_title_ids, per_day_files, "off")
    files, key, set_key = identity
    version = Path(index_dir) / set_key[:32] / key[:32]
    if version.exists():
        try:
            return _read_day(version, key, mapping, day, known_title_ids)
        except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError):
            shutil.rmtree(version, ignore_errors=True)  # unreadable: rebuilt below from a full read
    frame, rejects = read_tables_with_rejects(paths, encoding, source="interactions", landing_root=landing_root)
    try:
        split = _split(frame, mapping)
    except (_NotIndexable, ValueError) as exc:  # a mapping error is raised by ingest_interactions, as without index
        return _ingest_whole(frame, rejects, mapping, day, known_title_ids, False, "not_built", str(exc))
    state, note = _publish(version, key, files, split, rejects, frame)
    records = _day_records(split.dated.lazy(), split.undated, day)
    return _ingest_day(records, rejects, frame.height, mapping, day, known_title_ids, state, note)


def _ingest_whole(
    frame: pl.DataFrame,
    rejects: pl.DataFrame,
    mapping: InteractionMapping,
    day: date,
    known_title_ids: pl.Series | Sequence[str],
    per_day_files: bool,
    state: str,
    note: str = "",
) -> InteractionLoad:
    rows, quarantine, stats = ingest_interactions(
        frame, mapping, day, known_title_ids, per_day_files=per_day_files, read_rejects=rejects
    )
    return InteractionLoad(rows, quarantine, stats, rejects.height, state, note)


def _identify(
    paths: Sequence[Path], encoding: str, mapping: InteractionMapping, landing_root: str | Path | None
) -> tuple[list[_FileId], str, str] | None:
    """(file ids, index version key, file-set key); None when a file cannot be identified (the read will say why).

    Each file is opened the way the reader opens it (``core.safe_open``, no symlinks under the landing root)
    and hashed from that descriptor, so the digest is of the bytes a full read would parse.
    """
    try:
        codec = text_encoding(encoding, ENCODING_SETTINGS["interactions"])
        files = [_file_id(path, landing_root) for path in _expand(paths)]
    except (OSError, ValueError):
        return None
    if not files:
        return None
    settings = {"encoding": codec, "mapping": dataclasses.asdict(mapping)}
    key = _digest({"format": INDEX_FORMAT, "settings": settings, "files": [dataclasses.asdict(f) for f in files]})
    set_key = _digest({"format": INDEX_FORMAT, "paths": [f.path for f in files]})
    return files, key, set_key


def _file_id(path: Path, landing_root: str | Path | None) -> _FileId:
    follow = landing_root is None or not is_inside(Path(landing_root), path)
    digest = hashlib.sha256()
    with _open_input(path, follow) as fh:
        st = os.fstat(fh.fileno())
        while block := fh.read(_HASH_CHUNK):
            digest.update(block)
    return _FileId(os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, digest.hexdigest())


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def row_days(frame: pl.DataFrame, mapping: InteractionMapping) -> pl.Series:
    """Each record's UTC day, null where its timestamp does not parse: the day ``ingest_interactions`` gives it.

    Computed the same way (the timestamp column screened, then ``parse_timestamps``), so a record lands in the
    index under exactly the partition whose full read would keep or quarantine it.
    """
    c_ts = _column(frame, mapping, "timestamp", required=True)
    assert c_ts is not None
    screened = _screen_values(frame.select(c_ts), [c_ts])
    return parse_timestamps(screened[c_ts]).dt.date().rename(_DAY)


@dataclass(frozen=True)
class _Split:
    """The records with their file position: those with a day (sorted by day), and those without one."""

    dated: pl.DataFrame
    undated: pl.DataFrame


def _split(frame: pl.DataFrame, mapping: InteractionMapping) -> _Split:
    if _DAY in frame.columns or _ROW in frame.columns:
        raise _NotIndexable(f"the input has a column named {_DAY!r} or {_ROW!r}, which the index uses")
    indexed = frame.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_ROW), row_days(frame, mapping))
    dated = indexed.filter(pl.col(_DAY).is_not_null()).sort(_DAY, maintain_order=True)
    return _Split(dated, indexed.filter(pl.col(_DAY).is_null()).drop(_DAY))


def _day_records(dated: pl.LazyFrame, undated: pl.DataFrame, day: date) -> pl.DataFrame:
    """The records a full read of ``day`` looks at (its own and the undated ones), back in file order."""
    own = dated.filter(pl.col(_DAY) == day).drop(_DAY).collect()
    return pl.concat([own, undated]).sort(_ROW).drop(_ROW)


def _ingest_day(
    records: pl.DataFrame,
    rejects: pl.DataFrame,
    total_records: int,
    mapping: InteractionMapping,
    day: date,
    known_title_ids: pl.Series | Sequence[str],
    state: str,
    note: str = "",
) -> InteractionLoad:
    """``ingest_interactions`` on the day's records, with the stats a full read of all ``total_records`` gives."""
    rows, quarantine, stats = ingest_interactions(
        records, mapping, day, known_title_ids, per_day_files=False, read_rejects=rejects
    )
    elsewhere = total_records - records.height  # the other days' records: a full read counts them
    stats = {**stats, "rows_in": stats["rows_in"] + elsewhere, "other_day_rows": stats["other_day_rows"] + elsewhere}
    return InteractionLoad(rows, quarantine, stats, rejects.height, state, note)


def _publish(
    version: Path, key: str, files: list[_FileId], split: _Split, rejects: pl.DataFrame, frame: pl.DataFrame
) -> tuple[str, str]:
    """Write the index version for what was just parsed; (state, note). Never raises: the index is optional."""
    if any(not _unchanged(f) for f in files):
        return "not_built", "an input file changed while it was read; the next run indexes the new content"
    try:
        sweep_stale_temp_dirs(version.parent, max_age_s=_STALE_TEMP_S)
        with atomic_directory(version) as tmp:
            _write(tmp, key, split, rejects, frame)
    except (_NotIndexable, ValueError, pl.exceptions.PolarsError) as exc:
        return "not_built", str(exc)
    except OSError as exc:
        if not (version / "manifest.json").exists():  # else another run published the same version first
            return "not_built", f"cannot write the index under {version.parent}: {exc}"
    _remove_other_versions(version)
    return "built", ""


def _unchanged(file: _FileId) -> bool:
    try:
        return file.same_stat(os.stat(file.path))
    except OSError:
        return False


def _write(tmp: Path, key: str, split: _Split, rejects: pl.DataFrame, frame: pl.DataFrame) -> None:
    parts = {"days.parquet": split.dated, "undated.parquet": split.undated, "rejects.parquet": rejects}
    for name, part in parts.items():
        part.write_parquet(tmp / name, row_group_size=_ROW_GROUP_ROWS)
        if list(pl.read_parquet_schema(tmp / name).items()) != list(part.schema.items()):
            raise _NotIndexable(f"the input's column types do not survive a Parquet round trip ({name})")
    manifest = {"format": INDEX_FORMAT, "key": key, "records": frame.height, "schema": _schema_text(frame)}
    (tmp / "manifest.json").write_text(json.dumps(manifest))


def _schema_text(frame: pl.DataFrame) -> list[list[str]]:
    return [[name, str(dtype)] for name, dtype in frame.schema.items()]


def _read_day(
    version: Path, key: str, mapping: InteractionMapping, day: date, known_title_ids: pl.Series | Sequence[str]
) -> InteractionLoad:
    """The day's result from the index; only the row groups that hold the day are read from days.parquet."""
    manifest = json.loads((version / "manifest.json").read_text())
    if manifest["format"] != INDEX_FORMAT or manifest["key"] != key:
        raise ValueError(f"{version} is not the index of this input")
    records = _day_records(pl.scan_parquet(version / "days.parquet"), pl.read_parquet(version / "undated.parquet"), day)
    if _schema_text(records) != manifest["schema"]:
        raise ValueError(f"{version} does not hold the columns it was written with")
    rejects = pl.read_parquet(version / "rejects.parquet")
    return _ingest_day(records, rejects, int(manifest["records"]), mapping, day, known_title_ids, "read")


def _remove_other_versions(version: Path) -> None:
    """Drop the indexes of earlier contents of the same files: only the current content is ever read again."""
    for other in version.parent.iterdir():
        if other != version and not other.name.startswith(TMP_PREFIX) and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
