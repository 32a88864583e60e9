"""Reading CSV/TSV/Parquet files into one frame of values plus the records that cannot be read.

Every file is opened through ``core.safe_open`` (a FIFO never blocks, a landing symlink is refused), and a
bad record becomes a quarantine row instead of failing the file; only what no row can survive raises.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import polars as pl

from core.ingest.csv_records import _polars_csv, _read_csv_record_by_record
from core.ingest.encodings import ENCODING_SETTINGS, text_encoding
from core.safe_open import LandingFileRefused, is_inside, open_regular_file
from core.schemas import RAW_QUARANTINE_SCHEMA, quarantine_frame

SUPPORTED_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".parquet", ".pq")


def _expand(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(c for c in p.iterdir() if c.is_file() and _suffix(c) in SUPPORTED_SUFFIXES)
            if not inside:
                raise ValueError(f"directory {p} holds no {'/'.join(SUPPORTED_SUFFIXES)} files")
            out.extend(inside)
        else:
            out.append(p)
    return out


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True) if name.endswith(s)), path.suffix)


def _quarantine_rows(rows: list[tuple[str, str, str]], source: str) -> pl.DataFrame:
    """RAW_QUARANTINE_SCHEMA rows (day null: the caller knows the partition) from (reason, detail, payload)."""
    return quarantine_frame(
        {
            "source": [source] * len(rows),
            "day": [None] * len(rows),
            "reason": [r[0] for r in rows],
            "detail": [r[1] for r in rows],
            "payload": [r[2] for r in rows],
        },
        RAW_QUARANTINE_SCHEMA,
    )


@contextlib.contextmanager
def _open_input(path: Path, follow_symlinks: bool) -> Iterator[BinaryIO]:
    """``path`` opened through ``core.safe_open``: a FIFO or device never blocks the run, and a symlink is refused
    where links are not followed. A refusal is a ValueError naming the file (permanent: not a row problem, and
    retrying reads the same thing)."""
    try:
        fh = open_regular_file(path, follow_symlinks=follow_symlinks)
    except LandingFileRefused as exc:
        if exc.reason == "unreadable":
            raise ValueError(
                f"cannot read {path}: {exc.detail}; if the file was still being copied, re-run once it is complete"
            ) from exc
        raise ValueError(
            f"cannot read {path}: it {exc.detail}. Only regular files are read (a file swapped after the listing is "
            "refused, never waited on or followed); put a regular file there (a copy, not a link) and re-run"
        ) from exc
    with fh:
        yield fh


def _file_bytes(path: Path, suffix: str, follow_symlinks: bool = True) -> bytes:
    with _open_input(path, follow_symlinks) as fh:
        try:
            data = fh.read()
            return gzip.decompress(data) if suffix.endswith(".gz") else data
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(
                f"cannot read {path}: {exc}; if the file was still being copied, re-run once it is complete"
            ) from exc


def _check_utf8(data: bytes, chunk: int = 1 << 24) -> None:
    """Raise UnicodeDecodeError unless ``data`` is valid UTF-8, in bounded chunks (no full-size copy)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    for start in range(0, len(view), chunk):
        decoder.decode(view[start : start + chunk])
    decoder.decode(b"", final=True)


def _read_csv(
    path: Path, suffix: str, codec: str, source: str, follow_symlinks: bool = True
) -> tuple[pl.DataFrame, list[tuple[str, str, str]]]:
    sep = "\t" if suffix == ".tsv" else ","
    data = _file_bytes(path, suffix, follow_symlinks)
    if not data.strip():
        raise ValueError(f"{path} is empty (no header row); if it was still being copied, re-run once it is complete")
    if data.startswith(codecs.BOM_UTF8) and codec not in ("utf-8", "utf-8-sig"):
        # The file says what it is: "CSV UTF-8" exports (Excel) start with this mark. Read under a single-byte
        # setting, the mark would become part of the first column's name and every accent would turn to
        # mojibake ("é" -> "Ã©") without a single error to show for it.
        codec = "utf-8"
    try:  # fast path: the whole file is clean
        if codec == "utf-8":
            _check_utf8(data)  # polars' own check misses the header row, which it decodes lossily
            utf8 = data
        else:
            utf8 = data.decode(codec).encode("utf-8")
        return _polars_csv(utf8, sep), []
    except (UnicodeError, pl.exceptions.PolarsError):
        # Undecodable bytes, a ragged row or quoting polars refuses: find the records at fault.
        return _read_csv_record_by_record(data, path, sep, codec, source)


def read_tables_with_rejects(
    paths: Sequence[Path], encoding: str = "utf-8", source: str = "input", *, landing_root: str | Path | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read and concatenate CSV/TSV (every column as text) or Parquet files, by suffix.

    Returns ``(frame, rejects)``: the records that could be read, and one RAW_QUARANTINE_SCHEMA row
    (``source``, day null) per record that could not, with the file and line in the detail
    (``encoding_error``, ``ragged_row``, ``malformed_row``; see ``_read_csv_record_by_record``).
    One bad line never fails the file. Records read = ``frame.height + rejects.height``; in a CSV a
    blank line is a record of empty fields (polars' reading), the header is not a record.

    CSV is decoded strictly with ``encoding`` (any Python codec name; Parquet text is UTF-8 by the
    format's definition). CSV columns stay strings so that ingestion, not the CSV sniffer, decides
    what a malformed value means. Directories are expanded to their supported files (sorted). Files
    with different column sets are combined diagonally (missing columns = null).

    Every file is opened once, on a descriptor checked to be a regular file (``core.safe_open``), and read
    from that descriptor: a file replaced by a FIFO after it was listed fails at once instead of blocking the
    run. Files under ``landing_root`` (written by other people's tools) are opened without following a
    symlink; elsewhere a path is the operator's configuration and may point through links.

    Raises ValueError (naming the file, and the line where there is one) for what no row can survive:
    an unknown encoding, an empty file, an undecodable header, a Parquet file that does not open, a
    path that is no longer a regular file (or, under ``landing_root``, became a symlink).
    """
    codec = text_encoding(encoding, ENCODING_SETTINGS.get(source, "encoding"))
    files = _expand(paths)
    if not files:
        raise ValueError("read_tables got no files; give at least one .csv or .parquet file (or a directory)")
    frames = []
    rejects: list[tuple[str, str, str]] = []
    for path in files:
        suffix = _suffix(path)
        if suffix not in SUPPORTED_SUFFIXES:
            raise ValueError(
                f"cannot read {path}: unknown file type {suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
            )
        if not path.exists():
            raise FileNotFoundError(f"input file {path} does not exist")
        follow = landing_root is None or not is_inside(Path(landing_root), path)
        if suffix in (".parquet", ".pq"):
            with _open_input(path, follow) as fh:
                try:
                    frame = pl.read_parquet(fh)  # from the checked descriptor, not the path again
                except (pl.exceptions.PolarsError, OSError) as exc:
                    raise ValueError(
                        f"cannot read {path} as Parquet: {exc}; if it was still being copied, re-run once it is "
                        "complete"
                    ) from exc
        else:
            frame, bad = _read_csv(path, suffix, codec, source, follow)
            rejects.extend(bad)
        frames.append(trimmed_header(frame, path))
    quarantine = _quarantine_rows(rejects, source)
    if len(frames) == 1:
        return frames[0], quarantine
    try:
        return pl.concat(frames, how="diagonal_relaxed"), quarantine
    except pl.exceptions.PolarsError as exc:
        raise ValueError(
            f"cannot combine {[str(f) for f in files]}: {exc}; make the files use the same column types"
        ) from exc


def trimmed_header(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Column names without surrounding whitespace, so a mapping to ``genres`` finds a header written ``genres ``.

    A stray space in a header is invisible in most viewers; matching it literally left every value of that column
    null without a word. Two names that become one after trimming are an error naming both, not a silent pick.

    >>> trimmed_header(pl.DataFrame({" title_id": ["1"], "genres ": ["Drama"]}), Path("movies.csv")).columns
    ['title_id', 'genres']
    """
    names = [c.strip() for c in frame.columns]
    if names == frame.columns:
        return frame
    seen: dict[str, str] = {}
    for original, name in zip(frame.columns, names, strict=True):
        if name in seen:
            raise ValueError(
                f"{path}: columns {seen[name]!r} and {original!r} are the same name once surrounding spaces are "
                "removed; rename one of them in the file"
            )
        seen[name] = original
    return frame.rename(dict(zip(frame.columns, names, strict=True)))


def read_tables(paths: Sequence[Path], encoding: str = "utf-8") -> pl.DataFrame:
    """``read_tables_with_rejects`` for callers that have nowhere to put rejects: any record that cannot
    be read raises a ValueError naming it (a row is never dropped or altered silently)."""
    frame, rejects = read_tables_with_rejects(paths, encoding)
    if rejects.height:
        shown = "; ".join(f"{r}: {d}" for r, d in rejects.select("reason", "detail").head(3).iter_rows())
        raise ValueError(
            f"{rejects.height} record(s) cannot be read ({shown}); use read_tables_with_rejects to quarantine them"
        )
    return frame
