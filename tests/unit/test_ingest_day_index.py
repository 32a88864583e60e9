"""The per-day index of interaction files that hold many days (core.ingest.day_index).

Every day served from the index must equal a full read (read_tables_with_rejects + ingest_interactions) of
the same files: rows, quarantine (reasons, details, payloads, order) and stats. The tests compare against
that full read directly, so they stay right whatever the rules for a single row are.
"""

from __future__ import annotations

import csv
import io
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from core import ingest as ig
from core.ingest import day_index

DAYS = [date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)]
NO_ROWS_DAY = date(2026, 1, 9)  # a partition the file holds nothing for
KNOWN = pl.Series(["T1", "T2", "T3"])


def _epoch(d: date, hour: int = 12) -> int:
    return int(datetime(d.year, d.month, d.day, hour, tzinfo=UTC).timestamp())


def _ratings_csv(path: Path) -> Path:
    """Three days interleaved, with every kind of bad record: unreadable, undated, rejected, duplicated."""
    d1, d2, d3 = (_epoch(d) for d in DAYS)
    lines = [
        "member_id,title_id,ts,event,value",
        f"m1,T1,{d1},rate,4",
        f"m2,T2,{d2},play,",
        f"m1,T1,{d1},rate,4",  # exact duplicate: collapsed on day 1
        "m3,T3,not-a-time,play,",  # undated: in every day's quarantine
        f"m4,T9,{d3},play,",  # unknown title on day 3
        f"m5,T1,{d2},dance,",  # bad event on day 2
        f"m6,T2,{d1},rate,9",  # bad value on day 1
        f",T2,{d3},play,",  # null member on day 3
        f"m7,T1,{d1},play,,extra",  # ragged: unreadable, in every day's quarantine
        "m8,T2,2026-01-02T23:59:59Z,complete,0.5",
        "m9,T3,2026-01-03,search,",
        'm10,"T1,5,1,play,',  # malformed quoting
        "m11,T2,,play,",  # missing timestamp: undated
        f"m12,T3,{d3},complete,0.25",
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"m13,T\xe9,1767225600,play,\n")
    return path


def _full_read(
    paths: list[Path], day: date, known: pl.Series = KNOWN, mapping: ig.InteractionMapping | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int], int]:
    frame, rejects = ig.read_tables_with_rejects(paths, "utf-8", source="interactions")
    rows, quarantine, stats = ig.ingest_interactions(
        frame, mapping, day, known, per_day_files=False, read_rejects=rejects
    )
    return rows, quarantine, stats, rejects.height


def _load(
    paths: list[Path], day: date, index_dir: Path, known: pl.Series = KNOWN, **kwargs: object
) -> ig.InteractionLoad:
    return ig.ingest_interaction_files(
        paths, "utf-8", kwargs.pop("mapping", None), day, known, per_day_files=False, index_dir=index_dir, **kwargs
    )


def _assert_same(load: ig.InteractionLoad, expected: tuple[pl.DataFrame, pl.DataFrame, dict[str, int], int]) -> None:
    rows, quarantine, stats, unreadable = expected
    assert_frame_equal(load.rows, rows)
    assert_frame_equal(load.quarantine, quarantine)
    assert list(load.stats.items()) == list(stats.items())
    assert load.unreadable_records == unreadable


def _versions(index_dir: Path) -> list[Path]:
    return [v for s in index_dir.iterdir() for v in s.iterdir() if not v.name.startswith(".")]


def test_one_file_for_all_days_gives_the_full_reads_results_per_day(tmp_path: Path) -> None:
    paths = [_ratings_csv(tmp_path / "ratings.csv")]
    index_dir = tmp_path / "index"
    states = []
    for day in [*DAYS, NO_ROWS_DAY]:
        load = _load(paths, day, index_dir)
        _assert_same(load, _full_read(paths, day))
        states.append(load.index)
    assert states == ["built", "read", "read", "read"]
    q = _load(paths, DAYS[1], index_dir).quarantine
    # The fixture reaches the reasons it was written for (a fixture that lost them would prove nothing).
    assert {"ragged_row", "malformed_row", "encoding_error", "bad_timestamp", "bad_event"} <= set(q["reason"])


def test_a_later_day_does_not_parse_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [_ratings_csv(tmp_path / "ratings.csv")]
    expected = _full_read(paths, DAYS[2])
    assert _load(paths, DAYS[0], tmp_path / "index").index == "built"

    def no_parse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the file was parsed although its index exists")

    monkeypatch.setattr(day_index, "read_tables_with_rejects", no_parse)
    load = _load(paths, DAYS[2], tmp_path / "index")
    assert load.index == "read"
    _assert_same(load, expected)


def test_the_catalog_is_applied_per_day_not_frozen_into_the_index(tmp_path: Path) -> None:
    """unknown_title depends on raw.catalog, which may grow between two days' runs."""
    paths = [_ratings_csv(tmp_path / "ratings.csv")]
    _load(paths, DAYS[0], tmp_path / "index")
    wider = pl.Series(["T1", "T2", "T3", "T9"])
    load = _load(paths, DAYS[2], tmp_path / "index", known=wider)
    assert load.index == "read"
    _assert_same(load, _full_read(paths, DAYS[2], known=wider))
    assert "unknown_title" not in set(load.quarantine["reason"])


def test_a_modified_file_is_reindexed(tmp_path: Path) -> None:
    path = _ratings_csv(tmp_path / "ratings.csv")
    index_dir = tmp_path / "index"
    _load([path], DAYS[0], index_dir)
    first = _versions(index_dir)

    with path.open("a") as fh:
        fh.write(f"m20,T1,{_epoch(DAYS[1], 18)},rate,5\n")
    load = _load([path], DAYS[1], index_dir)
    assert load.index == "built"
    _assert_same(load, _full_read([path], DAYS[1]))
    assert "m20" in load.rows["member_id"].to_list()
    second = _versions(index_dir)
    assert len(second) == 1 and second != first  # the old content's index is gone
    assert _load([path], DAYS[2], index_dir).index == "read"


def test_a_rewrite_that_keeps_size_and_mtime_is_caught_by_the_digest(tmp_path: Path) -> None:
    path = _ratings_csv(tmp_path / "ratings.csv")
    index_dir = tmp_path / "index"
    _load([path], DAYS[0], index_dir)
    st = path.stat()
    data = path.read_bytes().replace(b"m2,T2", b"m2,T3")
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    load = _load([path], DAYS[1], index_dir)
    assert load.index == "built"
    _assert_same(load, _full_read([path], DAYS[1]))


def test_a_changed_mapping_or_encoding_is_another_index(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    d1, d2 = (_epoch(d) for d in DAYS[:2])
    path.write_text(f"userId,movieId,timestamp,when\nm1,T1,{d1},{d2}\nm2,T2,{d2},{d1}\n")
    index_dir = tmp_path / "index"
    by_ts = ig.InteractionMapping(member_id="userId", title_id="movieId", timestamp="timestamp", event=None, value=None)
    by_when = ig.InteractionMapping(member_id="userId", title_id="movieId", timestamp="when", event=None, value=None)
    assert _load([path], DAYS[0], index_dir, mapping=by_ts).index == "built"
    load = _load([path], DAYS[0], index_dir, mapping=by_when)
    assert load.index == "built"
    _assert_same(load, _full_read([path], DAYS[0], mapping=by_when))
    assert load.rows["member_id"].to_list() == ["m2"]
    latin = ig.ingest_interaction_files(
        [path], "latin-1", by_when, DAYS[1], KNOWN, per_day_files=False, index_dir=index_dir
    )
    assert latin.index == "built"


def test_parquet_values_that_cannot_be_read_keep_their_reasons(tmp_path: Path) -> None:
    """Binary, nested and native datetime columns go through the index unchanged (Parquet round trip)."""
    ts = [datetime(2026, 1, d, 8, tzinfo=UTC) for d in (1, 2, 1, 3, 2)] + [None]
    pl.DataFrame(
        {
            "member_id": [b"m1", b"m\xff", b"m3", b"m4", b"m5", b"m6"],
            "title_id": ["T1", "T2", "T3", "T1", "T2", "T3"],
            "ts": ts,
            "event": ["play", "play", "rate", "play", "complete", "play"],
            "value": [None, None, [4.0], None, [0.5], None],
            "note": [{"a": 1}, None, None, {"a": 2}, None, None],
        }
    ).write_parquet(tmp_path / "events.parquet")
    paths = [tmp_path / "events.parquet"]
    states = []
    for day in DAYS:
        load = _load(paths, day, tmp_path / "index")
        _assert_same(load, _full_read(paths, day))
        states.append(load.index)
    assert states == ["built", "read", "read"]
    reasons = set(_full_read(paths, DAYS[1])[1]["reason"])
    assert {"encoding_error", "bad_type"} <= reasons


def test_a_set_of_files_without_day_is_indexed_as_one(tmp_path: Path) -> None:
    d1, d2 = (_epoch(d) for d in DAYS[:2])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text(f"member_id,title_id,ts\nm1,T1,{d1}\nm2,T2,{d2}\n")
    (tmp_path / "in" / "b.csv").write_text(f"member_id,title_id,ts,event\nm3,T3,{d2},play\nm4,T1,{d1},rate\n")
    paths = [tmp_path / "in"]
    for i, day in enumerate(DAYS[:2]):
        load = _load(paths, day, tmp_path / "index")
        assert load.index == ("built" if i == 0 else "read")
        _assert_same(load, _full_read(paths, day))


def test_per_day_files_and_no_index_dir_read_the_files_whole(tmp_path: Path) -> None:
    paths = [_ratings_csv(tmp_path / "ratings.csv")]
    off = ig.ingest_interaction_files(paths, "utf-8", None, DAYS[0], KNOWN, per_day_files=False)
    assert off.index == "off"
    _assert_same(off, _full_read(paths, DAYS[0]))
    per_day = ig.ingest_interaction_files(
        paths, "utf-8", None, DAYS[0], KNOWN, per_day_files=True, index_dir=tmp_path / "index"
    )
    assert per_day.index == "off" and not (tmp_path / "index").exists()
    frame, rejects = ig.read_tables_with_rejects(paths, "utf-8", source="interactions")
    rows, q, stats = ig.ingest_interactions(frame, None, DAYS[0], KNOWN, per_day_files=True, read_rejects=rejects)
    assert_frame_equal(per_day.rows, rows)
    assert_frame_equal(per_day.quarantine, q)
    assert per_day.stats == stats


def test_input_errors_are_the_full_reads_errors(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _load([tmp_path / "missing.csv"], DAYS[0], index_dir)
    path = _ratings_csv(tmp_path / "ratings.csv")
    wrong = ig.InteractionMapping(timestamp="when")
    with pytest.raises(ValueError, match="names column 'when'"):
        _load([path], DAYS[0], index_dir, mapping=wrong)
    with pytest.raises(ValueError, match="unknown encoding"):
        ig.ingest_interaction_files([path], "utf-9", None, DAYS[0], KNOWN, per_day_files=False, index_dir=index_dir)
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        _load([tmp_path / "empty.csv"], DAYS[0], index_dir)
    assert not index_dir.exists() or not _versions(index_dir)


def test_an_unreadable_index_is_rebuilt(tmp_path: Path) -> None:
    paths = [_ratings_csv(tmp_path / "ratings.csv")]
    index_dir = tmp_path / "index"
    _load(paths, DAYS[0], index_dir)
    (version,) = _versions(index_dir)
    (version / "days.parquet").write_bytes(b"not parquet")
    load = _load(paths, DAYS[1], index_dir)
    assert load.index == "built"
    _assert_same(load, _full_read(paths, DAYS[1]))
    assert _load(paths, DAYS[2], index_dir).index == "read"


def test_two_runs_building_the_same_index_both_succeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run that renames second finds the version published and discards its own copy."""
    paths = [_ratings_csv(tmp_path / "ratings.csv")]
    index_dir = tmp_path / "index"
    write = day_index._write
    inner: list[ig.InteractionLoad] = []
    racing = [True]

    def racing_write(*args: object, **kwargs: object) -> None:
        if racing.pop() if racing else False:  # another day's run publishes first, while this one is writing
            inner.append(_load(paths, DAYS[1], index_dir))
        write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(day_index, "_write", racing_write)
    outer = _load(paths, DAYS[0], index_dir)
    assert inner[0].index == "built" and outer.index == "built"
    _assert_same(outer, _full_read(paths, DAYS[0]))
    _assert_same(inner[0], _full_read(paths, DAYS[1]))
    leftovers = [p.name for s in index_dir.iterdir() for p in s.iterdir() if p.name.startswith(".")]
    assert len(_versions(index_dir)) == 1 and leftovers == []  # the losing copy was discarded
    monkeypatch.undo()
    assert _load(paths, DAYS[2], index_dir).index == "read"


def test_a_file_changed_while_read_is_not_indexed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _ratings_csv(tmp_path / "ratings.csv")
    read = day_index.read_tables_with_rejects

    def read_then_append(*args: object, **kwargs: object) -> tuple[pl.DataFrame, pl.DataFrame]:
        out = read(*args, **kwargs)  # type: ignore[arg-type]
        with path.open("a") as fh:
            fh.write("m30,T1,1767268800,play\n")
        return out

    monkeypatch.setattr(day_index, "read_tables_with_rejects", read_then_append)
    load = _load([path], DAYS[0], tmp_path / "index")
    assert load.index == "not_built" and "changed while it was read" in load.index_note


def test_a_column_named_like_the_index_columns_is_not_indexed(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(f"member_id,title_id,ts,__ingest_index_row\nm1,T1,{_epoch(DAYS[0])},x\n")
    load = _load([path], DAYS[0], tmp_path / "index")
    assert load.index == "not_built" and "__ingest_index_row" in load.index_note
    _assert_same(load, _full_read([path], DAYS[0]))


def test_an_unwritable_index_dir_only_costs_the_index(tmp_path: Path) -> None:
    paths = [_ratings_csv(tmp_path / "ratings.csv")]
    (tmp_path / "index").write_text("a file where the index directory should be")
    load = _load(paths, DAYS[0], tmp_path / "index")
    assert load.index == "not_built" and "cannot write the index" in load.index_note
    _assert_same(load, _full_read(paths, DAYS[0]))


# ------------------------------------------------------------------ property


_TS = st.sampled_from(
    [
        *(str(_epoch(d, h)) for d in DAYS for h in (0, 23)),
        *(f"{d.isoformat()}T10:00:00+02:00" for d in DAYS),
        "2026-01-01T00:30:00+01:00",  # the previous day in UTC
        f"{_epoch(DAYS[0]) + 0.5}",
        DAYS[2].isoformat(),
        "",
        "soon",
        "1e30",
    ]
)
_ROW = st.tuples(
    st.sampled_from(["m1", "m2", "", " m3 "]),
    st.sampled_from(["T1", "T2", "T9", ""]),
    _TS,
    st.sampled_from(["play", "rate", "RATE", "complete", "bogus", ""]),
    st.sampled_from(["", "4", "0.5", "7", "x", "nan"]),
)


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_ROW, max_size=40), extra=st.lists(st.sampled_from([",x", '"', "\xe9"]), max_size=3))
def test_any_file_gives_every_day_the_full_reads_result(rows: list[tuple[str, ...]], extra: list[str]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["member_id", "title_id", "ts", "event", "value"])
    writer.writerows(rows)
    text = out.getvalue() + "".join(f"m9,T1,{_epoch(DAYS[1])},play,4{e}\n" for e in extra)
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "ratings.csv"
        path.write_bytes(text.encode("latin-1"))
        paths = [path]
        for i, day in enumerate([*DAYS, DAYS[0] - timedelta(days=1)]):
            frame, rejects = ig.read_tables_with_rejects(paths, "utf-8", source="interactions")
            expected = ig.ingest_interactions(frame, None, day, KNOWN, per_day_files=False, read_rejects=rejects)
            load = _load(paths, day, Path(tmp) / "index")
            assert load.index == ("built" if i == 0 else "read")
            _assert_same(load, (*expected, rejects.height))
