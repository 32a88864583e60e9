"""Property tests: hostile input never escapes as an exception, and every record read is accounted for.

What counts as a record read:

* JSONL (``parse_external_jsonl``): every line that is not blank. A line is blank when nothing but
  whitespace (and a leading byte order mark) is left after decoding; a line that does not decode is
  never blank. Blank lines are skipped and counted nowhere.
* CSV (``read_tables_with_rejects``): every record after the header row as the csv grammar splits the
  file (a quoted value may span lines). A blank line is a record of empty fields (polars' reading). A
  record the grammar cannot parse has no known end: it counts as its first line, and reading resumes on
  the next line (so the generator damages quoting only on one-line records).
* Parquet: every row.

Invariants checked on each example:

* JSONL -> curate: ``curated + quarantined (parse) + quarantined (curation) == records``.
* CSV/Parquet -> ingest_interactions: ``rows_out + quarantined + duplicates_collapsed + other_day_rows
  == records`` (stats["rows_in"] == records); collapsed duplicates are exact re-deliveries kept once.
* CSV/Parquet -> ingest_catalog: ``rows + rejected == records`` (rejected: reasons not in
  REPAIRED_REASONS; a repaired row is kept and also noted in quarantine).
* every quarantine payload fits the cap and is storable text.

Run ``pytest -s tests/unit/test_ingest_fuzz.py`` to print the examples run and the kept/quarantined/read
totals; ``--hypothesis-show-statistics`` shows the reason codes seen per test.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core import ingest as ig
from core.curation import PARSE_REASONS, REASONS, CurationConfig, curate, parse_external_jsonl
from core.schemas import QUARANTINE_PAYLOAD_MAX_CHARS

DAY = date(2026, 1, 1)
KNOWN = pl.Series(["T1", "T2", "T3"])
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples on every run and every machine: CI is reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
TOTALS: dict[str, Counter[str]] = {}


def _tally(test: str, **counts: int) -> None:
    TOTALS.setdefault(test, Counter()).update(counts)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    for test, c in TOTALS.items():
        print(f"\n{test}: {dict(c)}")


# ------------------------------------------------------------------------- building blocks

# Every Unicode category, lone surrogates (Cs) and control characters (Cc) included.
any_char = st.characters(categories=["L", "M", "N", "P", "S", "Z", "C"])
any_text = st.text(any_char, max_size=24)
plain_text = st.text(st.characters(categories=["L", "N", "P", "Zs"]), min_size=1, max_size=24)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([10**400, -(10**400)]),
)
number_text = st.one_of(
    numbers.map(str),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e999", "9" * 5000, "0x1p3", "4,5", " 4 "]),
)
ts_text = st.one_of(
    st.sampled_from(["2026-01-01T08:00:00Z", "2026-01-01 23:59:59+00:00", "2026-01-02T00:00:00Z", "1767225600"]),
    number_text,
    any_text,
)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _no_newline(b: bytes) -> bytes:
    return b.replace(b"\n", b"?").replace(b"\r", b"?")


# --------------------------------------------------------------------------- (a) JSONL path

message = st.fixed_dictionaries(
    {
        "role": st.one_of(st.sampled_from(["user", "assistant", "system", "bot", " User "]), any_text),
        "content": any_text,
    }
)
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, any_text), lambda kids: st.lists(kids, max_size=3), max_leaves=8
)


@st.composite
def jsonl_line(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(line bytes without a newline, is it blank)."""
    kind = draw(
        st.sampled_from(["chat", "chat", "chat", "wrong_types", "surrogate_escape", "deep", "huge", "garbage", "blank"])
    )
    if kind == "blank":
        return draw(st.sampled_from([b"", b"   ", b"\t", b" \r"])), True
    if kind == "garbage":
        return b"#" + _no_newline(draw(st.binary(max_size=40))), False
    if kind == "deep":
        return _deep(draw(st.integers(1, 3000))).encode(), False
    if kind == "huge":
        return draw(st.sampled_from([b'{"messages": ' + b"9" * 5000 + b"}", b'{"x": 1e999}', b'{"x": NaN}'])), False
    if kind == "wrong_types":
        obj = {"messages": draw(json_value), "member_id": draw(json_value)}
        return json.dumps(obj).encode(), False
    messages = draw(st.lists(message, min_size=1, max_size=6))
    if kind == "chat":  # mostly well-formed, so that curation keeps some and its own rules are exercised too
        texts = draw(st.lists(st.one_of(any_text, plain_text), min_size=1, max_size=3))
        alternating = [{"role": role, "content": t} for t in texts for role in ("user", "assistant")]
        messages = draw(st.sampled_from([messages, alternating, alternating]))
    obj: dict[str, object] = {"messages": messages}
    if draw(st.booleans()):
        obj["member_id"] = draw(any_text)
    # ensure_ascii=True writes lone surrogates as \udXXX escapes, which json.loads accepts back.
    text = json.dumps(obj, ensure_ascii=kind == "surrogate_escape" or draw(st.booleans()))
    return text.encode("utf-8", errors="surrogatepass"), False


@FUZZ
@given(
    lines=st.lists(jsonl_line(), max_size=12),
    encoding=st.sampled_from(["utf-8", "cp1252"]),
    as_text=st.booleans(),
)
@pytest.mark.slow
def test_external_jsonl_never_raises_and_every_line_is_accounted_for(
    lines: list[tuple[bytes, bool]], encoding: str, as_text: bool
) -> None:
    data = b"\n".join(line for line, _ in lines)
    records = sum(not blank for _, blank in lines)
    if as_text:  # a text-mode reader that keeps undecodable bytes as lone surrogates
        source = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape", newline="\n")
    else:  # binary lines, decoded strictly by the parser
        source = io.BytesIO(data)
    cand, q = parse_external_jsonl(source, DAY, source="fuzz.jsonl", encoding=encoding)
    assert cand.height + q.height == records
    cur, cq, stats = curate(cand, DAY, CurationConfig())
    assert stats["rows_in"] == cand.height == cur.height + cq.height
    assert cur.height + q.height + cq.height == records
    assert set(q["reason"]) <= set(PARSE_REASONS) and set(cq["reason"]) <= set(REASONS)
    for frame in (q, cq):
        assert (frame["payload"].str.len_chars() <= QUARANTINE_PAYLOAD_MAX_CHARS).all()
        assert frame["detail"].is_not_null().all()
    assert all(d.startswith("fuzz.jsonl:") for d in q["detail"])
    for reason in [*q["reason"], *cq["reason"]]:
        event(f"reason: {reason}")
    _tally("jsonl", examples=1, read=records, kept=cur.height, quarantined=q.height + cq.height)


# --------------------------------------------------------------------- (b) CSV/Parquet path

INTERACTION_HEADER = ["member_id", "title_id", "ts", "event", "value"]
CATALOG_HEADER = ["title_id", "title", "kind", "genres", "year"]
field = st.one_of(any_text, number_text, st.sampled_from(["T1", "T2", "play", "rate", "movie", "Drama|Comedy"]))


def plausible_fields(width: int) -> st.SearchStrategy[list[str]]:
    """A record that can pass (so the property also covers the kept path), in either contract."""
    if width == len(INTERACTION_HEADER):
        return st.tuples(
            plain_text,
            st.sampled_from(["T1", "T2", "T3"]),
            st.sampled_from(["2026-01-01T08:00:00Z", "1767258000", "2026-01-01 10:00"]),
            st.sampled_from(["play", "search", "rate", ""]),
            st.sampled_from(["", "4", "0.5"]),
        ).map(list)
    return st.tuples(
        st.one_of(st.integers(0, 50).map(str), plain_text),
        plain_text,
        st.sampled_from(["movie", "series", "", "TV Show"]),
        st.sampled_from(["Drama|Comedy", "", "(no genres listed)"]),
        st.sampled_from(["1999", "", "2024.0"]),
    ).map(list)


@st.composite
def csv_row(draw: st.DrawFn, width: int) -> bytes:
    """One CSV record as bytes (it may span lines inside quotes), possibly damaged."""
    fields = draw(st.one_of(st.lists(field, min_size=width, max_size=width), plausible_fields(width)))
    if width == 5 and draw(st.booleans()):
        fields[2] = draw(ts_text)
    damage = draw(st.sampled_from(["none", "none", "none", "extra_fields", "garbage_bytes", "bad_quote"]))
    if damage == "extra_fields":
        fields += [draw(st.text(max_size=4)) for _ in range(draw(st.integers(1, 3)))]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    # Lone surrogates are written as the (invalid) bytes surrogatepass gives them: more undecodable input.
    raw = out.getvalue().encode("utf-8", errors="surrogatepass")
    if damage == "garbage_bytes":
        junk = _no_newline(draw(st.binary(min_size=1, max_size=6))).replace(b'"', b"'")
        raw = junk + b"," + raw
    elif damage == "bad_quote" and b"\n" not in raw[:-1]:
        # Text after a closing quote: the csv grammar cannot parse the record. Only on one-line records: a
        # record that cannot be parsed has no known end, so the reader quarantines its first line and goes
        # on with the next, and the continuation of a multi-line value would be read as records of its own.
        raw = b'"ab"c,' + raw
    return raw


@st.composite
def csv_file(draw: st.DrawFn) -> tuple[str, bytes, int]:
    source = draw(st.sampled_from(["interactions", "catalog"]))
    header = INTERACTION_HEADER if source == "interactions" else CATALOG_HEADER
    rows = draw(st.lists(csv_row(len(header)), max_size=10))
    bom = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf"]))
    return source, bom + ",".join(header).encode() + b"\n" + b"".join(rows), len(rows)


def _check_ingest(source: str, frame: pl.DataFrame, rejects: pl.DataFrame, records: int, test: str) -> None:
    assert frame.height + rejects.height == records
    if source == "interactions":
        rows, q, stats = ig.ingest_interactions(frame, None, DAY, KNOWN, per_day_files=True, read_rejects=rejects)
        assert stats["rows_in"] == records
        assert records == stats["rows_out"] + stats["quarantined"] + stats["duplicates_collapsed"]
        assert stats["other_day_rows"] == 0 and rows.height == stats["rows_out"] and q.height == stats["quarantined"]
        assert set(q["reason"]) <= set(ig.INTERACTION_REASONS) | set(ig.READ_REASONS)
        kept, rejected = rows.height + stats["duplicates_collapsed"], q.height
    else:
        rows, q = ig.ingest_catalog(frame, read_rejects=rejects)
        rejected = q.filter(~pl.col("reason").is_in(list(ig.REPAIRED_REASONS))).height
        assert rows.height + rejected == records
        assert rows["title_id"].is_unique().all()
        assert set(q["reason"]) <= set(ig.CATALOG_REASONS) | set(ig.READ_REASONS)
        kept = rows.height
    assert (q["payload"].str.len_chars() <= QUARANTINE_PAYLOAD_MAX_CHARS).all()
    for reason in q["reason"]:
        event(f"reason: {reason}")
    _tally(test, examples=1, read=records, kept=kept, quarantined=rejected)


@pytest.mark.slow
@FUZZ
@given(spec=csv_file(), encoding=st.sampled_from(["utf-8", "utf-8", "cp1252", "latin-1"]))
def test_csv_ingestion_never_raises_and_every_record_is_accounted_for(
    spec: tuple[str, bytes, int], encoding: str
) -> None:
    source, data, records = spec
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "drop.csv"
        path.write_bytes(data)
        frame, rejects = ig.read_tables_with_rejects([path], encoding=encoding, source=source)
    assert all(d.startswith(f"{path}:") for d in rejects["detail"])
    _check_ingest(source, frame, rejects, records, "csv")


def _nested(inner: pl.DataType, depth: int) -> pl.DataType:
    for _ in range(depth):
        inner = pl.List(inner)
    return inner


@st.composite
def parquet_column(draw: st.DrawFn, n: int) -> pl.Series:
    """A column of ``n`` values of a random type: what a Parquet writer can hand us."""
    kind = draw(
        st.sampled_from(
            [
                "text",
                "text",
                "int",
                "uint",
                "float",
                "bool",
                "binary",
                "list",
                "deep",
                "struct",
                "date",
                "datetime",
                "duration",
                "null",
            ]
        )
    )
    opt = lambda s: st.one_of(st.none(), s)  # noqa: E731
    if kind == "text":
        values = draw(st.lists(opt(st.one_of(field, st.text(max_size=8))), min_size=n, max_size=n))
        return pl.Series(values, dtype=pl.String)
    if kind == "int":
        return pl.Series(draw(st.lists(opt(st.integers(-(2**63), 2**63 - 1)), min_size=n, max_size=n)), dtype=pl.Int64)
    if kind == "uint":
        return pl.Series(draw(st.lists(opt(st.integers(0, 2**64 - 1)), min_size=n, max_size=n)), dtype=pl.UInt64)
    if kind == "float":
        return pl.Series(draw(st.lists(opt(st.floats()), min_size=n, max_size=n)), dtype=pl.Float64)
    if kind == "bool":
        return pl.Series(draw(st.lists(opt(st.booleans()), min_size=n, max_size=n)), dtype=pl.Boolean)
    if kind == "binary":
        return pl.Series(draw(st.lists(opt(st.binary(max_size=8)), min_size=n, max_size=n)), dtype=pl.Binary)
    if kind == "list":
        return pl.Series(draw(st.lists(opt(st.lists(st.text(max_size=4), max_size=3)), min_size=n, max_size=n)))
    if kind == "deep":
        depth = draw(st.integers(2, 12))
        value = 1
        for _ in range(depth):
            value = [value]
        return pl.Series([value] * n, dtype=_nested(pl.Int64, depth))
    if kind == "struct":
        return pl.Series(draw(st.lists(st.fixed_dictionaries({"a": opt(st.text(max_size=4))}), min_size=n, max_size=n)))
    if kind == "date":
        return pl.Series(draw(st.lists(opt(st.dates()), min_size=n, max_size=n)), dtype=pl.Date)
    if kind == "datetime":
        values = draw(st.lists(opt(st.datetimes(timezones=st.just(UTC))), min_size=n, max_size=n))
        return pl.Series(values, dtype=pl.Datetime("us", "UTC"))
    if kind == "duration":
        return pl.Series([timedelta(seconds=i) for i in range(n)], dtype=pl.Duration("us"))
    return pl.Series([None] * n, dtype=pl.Null)


@st.composite
def parquet_table(draw: st.DrawFn) -> tuple[str, pl.DataFrame]:
    source = draw(st.sampled_from(["interactions", "catalog"]))
    header = INTERACTION_HEADER if source == "interactions" else CATALOG_HEADER
    n = draw(st.integers(0, 8))
    columns = {name: draw(parquet_column(n)) for name in [*header, "extra"]}
    if draw(st.booleans()):  # contract columns of plausible types, so that some rows can pass
        if source == "interactions":
            columns["member_id"] = pl.Series(draw(st.lists(plain_text, min_size=n, max_size=n)), dtype=pl.String)
            columns["title_id"] = pl.Series(draw(st.lists(st.sampled_from(["T1", "T2", "T4"]), min_size=n, max_size=n)))
            columns["ts"] = pl.Series([datetime(2026, 1, 1, 8, tzinfo=UTC)] * n, dtype=pl.Datetime("us", "UTC"))
            columns["event"] = pl.Series(draw(st.lists(st.sampled_from(["play", "rate"]), min_size=n, max_size=n)))
        else:
            columns["title_id"] = pl.Series(range(n), dtype=pl.Int64)
            columns["title"] = pl.Series(draw(st.lists(plain_text, min_size=n, max_size=n)), dtype=pl.String)
            columns["kind"] = pl.Series([None] * n, dtype=pl.String)
    return source, pl.DataFrame(columns)


@FUZZ
@given(spec=parquet_table())
def test_parquet_ingestion_never_raises_and_every_row_is_accounted_for(spec: tuple[str, pl.DataFrame]) -> None:
    source, df = spec
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "drop.parquet"
        df.write_parquet(path)
        frame, rejects = ig.read_tables_with_rejects([path], source=source)
    assert rejects.height == 0, "a Parquet file is read whole; bad values are judged per row by ingestion"
    _check_ingest(source, frame, rejects, df.height, "parquet")
