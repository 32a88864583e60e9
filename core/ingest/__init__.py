"""One ingestion path for synthetic drops and bring-your-own data (CSV or Parquet).

Why one path: if the synthetic source had its own reader, the pipeline would be
tested on data a real user never sends. Instead both go through the same steps:
``read_tables`` -> a *mapping* from contract columns to the user's column names ->
``ingest_catalog`` / ``ingest_interactions``, which return rows conforming to
``core.schemas`` plus a quarantine frame (RAW_QUARANTINE_SCHEMA) with a reason code,
a human detail and the raw row as JSON. Bad input never fails the batch.

Everything is vectorized polars (no per-row Python on the happy path); JSON payloads
and details are only built for the quarantined rows.

Catalog reason codes (CATALOG_REASONS):
    null_title_id, null_title      id/title missing or blank -> row rejected
    bad_kind                       kind not a known movie/series spelling -> row rejected
                                   (a null kind defaults to "movie")
    duplicate_title_id             a later row repeats an accepted id -> rejected, first kept
    bad_year                       year unparsable or outside 1870..2100 -> the row is KEPT with
                                   year=null (or the year parsed from "Title (1995)") and the
                                   issue is recorded in the quarantine frame. This is the only
                                   "repaired" reason (REPAIRED_REASONS): a title without a year
                                   is still worth recommending.

Catalog normalization: ids/text are stripped (blank = null; integral float ids print
without ".0" so they match interaction ids); a trailing "(YYYY)" is cut from titles and
fills ``year`` when the year column is absent, null or bad; "Matrix, The" -> "The Matrix";
genres are split on the mapping's delimiter, deduplicated, "(no genres listed)" dropped.

Interaction reason codes (INTERACTION_REASONS, checked in this order, first wins):
    null_member_id, null_title_id, bad_timestamp, wrong_day, unknown_title, bad_event, bad_value

Reason codes of records that cannot be read as values at all (READ_REASONS), either source;
one such record never fails the file:
    encoding_error                 CSV: bytes that do not decode with the source's encoding (detail:
                                   file:line and the bytes); Parquet: a binary value that is not UTF-8
    ragged_row                     CSV: more fields than the header (file:line)
    malformed_row                  CSV: quoting the csv module cannot parse (file:line)
    bad_type                       Parquet: a list/struct/duration where a value is expected
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import polars as pl

from core.safe_open import LandingFileRefused, is_inside, open_regular_file
from core.schemas import (
    CATALOG_SCHEMA,
    INTERACTION_EVENTS,
    INTERACTIONS_SCHEMA,
    RAW_QUARANTINE_SCHEMA,
    conform,
    quarantine_frame,
)

# Reason codes -> one-line meaning (rendered into docs/reason-codes.md by core.reason_docs).
CATALOG_REASONS: dict[str, str] = {
    "null_title_id": "the title id is missing or blank; the row is rejected",
    "null_title": "the title is missing or blank; the row is rejected",
    "bad_kind": "kind is not a known spelling of movie or series (a missing kind means movie); the row is rejected",
    "duplicate_title_id": "a later row repeats an id already accepted; the first row wins, this one is rejected",
    "bad_year": "the year cannot be parsed or is outside 1870..2100; a repair, not a reject: the row is kept "
    "with the year from 'Title (1995)' or null, and the problem is recorded",
}
REPAIRED_REASONS = frozenset({"bad_year"})  # recorded in quarantine, but the row is kept
INTERACTION_REASONS: dict[str, str] = {  # checked in this order, the first that applies wins
    "null_member_id": "the member id is missing or blank",
    "null_title_id": "the title id is missing or blank",
    "bad_timestamp": "the timestamp is missing, or is not epoch seconds or an ISO 8601 time between 1900 and 2100",
    "wrong_day": "a row in a per-day file whose timestamp falls on another day",
    "unknown_title": "the title id is not in raw.catalog",
    "bad_event": "the event is not one of play, complete, rate, search",
    "bad_value": "the value does not fit the event: a rating outside 0.5..5, or a completion fraction outside 0..1",
}
READ_REASONS: dict[str, str] = {  # records that cannot be read as values at all, either source
    "encoding_error": "CSV: bytes that do not decode with the source's encoding (the detail gives file:line "
    "and the bytes); Parquet: a binary value that is not UTF-8",
    "ragged_row": "CSV: a line with more fields than the header (file:line)",
    "malformed_row": "CSV: quoting that cannot be parsed (file:line); reading resumes on the next line",
    "bad_type": "Parquet: a list, struct or duration where one value is expected",
}
YEAR_RANGE = (1870, 2100)
RATING_RANGE = (0.5, 5.0)  # MovieLens uses half stars; the synthetic source uses 1..5
TS_RANGE = (datetime(1900, 1, 1, tzinfo=UTC), datetime(2101, 1, 1, tzinfo=UTC))
KIND_SPELLINGS = {
    "movie": "movie",
    "film": "movie",
    "feature": "movie",
    "series": "series",
    "show": "series",
    "tv": "series",
    "tv series": "series",
    "tv show": "series",
    "tvseries": "series",
    "miniseries": "series",
}
NO_GENRE_MARKERS = ("(no genres listed)",)  # MovieLens' spelling of "no genres"
SUPPORTED_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".parquet", ".pq")

_P = "__ingest_"  # prefix of working columns, unlikely to clash with user columns


# ----------------------------------------------------------------------- mappings


@dataclass(frozen=True)
class CatalogMapping:
    """Contract column -> the user's column name (None = the user has no such column).

    Defaults match the synthetic landing format. An optional column left at its default
    name but absent from the data degrades to nulls/defaults; a column the user *named*
    explicitly but that is absent is a configuration error.
    """

    title_id: str = "title_id"
    title: str = "title"
    kind: str | None = "kind"
    genres: str | None = "genres"
    genres_delimiter: str = "|"
    year: str | None = "year"
    synopsis: str | None = "synopsis"
    language: str | None = "language"
    maturity: str | None = "maturity"

    def __post_init__(self) -> None:
        _validate_mapping(self, required=("title_id", "title"), settings=("genres_delimiter",))


@dataclass(frozen=True)
class InteractionMapping:
    """Contract column -> the user's column name for member events.

    ``rating``: a column holding explicit ratings (e.g. MovieLens ``rating``); rows with a
    rating and no event default to event "rate". ``value`` and ``rating`` are coalesced.
    """

    member_id: str = "member_id"
    title_id: str = "title_id"
    timestamp: str = "ts"
    event: str | None = "event"
    value: str | None = "value"
    rating: str | None = None

    def __post_init__(self) -> None:
        _validate_mapping(self, required=("member_id", "title_id", "timestamp"), settings=())


def _validate_mapping(mapping: Any, required: tuple[str, ...], settings: tuple[str, ...]) -> None:
    name = type(mapping).__name__
    for f in dataclasses.fields(mapping):
        value = getattr(mapping, f.name)
        if value is None and f.name not in required and f.name not in settings:
            continue
        if not isinstance(value, str) or not value:
            need = "a non-empty string" if f.name in required + settings else "a column name or null"
            raise ValueError(f"{name}.{f.name} must be {need}, got {value!r}")


M = TypeVar("M", CatalogMapping, InteractionMapping)


def mapping_from_json(cls: type[M], spec: str | Mapping[str, Any] | None) -> M:
    """Build a mapping from JSON text or a dict (env var, Dagster config); None/"" = defaults.

    Unknown keys raise a ValueError listing the allowed keys, so a typo such as
    ``"titleid"`` fails loudly instead of silently using the default column.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return cls()
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{cls.__name__} mapping is not valid JSON ({exc}); expected an object such as "
                f'{{"title_id": "movieId"}}, got {spec[:200]!r}'
            ) from exc
    if not isinstance(spec, Mapping):
        raise ValueError(f"{cls.__name__} mapping must be a JSON object, got {type(spec).__name__}: {spec!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; allowed keys are {allowed}")
    return cls(**dict(spec))


def catalog_mapping_from_json(spec: str | Mapping[str, Any] | None) -> CatalogMapping:
    return mapping_from_json(CatalogMapping, spec)


def interaction_mapping_from_json(spec: str | Mapping[str, Any] | None) -> InteractionMapping:
    return mapping_from_json(InteractionMapping, spec)


def _column(df: pl.DataFrame, mapping: Any, field: str, required: bool) -> str | None:
    """The user's column for ``field``, None when absent and allowed to be absent."""
    name = getattr(mapping, field)
    if name is None:
        return None
    if name in df.columns:
        return name
    default = next(f.default for f in dataclasses.fields(mapping) if f.name == field)
    if required or name != default:
        raise ValueError(
            f"{type(mapping).__name__}.{field} names column {name!r}, but the input has no such column "
            f"(columns: {df.columns}); set {field} to one of those columns"
            + ("" if required else " or to null if the data has none")
        )
    return None


def absent_optional_columns(df: pl.DataFrame, mapping: CatalogMapping | InteractionMapping) -> list[str]:
    """Contract fields that will be filled with nulls/defaults because the data lacks them."""
    optional = [
        f.name
        for f in dataclasses.fields(mapping)
        if f.name not in ("title_id", "title", "member_id", "timestamp", "genres_delimiter")
    ]
    return [f for f in optional if getattr(mapping, f) is None or getattr(mapping, f) not in df.columns]


# ------------------------------------------------------------------ text encodings

_SURROGATE = re.compile("[\ud800-\udfff]")
ENCODING_SETTINGS = {"catalog": "CATALOG_ENCODING", "interactions": "INTERACTION_ENCODING"}


def text_encoding(name: str, setting: str = "encoding") -> str:
    """Validate a codec name (any Python text codec) and return its canonical spelling.

    Raises a ValueError naming ``setting`` for an unknown name or a bytes-to-bytes codec such as
    base64, so a typo fails before any file is read instead of quarantining every row.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{setting} must be a codec name such as 'utf-8', 'latin-1' or 'cp1252', got {name!r}")
    try:
        info = codecs.lookup(name.strip())
        with contextlib.suppress(UnicodeError):
            "a".encode(info.name)  # raises LookupError for a bytes-to-bytes codec (b"".decode does not)
    except LookupError as exc:
        if "not a text encoding" in str(exc):
            raise ValueError(f"{setting}={name!r}: {name!r} is not a text encoding; use e.g. 'utf-8'") from exc
        raise ValueError(
            f"{setting}={name!r}: unknown encoding {name!r}; use a Python codec name such as 'utf-8', "
            "'latin-1' (ISO-8859-1) or 'cp1252' (Windows Western European)"
        ) from exc
    return info.name


def first_surrogate(text: str) -> int | None:
    """0-based index of the first lone surrogate (U+D800..U+DFFF) in ``text``, None when there is none.

    Python strings can hold them (json.loads of a "\\ud800" escape, errors="surrogateescape"), but they
    are not text: UTF-8 cannot encode them, so hashing, polars and DuckDB all fail on them.
    """
    m = _SURROGATE.search(text)
    return None if m is None else m.start()


def has_surrogates(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def escape_surrogates(text: str) -> str:
    """Printable stand-in for a string with lone surrogates: undecodable bytes (surrogateescape's
    U+DC80..U+DCFF) become ``\\xNN``, other surrogates ``\\uNNNN``; everything else is kept."""

    def show(m: re.Match[str]) -> str:
        cp = ord(m.group())
        return f"\\x{cp - 0xDC00:02x}" if 0xDC80 <= cp <= 0xDCFF else f"\\u{cp:04x}"

    return _SURROGATE.sub(show, text)


def decode_error_detail(exc: UnicodeDecodeError, encoding: str) -> str:
    """'bytes 0xe9 at byte 3 are not valid utf-8' for a UnicodeDecodeError."""
    bad = exc.object[exc.start : min(exc.end, exc.start + 8)]
    shown = " ".join(f"0x{b:02x}" for b in bad)
    plural = len(bad) > 1
    return f"byte{'s' if plural else ''} {shown} at byte {exc.start} {'are' if plural else 'is'} not valid {encoding}"


# -------------------------------------------------------------------------- reading


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


def _polars_csv(data: bytes, sep: str) -> pl.DataFrame:
    # Strict UTF-8: polars' "utf8-lossy" turned every undecodable byte into U+FFFD, which merged ids
    # (Latin-1 "José" and "Josè" both became "Jos\ufffd").
    return pl.read_csv(data, infer_schema=False, separator=sep, encoding="utf8")


@contextlib.contextmanager
def _no_csv_field_limit() -> Iterator[None]:
    """The csv module refuses fields over 128 KiB by default; the fast path (polars) has no such limit."""
    old = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _row_payload(header: list[str], record: list[str]) -> str:
    """The raw record as a JSON object (header -> value; fields past the header under "__extra_fields")."""
    row: dict[str, Any] = {}
    for i, value in enumerate(record[: len(header)]):
        key = escape_surrogates(header[i])
        row[key if key not in row else f"{key}#{i + 1}"] = escape_surrogates(value)
    if len(record) > len(header):
        row["__extra_fields"] = [escape_surrogates(v) for v in record[len(header) :]]
    return json.dumps(row, ensure_ascii=False)


_BARE_CR = re.compile("\r(?!\n)")
_CR_MARK = "\udbff"


def _read_csv_record_by_record(
    data: bytes, path: Path, sep: str, codec: str, source: str
) -> tuple[pl.DataFrame, list[tuple[str, str, str]]]:
    """The slow path, taken only when the file as a whole is not clean: split it into records with the csv
    module, quarantine the records that cannot be read, and hand the rest to polars re-written as UTF-8.

    Why re-write instead of building the frame here: the kept records then go through exactly the parser
    the fast path uses (nulls, quoting, duplicate header names), so a file gives the same frame whichever
    path read it. Reasons: ``encoding_error`` (bytes that do not decode with ``codec``), ``ragged_row``
    (more fields than the header; extra fields that are all empty, i.e. a trailing delimiter, are
    dropped instead), ``malformed_row`` (quoting the csv module cannot parse; the record's first line is
    quarantined and reading resumes on the next line).
    """
    setting = ENCODING_SETTINGS.get(source, "the source's encoding setting")
    text = data.decode(codec, errors="surrogateescape")  # undecodable bytes -> U+DC80..U+DCFF, marked per record
    if text.startswith("\ufeff"):
        text = text[1:]
    # polars ends lines at "\n" (and "\r\n") only; a bare "\r" is data. The csv module would end the record
    # there, so it is swapped for a mark no decoder produces (surrogateescape yields U+DC80..U+DCFF only)
    # and swapped back in each field.
    text = _BARE_CR.sub(_CR_MARK, text)

    def fields(record: list[str]) -> list[str]:
        return [v.replace(_CR_MARK, "\r") for v in record]

    physical = list(io.StringIO(text, newline=""))
    del text

    def lines_from(first: int) -> Iterator[str]:
        # A fresh reader starts here after a bad record; indexing (not islice) makes the restart O(1), so a
        # file where every line is malformed still costs one pass.
        for i in range(first, len(physical)):
            yield physical[i]

    out = io.StringIO()
    writer = csv.writer(out, delimiter=sep, lineterminator="\n")
    rejects: list[tuple[str, str, str]] = []
    header: list[str] | None = None

    def keep_or_reject(record: list[str], line: int) -> None:
        nonlocal header
        if header is None:
            at = next((i for i, name in enumerate(record) if has_surrogates(name)), None)
            if at is not None:
                raise ValueError(
                    f"{path}:{line}: the header row is not valid {codec} (column {at + 1}: "
                    f"{escape_surrogates(record[at])!r}); no row can be keyed. Set {setting} to the file's "
                    "encoding (e.g. latin-1 or cp1252) or re-export the file as UTF-8"
                )
            if not record:
                raise ValueError(f"{path}:{line}: the first line is blank; a CSV file must start with a header row")
            header = record
            writer.writerow(record)
            return
        bad = next((i for i, v in enumerate(record) if has_surrogates(v)), None)
        if bad is not None:
            value = record[bad]
            column = header[bad] if bad < len(header) else f"field {bad + 1}"
            shown = " ".join(f"0x{ord(c) - 0xDC00:02x}" for c in value if 0xDC80 <= ord(c) <= 0xDCFF)[:60]
            rejects.append(
                (
                    "encoding_error",
                    f"{path}:{line}: column {column!r} holds bytes that are not valid {codec} ({shown}); the row "
                    f"was not read. If the whole file uses another encoding, set {setting} (e.g. latin-1 or "
                    "cp1252); otherwise fix the row",
                    _row_payload(header, record),
                )
            )
            return
        if len(record) > len(header):
            if all(not v.strip() for v in record[len(header) :]):
                record = record[: len(header)]  # a trailing delimiter: nothing is lost by dropping it
            else:
                rejects.append(
                    (
                        "ragged_row",
                        f"{path}:{line}: the row has {len(record)} fields but the header has {len(header)}; "
                        "the values cannot be matched to columns (an unquoted delimiter inside a value?). "
                        "Quote the value or remove the extra fields",
                        _row_payload(header, record),
                    )
                )
                return
        writer.writerow(record)

    start = 0  # 0-based index of the physical line the next reader starts on
    with _no_csv_field_limit():
        while start < len(physical):
            reader = csv.reader(lines_from(start), delimiter=sep, strict=True)
            consumed = 0
            try:
                for record in reader:
                    keep_or_reject(fields(record), start + consumed + 1)
                    consumed = reader.line_num
                break
            except csv.Error as exc:
                bad_line = start + consumed  # 0-based: the first line of the record that failed
                if header is None:
                    raise ValueError(f"{path}:{bad_line + 1}: cannot parse the header row ({exc})") from exc
                raw = physical[bad_line].rstrip("\r\n").replace(_CR_MARK, "\r")
                rejects.append(
                    (
                        "malformed_row",
                        f"{path}:{bad_line + 1}: cannot parse the row ({exc}); a quote inside a value must be "
                        "doubled and the value quoted. The line was quarantined; reading resumed on the next one",
                        json.dumps({"line": escape_surrogates(raw)}, ensure_ascii=False),
                    )
                )
                start = bad_line + 1
    if header is None:
        raise ValueError(f"{path} is empty (no header row); if it was still being copied, re-run once it is complete")
    try:
        return _polars_csv(out.getvalue().encode("utf-8"), sep), rejects
    except pl.exceptions.PolarsError as exc:  # not expected: the records were re-written by the csv module
        raise ValueError(f"cannot read {path} even record by record: {exc}") from exc


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
            _check_utf8(data)  # polars' own check misses the header row (polars 1.x decodes it lossily)
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


# ---------------------------------------------------------------- shared helpers


def _text(name: str, dtype: pl.DataType) -> pl.Expr:
    """A column as stripped text, blank -> null; integral floats print without ".0"."""
    col = pl.col(name)
    if dtype.is_nested() or dtype == pl.Object:
        raise ValueError(f"column {name!r} has type {dtype}; expected text or numbers")
    if dtype.is_float():
        # Whole numbers print as integers (so 7.0 matches the interaction id "7"); anything an Int64 cannot
        # hold (1e300, inf) keeps its float spelling instead of turning into a missing id.
        whole = col.is_finite() & (col == col.floor()) & (col.abs() < 2.0**63)
        col = pl.when(whole).then(col.cast(pl.Int64, strict=False).cast(pl.String)).otherwise(col.cast(pl.String))
    elif dtype != pl.String:
        col = col.cast(pl.String)
    col = col.str.strip_chars()
    return pl.when(col.str.len_chars() > 0).then(col)


_SCALAR_TYPES = (pl.String, pl.Categorical, pl.Enum, pl.Boolean, pl.Date, pl.Datetime, pl.Time, pl.Null)


def _is_scalar(dtype: pl.DataType) -> bool:
    """Types ``_text``/``_number``/``parse_timestamps`` can read a value from."""
    return dtype.is_numeric() or isinstance(dtype, _SCALAR_TYPES)


def _json_safe(dtype: pl.DataType) -> bool:
    """polars' json_encode panics on binary values (1.x: "not yet implemented"), and objects are opaque."""
    if dtype in (pl.Binary, pl.Object):
        return False
    if isinstance(dtype, pl.List | pl.Array):
        return _json_safe(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return all(_json_safe(f.dtype) for f in dtype.fields)
    return True


def _screen_values(df: pl.DataFrame, mapped: Sequence[str], list_column: str | None = None) -> pl.DataFrame:
    """Make every column readable as text and mark rows whose mapped values cannot be read.

    CSV gives only text, but Parquet (or a caller's frame) can hold what ingestion cannot read as one
    value: bytes that are not UTF-8, lists, structs, durations. Adds ``{_P}pre_reason``/``{_P}pre_detail``
    (null for readable rows), which the reason chains check first:

    * a binary column is decoded as UTF-8 (Parquet's text encoding); a value that does not decode is
      kept with ``\\xNN`` escapes for the payload, and in a mapped column its row is ``encoding_error``;
    * a mapped column whose type is not text, a number or a date/time (``list_column``: a list of
      those) makes each row with a value in it ``bad_type``; the column is replaced by the values'
      JSON text, so the payload still shows what was there.

    Unmapped columns are only made JSON-encodable (for the payload). Per-row Python runs only for the
    columns of such types, never on the common path.
    """
    masks: list[tuple[pl.Series, str, str]] = []
    replace: list[pl.Series] = []
    for name, dtype in df.schema.items():
        is_mapped = name in mapped
        if dtype == pl.Binary:
            text: list[str | None] = []
            ok: list[bool] = []
            for v in df.get_column(name).to_list():
                try:
                    text.append(None if v is None else v.decode("utf-8"))
                    ok.append(True)
                except UnicodeDecodeError:
                    text.append(v.decode("utf-8", errors="backslashreplace"))
                    ok.append(False)
            replace.append(pl.Series(name, text, dtype=pl.String))
            if is_mapped and not all(ok):
                detail = f"column {name!r} holds bytes that are not valid UTF-8 (Parquet text is UTF-8)"
                masks.append((~pl.Series(ok), "encoding_error", detail + "; fix the producer"))
            continue
        readable = _is_scalar(dtype) or (
            name == list_column
            and isinstance(dtype, pl.List | pl.Array)
            and _is_scalar(dtype.inner)
            and dtype.inner != pl.Null
        )
        if is_mapped and not readable:
            values = df.get_column(name)
            masks.append(
                (
                    values.is_not_null(),
                    "bad_type",
                    f"column {name!r} holds {dtype} values; expected text, a number or a date"
                    + (" (or a list of those)" if name == list_column else ""),
                )
            )
            replace.append(
                pl.Series(
                    name, [None if v is None else json.dumps(v, default=str) for v in values.to_list()], pl.String
                )
            )
        elif not _json_safe(dtype):
            values = df.get_column(name)
            replace.append(
                pl.Series(
                    name,
                    [None if v is None else json.dumps(v, default=_bytes_text) for v in values.to_list()],
                    pl.String,
                )
            )
        elif name == list_column and isinstance(dtype, pl.Array):
            replace.append(df.get_column(name).arr.to_list())
    if replace:
        df = df.with_columns(replace)
    null_text = pl.lit(None, dtype=pl.String)
    if not masks:
        return df.with_columns(null_text.alias(f"{_P}pre_reason"), null_text.alias(f"{_P}pre_detail"))
    checks = pl.DataFrame([mask.alias(f"m{i}") for i, (mask, _, _) in enumerate(masks)])
    reason: Any = pl
    detail: Any = pl
    for i, (_, code, text_) in enumerate(masks):  # the first column's problem wins
        reason = reason.when(pl.col(f"m{i}")).then(pl.lit(code))
        detail = detail.when(pl.col(f"m{i}")).then(pl.lit(text_))
    flags = checks.select(
        reason.otherwise(null_text).alias(f"{_P}pre_reason"), detail.otherwise(null_text).alias(f"{_P}pre_detail")
    )
    return df.hstack(flags)


def _bytes_text(value: Any) -> str:
    return value.decode("utf-8", errors="backslashreplace") if isinstance(value, bytes) else str(value)


def _show(expr: pl.Expr) -> pl.Expr:
    """A value for a human detail message: 'value' or null."""
    return pl.when(expr.is_null()).then(pl.lit("null")).otherwise(pl.concat_str([pl.lit("'"), expr, pl.lit("'")]))


def _payload(raw_columns: list[str]) -> pl.Expr:
    return pl.struct([pl.col(c) for c in raw_columns]).struct.json_encode()


def _quarantine(frame: pl.DataFrame, source: str, day: pl.Expr, raw_columns: list[str]) -> pl.DataFrame:
    """Shape flagged rows (with reason/detail columns) into RAW_QUARANTINE_SCHEMA."""
    if frame.height == 0:
        return pl.DataFrame(schema=RAW_QUARANTINE_SCHEMA)
    out = frame.select(
        pl.lit(source).alias("source"),
        day.alias("day"),
        pl.col(f"{_P}reason").alias("reason"),
        pl.col(f"{_P}detail").alias("detail"),
        _payload(raw_columns).alias("payload"),
    )
    return conform(out, RAW_QUARANTINE_SCHEMA)


def _number(name: str, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr]:
    """(parsed float or null, raw text) for a numeric-ish column."""
    raw = _text(name, dtype)
    if dtype.is_numeric():
        return pl.col(name).cast(pl.Float64), raw
    return raw.cast(pl.Float64, strict=False), raw


# ----------------------------------------------------------------------- catalog

_TITLE_YEAR = r"^(.*\S)\s*\((\d{4})\)$"
_TRAILING_ARTICLE = r"^(.*), (The|A|An)$"


def _year_expr(name: str, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr]:
    """(valid year or null, raw text) of the year column."""
    lo, hi = YEAR_RANGE
    if dtype.is_temporal() and dtype != pl.Time and not isinstance(dtype, pl.Duration):
        num = pl.col(name).dt.year().cast(pl.Float64)
        raw = pl.col(name).cast(pl.String)
    else:
        num, raw = _number(name, dtype)
    ok = num.is_not_null() & num.is_finite() & (num == num.floor()) & (num >= lo) & (num <= hi)
    return pl.when(ok).then(num.cast(pl.Int32)), raw


def ingest_catalog(
    df: pl.DataFrame, mapping: CatalogMapping | None = None, *, read_rejects: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validate and normalize a catalog snapshot.

    Returns ``(rows, quarantine)``: rows conform to CATALOG_SCHEMA (input order, one per
    title_id), quarantine to RAW_QUARANTINE_SCHEMA with source="catalog", day=null.
    ``read_rejects`` (from ``read_tables_with_rejects``) lead the quarantine.
    Invariant: ``len(rows) + rejected == len(df) + len(read_rejects)`` where rejected counts
    quarantine rows whose reason is not in REPAIRED_REASONS.
    """
    mapping = mapping or CatalogMapping()
    raw_columns = list(df.columns)
    c_id = _column(df, mapping, "title_id", required=True)
    c_title = _column(df, mapping, "title", required=True)
    assert c_id is not None and c_title is not None
    c_kind, c_genres, c_year, c_syn, c_lang, c_mat = (
        _column(df, mapping, f, required=False) for f in ("kind", "genres", "year", "synopsis", "language", "maturity")
    )
    mapped = [c for c in (c_id, c_title, c_kind, c_genres, c_year, c_syn, c_lang, c_mat) if c is not None]
    df = _screen_values(df, mapped, list_column=c_genres)
    schema = df.schema
    null_text = pl.lit(None, dtype=pl.String)
    lo, hi = YEAR_RANGE

    title_raw = _text(c_title, schema[c_title])
    title_year = title_raw.str.extract(_TITLE_YEAR, 2).cast(pl.Int32, strict=False)
    has_title_year = title_year.is_between(lo, hi)
    title = pl.when(has_title_year).then(title_raw.str.extract(_TITLE_YEAR, 1)).otherwise(title_raw)
    title = title.str.replace(_TRAILING_ARTICLE, "${2} ${1}")
    if c_year is not None:
        year_col, year_raw = _year_expr(c_year, schema[c_year])
    else:
        year_col, year_raw = pl.lit(None, dtype=pl.Int32), null_text
    if c_kind is not None:
        kind_raw = _text(c_kind, schema[c_kind])
        kind = kind_raw.str.to_lowercase().replace_strict(KIND_SPELLINGS, default=None, return_dtype=pl.String)
    else:
        kind_raw, kind = null_text, null_text
    if c_genres is None:
        genres = pl.lit([], dtype=pl.List(pl.String))
    else:
        gdt = schema[c_genres]
        parts = (
            pl.col(c_genres).cast(pl.List(pl.String))
            if isinstance(gdt, pl.List)
            else _text(c_genres, gdt).str.split(mapping.genres_delimiter)
        )
        genres = (
            parts.list.eval(
                pl.element()
                .str.strip_chars()
                .filter(
                    (pl.element().str.strip_chars().str.len_chars() > 0)
                    & ~pl.element().str.strip_chars().is_in(list(NO_GENRE_MARKERS))
                )
            )
            .list.unique(maintain_order=True)
            .fill_null(pl.lit([], dtype=pl.List(pl.String)))
        )

    def opt_text(name: str | None) -> pl.Expr:
        return null_text if name is None else _text(name, schema[name])

    norm = df.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias(f"{_P}row"),
        _text(c_id, schema[c_id]).alias(f"{_P}id"),
        title.alias(f"{_P}title"),
        kind_raw.alias(f"{_P}kind_raw"),
        pl.when(kind_raw.is_null()).then(pl.lit("movie")).otherwise(kind).alias(f"{_P}kind"),
        genres.alias(f"{_P}genres"),
        year_raw.alias(f"{_P}year_raw"),
        year_col.alias(f"{_P}year_col"),
        pl.when(has_title_year).then(title_year).alias(f"{_P}title_year"),
        opt_text(c_syn).alias(f"{_P}synopsis"),
        opt_text(c_lang).alias(f"{_P}language"),
        opt_text(c_mat).alias(f"{_P}maturity"),
    )
    col = pl.col
    reason = (
        pl.when(col(f"{_P}pre_reason").is_not_null())
        .then(col(f"{_P}pre_reason"))
        .when(col(f"{_P}id").is_null())
        .then(pl.lit("null_title_id"))
        .when(col(f"{_P}title").is_null())
        .then(pl.lit("null_title"))
        .when(col(f"{_P}kind").is_null())
        .then(pl.lit("bad_kind"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    norm = norm.with_columns(reason.alias(f"{_P}reason"))
    rejected = norm.filter(col(f"{_P}reason").is_not_null()).with_columns(
        pl.when(col(f"{_P}pre_reason").is_not_null())
        .then(col(f"{_P}pre_detail"))
        .when(col(f"{_P}reason") == "null_title_id")
        .then(pl.lit(f"title_id is missing or blank (column {c_id!r}); the row cannot be keyed"))
        .when(col(f"{_P}reason") == "null_title")
        .then(pl.lit(f"title is missing or blank (column {c_title!r})"))
        .otherwise(
            pl.concat_str(
                [
                    pl.lit("kind "),
                    _show(col(f"{_P}kind_raw")),
                    pl.lit(f" (column {c_kind!r}) is not one of {sorted(KIND_SPELLINGS)}"),
                ]
            )
        )
        .alias(f"{_P}detail")
    )
    valid = norm.filter(col(f"{_P}reason").is_null())
    first = col(f"{_P}id").is_first_distinct()
    first_rows = valid.group_by(f"{_P}id").agg(col(f"{_P}row").min().alias(f"{_P}first"))
    dups = (
        valid.filter(~first)
        .join(first_rows, on=f"{_P}id", how="left", maintain_order="left")
        .with_columns(
            pl.lit("duplicate_title_id").alias(f"{_P}reason"),
            pl.concat_str(
                [
                    pl.lit("title_id "),
                    _show(col(f"{_P}id")),
                    pl.lit(" repeats input row "),
                    col(f"{_P}first").cast(pl.String),
                    pl.lit(" (0-based); kept the first, dropped this one"),
                ]
            ).alias(f"{_P}detail"),
        )
    )
    kept = valid.filter(first).with_columns(
        pl.coalesce(col(f"{_P}year_col"), col(f"{_P}title_year")).alias(f"{_P}year")
    )
    bad_year = kept.filter(col(f"{_P}year_raw").is_not_null() & col(f"{_P}year_col").is_null()).with_columns(
        pl.lit("bad_year").alias(f"{_P}reason"),
        pl.concat_str(
            [
                pl.lit("year "),
                _show(col(f"{_P}year_raw")),
                pl.lit(f" (column {c_year!r}) is not a whole year in {lo}..{hi}; kept the title with year="),
                col(f"{_P}year").cast(pl.String).fill_null("null"),
                pl.when(col(f"{_P}year").is_not_null()).then(pl.lit(" (from the title)")).otherwise(pl.lit("")),
            ]
        ).alias(f"{_P}detail"),
    )
    flagged = pl.concat(
        [f.select(f"{_P}row", f"{_P}reason", f"{_P}detail", *raw_columns) for f in (rejected, dups, bad_year)],
        how="vertical_relaxed",
    ).sort(f"{_P}row")
    quarantine = _quarantine(flagged, "catalog", pl.lit(None, dtype=pl.Date), raw_columns)
    if read_rejects is not None and read_rejects.height:
        read = conform(read_rejects.with_columns(pl.lit("catalog").alias("source")), RAW_QUARANTINE_SCHEMA)
        quarantine = pl.concat([read, quarantine])
    rows = conform(
        kept.select(
            col(f"{_P}id").alias("title_id"),
            col(f"{_P}title").alias("title"),
            col(f"{_P}kind").alias("kind"),
            col(f"{_P}genres").alias("genres"),
            col(f"{_P}year").alias("year"),
            col(f"{_P}synopsis").alias("synopsis"),
            col(f"{_P}language").alias("language"),
            col(f"{_P}maturity").alias("maturity"),
        ),
        CATALOG_SCHEMA,
    )
    return rows, quarantine


# ------------------------------------------------------------------ interactions

_NUMERIC_TS = r"^[+-]?\d+(\.\d*)?$"
_TZ_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z")
_NAIVE_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d")
_UTC_US = pl.Datetime("us", "UTC")


def _epoch_seconds(num: pl.Expr) -> pl.Expr:
    lo, hi = (t.timestamp() for t in TS_RANGE)
    ok = num.is_not_null() & num.is_finite() & (num >= lo) & (num < hi)
    # Null out-of-range values before the cast: polars evaluates a `then` branch on every row, so casting
    # inside it would still fail on inf or huge numbers.
    in_range = pl.when(ok).then(num)
    return (in_range * 1e6).round().cast(pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _parse_text_timestamps(text: pl.Series) -> pl.Series:
    """Try each accepted text format only on the rows no earlier format parsed.

    A cascade instead of ``coalesce`` of all formats: on a clean file the first format
    parses everything and the others run on zero rows.
    """
    iso = text.str.replace(r"^(\d{4}-\d{2}-\d{2})[ T]", "${1}T").str.replace(r"[zZ]$", "+00:00")
    numeric = text.str.contains(_NUMERIC_TS).fill_null(False)
    out = pl.select(
        pl.when(pl.lit(numeric)).then(_epoch_seconds(pl.lit(text).cast(pl.Float64, strict=False)))
    ).to_series()
    todo = out.is_null() & iso.is_not_null()
    for fmt in _TZ_FORMATS + _NAIVE_FORMATS:
        idx = todo.arg_true()
        if idx.len() == 0:
            break
        if fmt in _TZ_FORMATS:
            parsed = iso.gather(idx).str.to_datetime(fmt, time_unit="us", time_zone="UTC", strict=False)
        else:
            parsed = iso.gather(idx).str.to_datetime(fmt, time_unit="us", strict=False)
            parsed = parsed.dt.replace_time_zone("UTC")
        ok = parsed.is_not_null()
        out = out.scatter(idx.filter(ok), parsed.filter(ok))
        todo = todo.scatter(idx.filter(ok), False)
    return out


def parse_timestamps(values: pl.Series) -> pl.Series:
    """Parse a timestamp column to Datetime(us, UTC); null when unparsable or implausible.

    Accepts epoch seconds (int, float, or numeric text), ISO 8601 with a zone (Z, +02:00,
    +0200; converted to UTC), ISO 8601 without a zone (taken as UTC), a date alone
    (midnight UTC), and native Parquet datetimes/dates. Plausible = within TS_RANGE.
    """
    dtype = values.dtype
    frame = values.rename("v").to_frame()
    col = pl.col("v")
    if isinstance(dtype, pl.Datetime):
        tz = col.dt.replace_time_zone("UTC") if dtype.time_zone is None else col.dt.convert_time_zone("UTC")
        ts = frame.select(tz.cast(_UTC_US)).to_series()
    elif dtype == pl.Date:
        ts = frame.select(col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")).to_series()
    elif dtype.is_numeric():
        ts = frame.select(_epoch_seconds(col.cast(pl.Float64))).to_series()
    else:
        ts = _parse_text_timestamps(frame.select(_text("v", dtype)).to_series())
    lo, hi = TS_RANGE
    return (
        ts.to_frame("ts")
        .select(pl.when(pl.col("ts").is_between(lo, hi, closed="left")).then(pl.col("ts")))["ts"]
        .rename(values.name)
    )


def ingest_interactions(
    df: pl.DataFrame,
    mapping: InteractionMapping | None,
    day: date,
    known_title_ids: pl.Series | Sequence[str],
    *,
    per_day_files: bool,
    read_rejects: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """Validate and normalize member events for the partition ``day`` (UTC).

    Returns a 3-tuple ``(rows, quarantine, stats)``:

    * rows: INTERACTIONS_SCHEMA, ``day`` column = ``day``, exact duplicates (same member,
      title, ts, event) collapsed to their first occurrence, sorted by ts/member/title/event;
    * quarantine: RAW_QUARANTINE_SCHEMA, source="interactions";
    * stats: rows_in, rows_out, quarantined, duplicates_collapsed, other_day_rows, with
      ``rows_in == rows_out + quarantined + duplicates_collapsed + other_day_rows``.

    ``per_day_files=True``: ``df`` is the day's own file, so a row stamped on another day is
    a reject (wrong_day). ``per_day_files=False``: ``df`` holds many days; rows on other days
    belong to other partitions and are only counted (other_day_rows). Rows whose timestamp
    cannot be parsed belong to no day: they are quarantined with day=null and every
    partition's run returns the same ones, so the caller must replace (not append) them.

    ``read_rejects``: records ``read_tables_with_rejects`` could not read. They lead the
    quarantine and count in rows_in; their day is ``day`` with per-day files, else null (an
    unreadable row's timestamp is unknown, so like a bad timestamp it belongs to no day).
    """
    mapping = mapping or InteractionMapping()
    raw_columns = list(df.columns)
    c_member = _column(df, mapping, "member_id", required=True)
    c_title = _column(df, mapping, "title_id", required=True)
    c_ts = _column(df, mapping, "timestamp", required=True)
    assert c_member is not None and c_title is not None and c_ts is not None
    c_event, c_value, c_rating = (_column(df, mapping, f, required=False) for f in ("event", "value", "rating"))
    mapped = [c for c in (c_member, c_title, c_ts, c_event, c_value, c_rating) if c is not None]
    df = _screen_values(df, mapped)
    schema = df.schema
    known = (known_title_ids if isinstance(known_title_ids, pl.Series) else pl.Series(list(known_title_ids))).cast(
        pl.String
    )
    null_num = pl.lit(None, dtype=pl.Float64)
    null_text = pl.lit(None, dtype=pl.String)

    value_num, value_raw = _number(c_value, schema[c_value]) if c_value else (null_num, null_text)
    rating_num, rating_raw = _number(c_rating, schema[c_rating]) if c_rating else (null_num, null_text)
    event_raw = _text(c_event, schema[c_event]) if c_event else null_text
    default_event = pl.when(rating_num.is_not_null()).then(pl.lit("rate")).otherwise(pl.lit("play"))
    col = pl.col

    norm = df.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias(f"{_P}row"),
        _text(c_member, schema[c_member]).alias(f"{_P}member"),
        _text(c_title, schema[c_title]).alias(f"{_P}title"),
        parse_timestamps(df[c_ts]).alias(f"{_P}ts"),
        _text(c_ts, schema[c_ts]).alias(f"{_P}ts_raw"),
        event_raw.alias(f"{_P}event_raw"),
        pl.coalesce(event_raw.str.to_lowercase(), default_event).alias(f"{_P}event"),
        pl.coalesce(value_num, rating_num).alias(f"{_P}value"),
        pl.coalesce(value_raw, rating_raw).alias(f"{_P}value_raw"),
        (
            (value_raw.is_not_null() & (value_num.is_null() | ~value_num.is_finite()))
            | (rating_raw.is_not_null() & (rating_num.is_null() | ~rating_num.is_finite()))
        ).alias(f"{_P}value_unparsable"),
    ).with_columns(col(f"{_P}ts").dt.date().alias(f"{_P}day"))
    rows_in = norm.height
    other_day = col(f"{_P}ts").is_not_null() & (col(f"{_P}day") != day)
    other_day_rows = 0
    if not per_day_files:
        other_day_rows = int(norm.select(other_day.sum()).item())
        norm = norm.filter(~other_day)

    ev, val = col(f"{_P}event"), col(f"{_P}value")
    r_lo, r_hi = RATING_RANGE
    value_bad = (
        col(f"{_P}value_unparsable")
        | ((ev == "rate") & (val.is_null() | (val < r_lo) | (val > r_hi)))
        | ((ev == "complete") & val.is_not_null() & ((val < 0) | (val > 1)))
    )
    reason = (
        pl.when(col(f"{_P}pre_reason").is_not_null())
        .then(col(f"{_P}pre_reason"))
        .when(col(f"{_P}member").is_null())
        .then(pl.lit("null_member_id"))
        .when(col(f"{_P}title").is_null())
        .then(pl.lit("null_title_id"))
        .when(col(f"{_P}ts").is_null())
        .then(pl.lit("bad_timestamp"))
        .when(other_day)  # only reachable with per_day_files; the filter above removed them otherwise
        .then(pl.lit("wrong_day"))
        .when(~col(f"{_P}title").is_in(known.implode()))
        .then(pl.lit("unknown_title"))
        .when(~ev.is_in(list(INTERACTION_EVENTS)))
        .then(pl.lit("bad_event"))
        .when(value_bad)
        .then(pl.lit("bad_value"))
        .otherwise(null_text)
    )
    norm = norm.with_columns(reason.alias(f"{_P}reason"))

    bad = norm.filter(col(f"{_P}reason").is_not_null())
    detail = (
        pl.when(col(f"{_P}pre_reason").is_not_null())
        .then(col(f"{_P}pre_detail"))
        .when(col(f"{_P}reason") == "null_member_id")
        .then(pl.lit(f"member_id is missing or blank (column {c_member!r})"))
        .when(col(f"{_P}reason") == "null_title_id")
        .then(pl.lit(f"title_id is missing or blank (column {c_title!r})"))
        .when((col(f"{_P}reason") == "bad_timestamp") & col(f"{_P}ts_raw").is_null())
        .then(pl.lit(f"timestamp is missing or blank (column {c_ts!r})"))
        .when(col(f"{_P}reason") == "bad_timestamp")
        .then(
            pl.concat_str(
                [
                    pl.lit("timestamp "),
                    _show(col(f"{_P}ts_raw")),
                    pl.lit(
                        f" (column {c_ts!r}) is not epoch seconds or an ISO 8601 time between "
                        f"{TS_RANGE[0].year} and {TS_RANGE[1].year - 1}"
                    ),
                ]
            )
        )
        .when(col(f"{_P}reason") == "wrong_day")
        .then(
            pl.concat_str(
                [
                    pl.lit("timestamp "),
                    _show(col(f"{_P}ts_raw")),
                    pl.lit(" falls on "),
                    col(f"{_P}day").cast(pl.String),
                    pl.lit(f" (UTC), not on this file's day {day.isoformat()}"),
                ]
            )
        )
        .when(col(f"{_P}reason") == "unknown_title")
        .then(pl.concat_str([pl.lit("title_id "), _show(col(f"{_P}title")), pl.lit(" is not in the catalog")]))
        .when(col(f"{_P}reason") == "bad_event")
        .then(
            pl.concat_str(
                [
                    pl.lit("event "),
                    _show(col(f"{_P}event_raw")),
                    pl.lit(f" (column {c_event!r}) is not one of {list(INTERACTION_EVENTS)}"),
                ]
            )
        )
        .otherwise(
            pl.concat_str(
                [
                    pl.lit("value "),
                    _show(col(f"{_P}value_raw")),
                    pl.lit(" is not valid for event '"),
                    ev,
                    pl.lit(
                        f"' (rate needs a number in {r_lo:g}..{r_hi:g}, complete a fraction in 0..1, "
                        "every value must be numeric)"
                    ),
                ]
            )
        )
    )
    q_day = pl.lit(day) if per_day_files else pl.when(col(f"{_P}ts").is_not_null()).then(pl.lit(day))
    quarantine = _quarantine(bad.with_columns(detail.alias(f"{_P}detail")), "interactions", q_day, raw_columns)
    if read_rejects is not None and read_rejects.height:
        read = read_rejects.with_columns(
            pl.lit("interactions").alias("source"), pl.lit(day if per_day_files else None, dtype=pl.Date).alias("day")
        )
        quarantine = pl.concat([conform(read, RAW_QUARANTINE_SCHEMA), quarantine])
        rows_in += read_rejects.height

    good = norm.filter(col(f"{_P}reason").is_null())
    key = [f"{_P}member", f"{_P}title", f"{_P}ts", f"{_P}event"]
    deduped = good.unique(subset=key, keep="first", maintain_order=True)
    rows = conform(
        deduped.select(
            col(f"{_P}member").alias("member_id"),
            col(f"{_P}title").alias("title_id"),
            col(f"{_P}ts").alias("ts"),
            ev.alias("event"),
            pl.when(ev.is_in(["rate", "complete"])).then(val).alias("value"),
            pl.lit(day).alias("day"),
        ).sort(["ts", "member_id", "title_id", "event"]),
        INTERACTIONS_SCHEMA,
    )
    stats = {
        "rows_in": rows_in,
        "rows_out": rows.height,
        "quarantined": quarantine.height,
        "duplicates_collapsed": good.height - deduped.height,
        "other_day_rows": other_day_rows,
    }
    return rows, quarantine, stats
