"""The record-by-record CSV reader: the slow path for a file that is not clean as a whole.

Kept apart from ``reading`` because it is the only place that reasons about single CSV records (their
line numbers, quoting and bytes); the fast path hands whole files to polars.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from core.ingest.encodings import ENCODING_SETTINGS, escape_surrogates, has_surrogates


def _polars_csv(data: bytes, sep: str) -> pl.DataFrame:
    # Strict UTF-8: polars' "utf8-lossy" turns every undecodable byte into U+FFFD, which merges ids
    # (Latin-1 "José" and "Josè" would both become "Jos\ufffd").
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
