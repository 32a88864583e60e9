"""Ingestion: synthetic drops and bring-your-own CSV/Parquet through one path, with quarantine."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import ingest as ig
from core import synthetic as syn
from core.schemas import CATALOG_SCHEMA, INTERACTIONS_SCHEMA, RAW_QUARANTINE_SCHEMA

DAY = date(2026, 1, 1)
KNOWN = pl.Series(["T1", "T2", "T3"])


def _epoch(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def _invariant(df: pl.DataFrame, rows: pl.DataFrame, q: pl.DataFrame, stats: dict[str, int]) -> None:
    assert stats["rows_in"] == df.height
    assert stats["rows_out"] == rows.height and stats["quarantined"] == q.height
    assert df.height == (
        stats["rows_out"] + stats["quarantined"] + stats["duplicates_collapsed"] + stats["other_day_rows"]
    )


# ------------------------------------------------------------ synthetic round trip


def test_synthetic_drop_round_trip(tmp_path: Path) -> None:
    cfg = syn.SyntheticConfig()
    syn.ensure_drop(tmp_path, cfg, DAY)
    paths = syn.landing_paths(tmp_path, DAY)

    catalog, cat_q = ig.ingest_catalog(ig.read_tables([paths["catalog"]]), ig.CatalogMapping())
    assert dict(catalog.schema) == CATALOG_SCHEMA
    assert catalog.height == cfg.n_titles and cat_q.height == 0
    assert catalog["genres"].list.len().is_between(1, 3).all()

    raw = ig.read_tables([paths["interactions"]])
    rows, q, stats = ig.ingest_interactions(raw, None, DAY, catalog["title_id"], per_day_files=True)
    _invariant(raw, rows, q, stats)
    assert dict(rows.schema) == INTERACTIONS_SCHEMA and dict(q.schema) == RAW_QUARANTINE_SCHEMA
    # The generator names each injected defect after the reason code ingestion gives it.
    assert set(q["reason"]) == set(syn.INJECTED_DEFECTS)
    assert len(syn.INJECTED_DEFECTS) <= q.height <= 2 * cfg.bad_row_rate * raw.height
    assert (q["source"] == "interactions").all() and (q["day"] == DAY).all()
    assert stats["duplicates_collapsed"] >= 1 and stats["other_day_rows"] == 0
    assert (rows["day"] == DAY).all() and (rows["ts"].dt.date() == DAY).all()
    assert rows.select(pl.struct("member_id", "title_id", "ts", "event").is_unique().all()).item()
    assert rows["ts"].is_sorted()
    assert rows.filter(pl.col("event").is_in(["play", "search"]))["value"].null_count() == (
        rows.filter(pl.col("event").is_in(["play", "search"])).height
    )
    for payload in q["payload"]:
        assert set(json.loads(payload)) == {"member_id", "title_id", "ts", "event", "value"}


# ------------------------------------------------------ bring your own: MovieLens


MOVIES_CSV = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,Jumanji (1995),Adventure|Children|Fantasy
3,"Shawshank Redemption, The (1994)",Crime|Drama
4,Untitled Project,(no genres listed)
5,  ,Drama
,Nameless Id (2001),Drama
3,Shawshank Again (1994),Crime
007,Leading Zeros (1962),Action|Action
"""


def _ratings_csv() -> str:
    rows = [
        "userId,movieId,rating,timestamp",
        f"1,1,4.0,{_epoch(2026, 1, 1, 10)}",
        f"1,2,3.5,{_epoch(2026, 1, 1, 11)}",
        f"2,3,5.0,{_epoch(2026, 1, 1, 23, 59)}",
        f"2,3,5.0,{_epoch(2026, 1, 1, 23, 59)}",  # exact re-delivery
        f"3,1,2.0,{_epoch(2026, 1, 2, 0, 1)}",  # next day: another partition
        f"3,99,4.0,{_epoch(2026, 1, 1, 12)}",  # unknown title
        f",1,4.0,{_epoch(2026, 1, 1, 12)}",  # no member
        "4,1,4.0,yesterday",  # unparsable timestamp
        f"4,2,7,{_epoch(2026, 1, 1, 13)}",  # rating out of range
        f"4,007,x,{_epoch(2026, 1, 1, 14)}",  # rating not a number
        f"5,007,0.5,{_epoch(2026, 1, 1, 15)}.25",  # half star, fractional epoch
    ]
    return "\n".join(rows) + "\n"


@pytest.fixture
def movielens(tmp_path: Path) -> tuple[Path, Path]:
    movies, ratings = tmp_path / "movies.csv", tmp_path / "ratings.csv"
    movies.write_text(MOVIES_CSV)
    ratings.write_text(_ratings_csv())
    return movies, ratings


ML_CATALOG = ig.CatalogMapping(title_id="movieId", title="title", genres="genres", kind=None, year=None, synopsis=None)
ML_RATINGS = ig.InteractionMapping(
    member_id="userId", title_id="movieId", timestamp="timestamp", event=None, value=None, rating="rating"
)


def test_movielens_catalog_parses_years_and_degrades_missing_columns(movielens: tuple[Path, Path]) -> None:
    movies, _ = movielens
    raw = ig.read_tables([movies])
    assert all(dt == pl.String for dt in raw.schema.values()), "CSV columns stay text"
    catalog, q = ig.ingest_catalog(raw, ML_CATALOG)
    assert dict(catalog.schema) == CATALOG_SCHEMA
    by_id = {r["title_id"]: r for r in catalog.to_dicts()}
    assert list(by_id) == ["1", "2", "3", "4", "007"], "input order, ids kept verbatim"
    assert by_id["1"]["title"] == "Toy Story" and by_id["1"]["year"] == 1995
    assert by_id["3"]["title"] == "The Shawshank Redemption" and by_id["3"]["year"] == 1994
    assert by_id["4"]["title"] == "Untitled Project" and by_id["4"]["year"] is None
    assert by_id["4"]["genres"] == []
    assert by_id["007"]["genres"] == ["Action"], "genres deduplicated"
    assert by_id["1"]["genres"][:2] == ["Adventure", "Animation"]
    assert {r["kind"] for r in by_id.values()} == {"movie"}
    assert all(r["synopsis"] is None and r["language"] is None for r in by_id.values())
    assert q["reason"].to_list() == ["null_title", "null_title_id", "duplicate_title_id"]
    assert (q["source"] == "catalog").all() and q["day"].is_null().all()
    assert "repeats input row 2 " in q["detail"][2]
    assert json.loads(q["payload"][2]) == {
        "movieId": "3",
        "title": "Shawshank Again (1994)",
        "genres": "Crime",
    }
    assert ig.absent_optional_columns(raw, ML_CATALOG) == ["kind", "year", "synopsis", "language", "maturity"]


# MovieLens' sort forms: a trailing article, also before and inside alternate titles, and "IMAX" among the genres.
ML_TITLES_CSV = """movieId,title,genres
1,"Good, the Bad and the Ugly, The (Buono, il brutto, il cattivo, Il) (1966)",Action|Adventure|Western
2,"Apartment, The (Appartement, L') (1996)",Drama|Mystery
3,"Das Boot (Boat, The) (1981)",Action|Drama|War
4,"Bicycle Thieves (a.k.a. Bicycle Thief, The) (Ladri di biciclette) (1948)",Drama
5,"Misérables, Les (1995)",Drama|War
6,"Seventh Seal, The (Sjunde inseglet, Det) (1957)",Drama
7,"Tale of Two Sisters, A (Janghwa, Hongryeon) (2003)",Drama|Horror
8,"Cry, the Beloved Country (1995)",Drama
9,"Adventures of Priscilla, Queen of the Desert, The (1994)",Comedy|Drama
10,"Paris, Texas (1984)",Drama|Romance
11,"Nosferatu (Nosferatu, eine Symphonie des Grauens) (1922)",Horror
12,Avatar (2009),Action|Adventure|IMAX|Sci-Fi
13,Imax Only (2010),imax
14,Listed Loudly (2011),(No Genres Listed)|Drama
"""


def test_movielens_trailing_articles_move_to_the_front_of_titles_and_alternates() -> None:
    raw = pl.read_csv(io.StringIO(ML_TITLES_CSV), infer_schema=False)
    catalog, q = ig.ingest_catalog(raw, ML_CATALOG)
    assert q.height == 0
    assert catalog["title"].to_list() == [
        "The Good, the Bad and the Ugly (Il Buono, il brutto, il cattivo)",
        "The Apartment (L'Appartement)",
        "Das Boot (The Boat)",
        "Bicycle Thieves (a.k.a. The Bicycle Thief) (Ladri di biciclette)",
        "Les Misérables",
        "The Seventh Seal (Det Sjunde inseglet)",
        "A Tale of Two Sisters (Janghwa, Hongryeon)",
        "Cry, the Beloved Country",  # a lower-case "the" belongs to the title
        "The Adventures of Priscilla, Queen of the Desert",
        "Paris, Texas",
        "Nosferatu (Nosferatu, eine Symphonie des Grauens)",
        "Avatar",
        "Imax Only",
        "Listed Loudly",
    ]
    assert catalog["year"].to_list()[:3] == [1966, 1996, 1981]


def test_movielens_format_tags_are_not_genres() -> None:
    """IMAX is how a title was shown, not what it is: it never becomes a genre (any case)."""
    raw = pl.read_csv(io.StringIO(ML_TITLES_CSV), infer_schema=False)
    catalog, _ = ig.ingest_catalog(raw, ML_CATALOG)
    genres = dict(catalog.select("title", "genres").iter_rows())
    assert genres["Avatar"] == ["Action", "Adventure", "Sci-Fi"]
    assert genres["Imax Only"] == []
    assert genres["Listed Loudly"] == ["Drama"]
    assert not any(g.lower() == "imax" for gs in genres.values() for g in gs)
    assert "IMAX" in ig.FORMAT_TAGS


def test_movielens_ratings_one_big_file_keeps_only_the_day(movielens: tuple[Path, Path]) -> None:
    movies, ratings = movielens
    catalog, _ = ig.ingest_catalog(ig.read_tables([movies]), ML_CATALOG)
    raw = ig.read_tables([ratings])
    rows, q, stats = ig.ingest_interactions(raw, ML_RATINGS, DAY, catalog["title_id"], per_day_files=False)
    _invariant(raw, rows, q, stats)
    assert stats["other_day_rows"] == 1 and stats["duplicates_collapsed"] == 1
    assert rows["event"].unique().to_list() == ["rate"], "a rating with no event column means 'rate'"
    assert rows.select("member_id", "title_id", "value").rows() == [
        ("1", "1", 4.0),
        ("1", "2", 3.5),
        ("5", "007", 0.5),
        ("2", "3", 5.0),
    ]
    assert rows["ts"][2] == datetime(2026, 1, 1, 15, 0, 0, 250000, tzinfo=UTC)
    assert sorted(q["reason"]) == [
        "bad_timestamp",
        "bad_value",
        "bad_value",
        "null_member_id",
        "unknown_title",
    ]
    # An unparsable timestamp belongs to no day: day=null, and every partition returns it.
    assert q.filter(pl.col("reason") == "bad_timestamp")["day"].is_null().all()
    assert q.filter(pl.col("reason") != "bad_timestamp")["day"].is_not_null().all()
    detail = q.filter(pl.col("reason") == "bad_timestamp")["detail"][0]
    assert "'yesterday'" in detail and "'timestamp'" in detail

    # The next day's partition picks up the row that was "other day" above, and the
    # same unplaceable bad_timestamp row again (the caller replaces it).
    rows2, q2, _ = ig.ingest_interactions(raw, ML_RATINGS, date(2026, 1, 2), catalog["title_id"], per_day_files=False)
    assert rows2.select("member_id", "title_id").rows() == [("3", "1")]
    assert q2["reason"].to_list() == ["bad_timestamp"]
    assert q2["payload"].to_list() == q.filter(pl.col("reason") == "bad_timestamp")["payload"].to_list()


# -------------------------------------------- bring your own: Parquet, other names


def test_parquet_variant_with_iso_timestamps_and_other_names(tmp_path: Path) -> None:
    pl.DataFrame(
        {
            "id": [10, 11, 12, 13, 14],
            "name": ["Night Train", "Harbor Lights", "The Garden (1970)", "Glass Tower", "Old Reel"],
            "type": ["Film", "TV Show", "Film", "documentary", None],
            "categories": ["Drama; Crime", "Comedy", "", "Drama", "Western"],
            "release_year": ["2001", "19x5", None, "2020", "1700"],
            "blurb": ["A train at night.", None, "A garden.", "Glass.", "Dust."],
        }
    ).write_parquet(tmp_path / "titles.parquet")
    mapping = ig.catalog_mapping_from_json(
        json.dumps(
            {
                "title_id": "id",
                "title": "name",
                "kind": "type",
                "genres": "categories",
                "genres_delimiter": ";",
                "year": "release_year",
                "synopsis": "blurb",
                "language": None,
                "maturity": None,
            }
        )
    )
    catalog, q = ig.ingest_catalog(ig.read_tables([tmp_path / "titles.parquet"]), mapping)
    assert catalog.select("title_id", "title", "kind", "genres", "year").rows() == [
        ("10", "Night Train", "movie", ["Drama", "Crime"], 2001),
        ("11", "Harbor Lights", "series", ["Comedy"], None),
        ("12", "The Garden", "movie", [], 1970),
        ("14", "Old Reel", "movie", ["Western"], None),
    ]
    assert q.select("reason").to_series().to_list() == ["bad_year", "bad_kind", "bad_year"]
    assert "'19x5'" in q["detail"][0] and "year=null" in q["detail"][0]
    assert "'documentary'" in q["detail"][1]
    rejected = q.filter(~pl.col("reason").is_in(list(ig.REPAIRED_REASONS))).height
    assert catalog.height + rejected == 5

    day = date(2026, 1, 5)
    events = [
        ("u1", 10, "2026-01-05T08:00:00Z", "PLAY", None),
        ("u1", 10, "2026-01-05T10:30:00+02:00", "complete", 0.8),  # 08:30 UTC
        ("u2", 11, "2026-01-05 21:00:00", "rate", 4.0),  # no zone: UTC
        ("u2", 11, "2026-01-06T01:00:00+03:00", "search", None),  # 22:00 UTC on the 5th
        ("u3", 12, "2026-01-05T09:00", "pause", None),
        ("u3", 12, "2026-01-05T09:00:00.5Z", "complete", 1.5),
    ]
    late = [
        ("u4", 10, "2026-01-04T23:59:00Z", "play", None),
        ("u4", 13, "2026-01-05T12:00:00Z", "play", None),
    ]
    cols = {"user": pl.String, "item": pl.Int64, "when": pl.String, "action": pl.String, "score": pl.Float64}
    pl.DataFrame(events, schema=cols, orient="row").write_parquet(tmp_path / "part-0.parquet")
    pl.DataFrame(late, schema=cols, orient="row").write_parquet(tmp_path / "part-1.parquet")
    raw = ig.read_tables([tmp_path / "part-0.parquet", tmp_path / "part-1.parquet"])
    imap = ig.interaction_mapping_from_json(
        {"member_id": "user", "title_id": "item", "timestamp": "when", "event": "action", "value": "score"}
    )
    rows, q, stats = ig.ingest_interactions(raw, imap, day, catalog["title_id"], per_day_files=True)
    _invariant(raw, rows, q, stats)
    assert rows.select("member_id", "title_id", "event", "value").rows() == [
        ("u1", "10", "play", None),
        ("u1", "10", "complete", 0.8),
        ("u2", "11", "rate", 4.0),
        ("u2", "11", "search", None),
    ]
    assert rows["ts"][3] == datetime(2026, 1, 5, 22, tzinfo=UTC)
    assert q["reason"].to_list() == ["bad_event", "bad_value", "wrong_day", "unknown_title"]
    assert (q["day"] == day).all()
    assert "2026-01-04" in q["detail"][2]
    assert json.loads(q["payload"][0]) == {
        "user": "u3",
        "item": 12,
        "when": "2026-01-05T09:00",
        "action": "pause",
        "score": None,
    }


def test_native_parquet_timestamps_and_numeric_epochs() -> None:
    day = date(2026, 1, 1)
    naive = pl.DataFrame({"member_id": ["a", "b"], "title_id": ["T1", "T2"], "ts": [datetime(2026, 1, 1, 5), None]})
    rows, q, _ = ig.ingest_interactions(naive, None, day, KNOWN, per_day_files=True)
    assert rows["ts"].to_list() == [datetime(2026, 1, 1, 5, tzinfo=UTC)]
    assert q["reason"].to_list() == ["bad_timestamp"] and "missing" in q["detail"][0]
    aware = naive.with_columns(pl.col("ts").dt.replace_time_zone("Asia/Tokyo"))
    rows, _, _ = ig.ingest_interactions(aware, None, date(2025, 12, 31), KNOWN, per_day_files=False)
    assert rows["ts"].to_list() == [datetime(2025, 12, 31, 20, tzinfo=UTC)]
    epochs = pl.DataFrame({"member_id": ["a", "b"], "title_id": ["T1", "T2"], "ts": [_epoch(2026, 1, 1, 7), -5]})
    rows, q, _ = ig.ingest_interactions(epochs, None, day, ["T1", "T2"], per_day_files=False)
    assert rows["ts"].to_list() == [datetime(2026, 1, 1, 7, tzinfo=UTC)]
    assert q.height == 0, "1969 is a valid (other) day, not an error"


def test_parse_timestamps_formats() -> None:
    parsed = ig.parse_timestamps(
        pl.Series(
            [
                "2026-01-01T10:00:00Z",
                "2026-01-01T10:00:00.123456+05:30",
                "2026-01-01T10:00:00+0200",
                "2026-01-01 10:00:00",
                "2026-01-01T10:00",
                "2026-01-01",
                str(_epoch(2026, 1, 1, 10)),
                " 1767261600.5 ",
                "01/02/2026",
                "2026-02-30T00:00:00Z",
                "99999999999",
                "",
                None,
            ]
        )
    )
    assert parsed.dtype == pl.Datetime("us", "UTC")
    utc = UTC
    assert parsed.to_list() == [
        datetime(2026, 1, 1, 10, tzinfo=utc),
        datetime(2026, 1, 1, 4, 30, 0, 123456, tzinfo=utc),
        datetime(2026, 1, 1, 8, tzinfo=utc),
        datetime(2026, 1, 1, 10, tzinfo=utc),
        datetime(2026, 1, 1, 10, tzinfo=utc),
        datetime(2026, 1, 1, tzinfo=utc),
        datetime(2026, 1, 1, 10, tzinfo=utc),
        datetime(2026, 1, 1, 10, 0, 0, 500000, tzinfo=utc),
        None,  # ambiguous day/month order: rejected, not guessed
        None,
        None,  # year ~5138: implausible (milliseconds given as seconds?)
        None,
        None,
    ]


# ----------------------------------------------------------- every reason code


def _row(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "member_id": "m1",
        "title_id": "T1",
        "ts": "2026-01-01T12:00:00Z",
        "event": "play",
        "value": None,
    }
    return {**base, **over}


INTERACTION_CASES = {
    "null_member_id": _row(member_id="  "),
    "null_title_id": _row(title_id=None),
    "bad_timestamp": _row(ts="12:00 yesterday"),
    "wrong_day": _row(ts="2026-01-02T00:00:00Z"),
    "unknown_title": _row(title_id="T404"),
    "bad_event": _row(event="pause"),
    "bad_value": _row(event="rate", value="6"),
}


@pytest.mark.parametrize("reason", ig.INTERACTION_REASONS)
def test_every_interaction_reason_code(reason: str) -> None:
    good = _row(member_id="ok")
    df = pl.DataFrame([good, INTERACTION_CASES[reason]], schema=dict.fromkeys(good, pl.String))
    rows, q, stats = ig.ingest_interactions(df, None, DAY, KNOWN, per_day_files=True)
    _invariant(df, rows, q, stats)
    assert rows["member_id"].to_list() == ["ok"]
    assert q["reason"].to_list() == [reason]
    assert q["detail"][0] and json.loads(q["payload"][0]) == INTERACTION_CASES[reason]


@pytest.mark.parametrize(
    ("row", "ok"),
    [
        ({"event": "rate", "value": None}, False),
        ({"event": "rate", "value": "0.5"}, True),
        ({"event": "complete", "value": None}, True),
        ({"event": "complete", "value": "1.01"}, False),
        ({"event": "complete", "value": "-0.1"}, False),
        ({"event": "play", "value": "abc"}, False),
        ({"event": "play", "value": "NaN"}, False),
        ({"event": "Search", "value": "3"}, True),  # value dropped: only rate/complete carry one
    ],
)
def test_value_rules(row: dict[str, object], ok: bool) -> None:
    df = pl.DataFrame([_row(**row)], schema=dict.fromkeys(_row(), pl.String))
    rows, q, _ = ig.ingest_interactions(df, None, DAY, KNOWN, per_day_files=True)
    assert (rows.height == 1) is ok and (q["reason"].to_list() == ([] if ok else ["bad_value"]))
    if ok and row["event"] == "Search":
        assert rows["event"][0] == "search" and rows["value"][0] is None


def test_every_catalog_reason_code() -> None:
    df = pl.DataFrame(
        {
            "title_id": ["a", None, "c", "d", "a", "f"],
            "title": ["A", "B", "", "D", "A again", "F"],
            "kind": ["movie", "series", "movie", "podcast", "movie", None],
            "year": ["1999", "2000", "2001", "2002", "2003", "nineteen"],
        }
    )
    rows, q = ig.ingest_catalog(df)
    assert set(q["reason"]) == set(ig.CATALOG_REASONS)
    assert q["reason"].to_list() == [
        "null_title_id",
        "null_title",
        "bad_kind",
        "duplicate_title_id",
        "bad_year",
    ]
    assert rows.select("title_id", "kind", "year").rows() == [("a", "movie", 1999), ("f", "movie", None)]


def test_duplicates_are_collapsed_only_when_exact() -> None:
    rows = [_row(), _row(), _row(event="search"), _row(ts="2026-01-01T12:00:00.001Z"), _row()]
    df = pl.DataFrame(rows, schema=dict.fromkeys(_row(), pl.String))
    out, q, stats = ig.ingest_interactions(df, None, DAY, KNOWN, per_day_files=True)
    assert out.height == 3 and stats["duplicates_collapsed"] == 2 and q.height == 0


def test_defaults_when_optional_interaction_columns_are_absent() -> None:
    df = pl.DataFrame({"member_id": ["m"], "title_id": ["T1"], "ts": ["2026-01-01T01:00:00Z"]})
    rows, q, _ = ig.ingest_interactions(df, ig.InteractionMapping(), DAY, KNOWN, per_day_files=True)
    assert rows.select("event", "value", "day").rows() == [("play", None, DAY)] and q.height == 0
    rated = df.with_columns(pl.lit("4").alias("stars"), pl.lit(None, dtype=pl.String).alias("event"))
    rows, _, _ = ig.ingest_interactions(rated, ig.InteractionMapping(rating="stars"), DAY, KNOWN, per_day_files=True)
    assert rows.select("event", "value").rows() == [("rate", 4.0)]


def test_minimal_catalog_needs_only_id_and_title() -> None:
    rows, q = ig.ingest_catalog(pl.DataFrame({"title_id": ["x"], "title": ["Only A Title"]}))
    assert rows.to_dicts() == [
        {
            "title_id": "x",
            "title": "Only A Title",
            "kind": "movie",
            "genres": [],
            "year": None,
            "synopsis": None,
            "language": None,
            "maturity": None,
        }
    ]
    assert q.height == 0


# ------------------------------------------------------- configuration errors


def test_missing_columns_are_configuration_errors() -> None:
    df = pl.DataFrame({"movieId": ["1"], "title": ["A"]})
    with pytest.raises(ValueError, match=r"CatalogMapping.title_id names column 'title_id'.*movieId"):
        ig.ingest_catalog(df)
    with pytest.raises(ValueError, match=r"'release'.*or to null"):
        ig.ingest_catalog(df, ig.CatalogMapping(title_id="movieId", year="release"))
    events = pl.DataFrame({"member_id": ["m"], "title_id": ["T1"], "time": ["2026-01-01"]})
    with pytest.raises(ValueError, match=r"timestamp names column 'ts'"):
        ig.ingest_interactions(events, None, DAY, KNOWN, per_day_files=True)


def test_mapping_from_json_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"unknown CatalogMapping key\(s\) \['titleid'\]; allowed keys"):
        ig.catalog_mapping_from_json('{"titleid": "movieId"}')
    with pytest.raises(ValueError, match="unknown InteractionMapping key"):
        ig.interaction_mapping_from_json({"user": "userId"})
    with pytest.raises(ValueError, match="not valid JSON"):
        ig.catalog_mapping_from_json("{title_id: movieId}")
    with pytest.raises(ValueError, match="must be a JSON object"):
        ig.catalog_mapping_from_json('["title_id"]')
    with pytest.raises(ValueError, match=r"InteractionMapping.member_id must be a non-empty string"):
        ig.interaction_mapping_from_json({"member_id": None})
    with pytest.raises(ValueError, match="genres_delimiter"):
        ig.catalog_mapping_from_json({"genres_delimiter": ""})
    assert ig.catalog_mapping_from_json(None) == ig.CatalogMapping()
    assert ig.catalog_mapping_from_json("  ") == ig.CatalogMapping()
    assert ig.interaction_mapping_from_json('{"rating": "stars", "event": null}') == ig.InteractionMapping(
        rating="stars", event=None
    )


def test_read_tables_errors_and_mixed_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no files"):
        ig.read_tables([])
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(ValueError, match=r"data.xlsx.*unknown file type '.xlsx'.*\.csv"):
        ig.read_tables([tmp_path / "data.xlsx"])
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        ig.read_tables([tmp_path / "missing.csv"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no"):
        ig.read_tables([empty])

    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "a.csv").write_text("member_id,title_id,ts\n001,T1,2026-01-01T00:00:00Z\n")
    pl.DataFrame({"member_id": ["2"], "title_id": ["T2"], "ts": [_epoch(2026, 1, 1, 3)], "extra": [1]}).write_parquet(
        parts / "b.parquet"
    )
    (parts / "notes.txt").write_text("ignored inside a directory")
    raw = ig.read_tables([parts])
    assert raw.height == 2 and raw["member_id"].to_list() == ["001", "2"], "leading zeros survive"
    rows, q, _ = ig.ingest_interactions(raw, None, DAY, KNOWN, per_day_files=True)
    assert rows.height == 2 and q.height == 0


# ---------------------------------------------------------- property: no crash

text = st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["T1", "play", "rate", "4", "2026-01-01"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(text, text, text, text, text), max_size=12), st.booleans())
def test_arbitrary_text_never_crashes_and_nothing_is_lost(rows: list[tuple], per_day: bool) -> None:
    df = pl.DataFrame(rows, schema=dict.fromkeys(_row(), pl.String), orient="row")
    out, q, stats = ig.ingest_interactions(df, None, DAY, KNOWN, per_day_files=per_day)
    _invariant(df, out, q, stats)
    assert dict(out.schema) == INTERACTIONS_SCHEMA and dict(q.schema) == RAW_QUARANTINE_SCHEMA
    assert set(q["reason"]) <= set(ig.INTERACTION_REASONS)
    cat = pl.DataFrame([r[:4] for r in rows], schema=["title_id", "title", "kind", "year"], orient="row").with_columns(
        pl.all().cast(pl.String)
    )
    crows, cq = ig.ingest_catalog(cat)
    rejected = cq.filter(~pl.col("reason").is_in(list(ig.REPAIRED_REASONS))).height
    assert crows.height + rejected == cat.height
    assert crows["title_id"].is_unique().all()


def test_infinite_or_huge_epoch_values_are_unparsable_not_a_crash() -> None:
    """Found by hypothesis: polars evaluates a when/then branch on every row, so a cast there saw inf."""
    from core.ingest import parse_timestamps

    parsed = parse_timestamps(pl.Series(["inf", "-inf", "1e30", "1767225600"]))
    assert parsed.is_null().to_list() == [True, True, True, False]


# ------------------------------------ issue 12: encodings, ragged rows, unreadable values

LATIN1_EVENTS = (
    "member_id,title_id,ts,event\n"
    "ana,T1,2026-01-01T08:00:00Z,play\n"
    "Jos\u00e9,T1,2026-01-01T09:00:00Z,play\n"
    "Jos\u00e8,T2,2026-01-01T10:00:00Z,play\n"
    "bo,T3,2026-01-01T11:00:00Z,play\n"
)
LATIN1_TITLES = "title_id,title\nT1,Am\u00e9lie\nT2,Am\u00e8lie\nT3,Heat\n"


def test_a_latin1_file_read_as_utf8_quarantines_only_the_undecodable_rows(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(LATIN1_EVENTS.encode("latin-1"))
    raw, rejects = ig.read_tables_with_rejects([path], encoding="utf-8", source="interactions")
    assert raw["member_id"].to_list() == ["ana", "bo"], "no row is read with U+FFFD in place of a byte"
    assert dict(rejects.schema) == RAW_QUARANTINE_SCHEMA
    assert rejects["reason"].to_list() == ["encoding_error"] * 2
    for line, detail in zip((3, 4), rejects["detail"], strict=True):
        assert detail.startswith(f"{path}:{line}: column 'member_id'") and "INTERACTION_ENCODING" in detail
    assert "0xe9" in rejects["detail"][0] and "0xe8" in rejects["detail"][1]
    assert json.loads(rejects["payload"][0])["member_id"] == "Jos\\xe9"

    _, q, stats = ig.ingest_interactions(raw, None, DAY, KNOWN, per_day_files=True, read_rejects=rejects)
    assert stats["rows_in"] == 4 == stats["rows_out"] + stats["quarantined"]
    assert q["reason"].to_list() == ["encoding_error"] * 2 and (q["day"] == DAY).all()
    assert (q["source"] == "interactions").all()

    # The old API has nowhere to put rejects, so it refuses instead of dropping or altering rows.
    with pytest.raises(ValueError, match=rf"2 record\(s\) cannot be read.*{path.name}:3"):
        ig.read_tables([path])


def test_with_the_right_encoding_two_spellings_stay_two_members_and_two_titles(tmp_path: Path) -> None:
    events, titles = tmp_path / "events.csv", tmp_path / "titles.csv"
    events.write_bytes(LATIN1_EVENTS.encode("latin-1"))
    titles.write_bytes(LATIN1_TITLES.encode("latin-1"))
    raw, rejects = ig.read_tables_with_rejects([events], encoding="latin-1", source="interactions")
    assert rejects.height == 0
    rows, q, _ = ig.ingest_interactions(raw, None, DAY, KNOWN, per_day_files=True, read_rejects=rejects)
    assert q.height == 0 and {"Jos\u00e9", "Jos\u00e8"} <= set(rows["member_id"]) and rows["member_id"].n_unique() == 4
    raw, rejects = ig.read_tables_with_rejects([titles], encoding="ISO-8859-1", source="catalog")
    catalog, cq = ig.ingest_catalog(raw, read_rejects=rejects)
    assert cq.height == 0 and catalog["title"].to_list() == ["Am\u00e9lie", "Am\u00e8lie", "Heat"]

    raw, rejects = ig.read_tables_with_rejects([titles], source="catalog")
    catalog, cq = ig.ingest_catalog(raw, read_rejects=rejects)
    assert catalog["title"].to_list() == ["Heat"] and cq["reason"].to_list() == ["encoding_error"] * 2
    assert "CATALOG_ENCODING" in cq["detail"][0] and (cq["source"] == "catalog").all()


def test_an_unknown_encoding_name_fails_before_reading_with_the_setting_named(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(LATIN1_TITLES)
    with pytest.raises(ValueError, match=r"CATALOG_ENCODING='latin-9x': unknown encoding"):
        ig.read_tables_with_rejects([path], encoding="latin-9x", source="catalog")
    with pytest.raises(ValueError, match=r"unknown encoding 'nope'"):
        ig.read_tables([path], encoding="nope")


def test_utf16_and_a_byte_order_mark_are_read(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(LATIN1_TITLES.encode("utf-16"))
    raw, rejects = ig.read_tables_with_rejects([path], encoding="utf-16")
    assert rejects.height == 0 and raw.columns == ["title_id", "title"] and raw["title"][0] == "Am\u00e9lie"
    path.write_bytes(b"\xef\xbb\xbf" + LATIN1_TITLES.encode("utf-8"))
    raw, _ = ig.read_tables_with_rejects([path])
    assert raw.columns == ["title_id", "title"]
    raw, _ = ig.read_tables_with_rejects([path], encoding="cp1252")  # the mark wins over the setting
    assert raw.columns == ["title_id", "title"] and raw["title"][0] == "Am\u00e9lie", "not mojibake (AmÃ©lie)"
    path.write_bytes(b"\xef\xbb\xbf" + LATIN1_TITLES.encode("utf-8") + b"T4,Caf\xe9\n")  # BOM and the slow path
    raw, rejects = ig.read_tables_with_rejects([path])
    assert raw.columns == ["title_id", "title"] and raw.height == 3 and rejects.height == 1


def test_a_ragged_row_is_quarantined_with_file_and_line_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "member_id,title_id,ts,event\n"
        "ana,T1,2026-01-01T08:00:00Z,play\n"
        "bo,T1,2026-01-01T09:00:00Z,play,4.5,extra\n"  # more fields than the header
        'cy,T2,2026-01-01T10:00:00Z,"play"\n'
        "di,T3,2026-01-01T11:00:00Z,play,\n"  # a trailing delimiter: nothing to lose, kept
        "ed,T3\n"  # fewer fields: missing values are null (then the row's own rules apply)
        'fy,"T2 with a ""quote""",2026-01-01T12:00:00Z,play\n'
        'gu,12" vinyl,2026-01-01T12:00:00Z,play\n'  # a bare quote inside a value: kept as written
    )
    raw, rejects = ig.read_tables_with_rejects([path], source="interactions")
    assert raw["member_id"].to_list() == ["ana", "cy", "di", "ed", "fy", "gu"]
    assert raw.filter(pl.col("member_id") == "gu")["title_id"].to_list() == ['12" vinyl']
    assert rejects["reason"].to_list() == ["ragged_row"]
    assert rejects["detail"][0].startswith(f"{path}:3: the row has 6 fields but the header has 4")
    assert json.loads(rejects["payload"][0])["__extra_fields"] == ["4.5", "extra"]
    _, q, stats = ig.ingest_interactions(raw, None, DAY, KNOWN, per_day_files=True, read_rejects=rejects)
    assert stats["rows_in"] == 7 == stats["rows_out"] + stats["quarantined"]
    assert sorted(q["reason"].to_list()) == ["bad_timestamp", "ragged_row", "unknown_title", "unknown_title"]


def test_an_unterminated_quote_costs_one_line_not_the_rest_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "titles.csv"
    path.write_text('title_id,title\nT1,Heat\nT2,"Ronin\nT3,Alien\nT4,"Up" and away\nT5,Brazil\n')
    raw, rejects = ig.read_tables_with_rejects([path], source="catalog")
    assert raw["title_id"].to_list() == ["T1", "T3", "T5"]
    assert rejects["reason"].to_list() == ["malformed_row", "malformed_row"]
    assert [d.split(": ")[0] for d in rejects["detail"]] == [f"{path}:3", f"{path}:5"]
    assert json.loads(rejects["payload"][0]) == {"line": 'T2,"Ronin'}


def test_files_no_row_can_survive_fail_with_the_file_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.csv is empty \(no header row\)"):
        ig.read_tables_with_rejects([empty])
    header = tmp_path / "header.csv"
    header.write_bytes(b"title_id,t\xeftle\nT1,Heat\n")
    with pytest.raises(ValueError, match=r"header\.csv:1: the header row is not valid utf-8.*encoding"):
        ig.read_tables_with_rejects([header])
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"cannot read .*broken\.parquet as Parquet"):
        ig.read_tables_with_rejects([broken])


def test_parquet_values_that_are_not_one_readable_value_are_quarantined_per_row(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pl.DataFrame(
        {
            "member_id": pl.Series([b"ana", b"Jos\xe9", b"bo", b"cy"], dtype=pl.Binary),
            "title_id": ["T1", "T1", "T2", "T3"],
            "ts": ["2026-01-01T08:00:00Z"] * 4,
            "value": [None, None, [1.0], None],
            "blob": pl.Series([b"\xff", None, None, b"ok"], dtype=pl.Binary),  # unmapped: payload only
        }
    ).write_parquet(path)
    raw, rejects = ig.read_tables_with_rejects([path])
    assert rejects.height == 0
    rows, q, stats = ig.ingest_interactions(raw, None, DAY, KNOWN, per_day_files=True)
    _invariant(raw, rows, q, stats)
    assert rows["member_id"].to_list() == ["ana", "cy"]
    assert q["reason"].to_list() == ["encoding_error", "bad_type"]
    assert "column 'member_id' holds bytes that are not valid UTF-8" in q["detail"][0]
    assert "column 'value' holds List(Float64) values" in q["detail"][1]
    assert json.loads(q["payload"][0])["member_id"] == "Jos\\xe9"
    assert json.loads(q["payload"][1])["value"] == "[1.0]"


def test_parquet_catalog_with_huge_nested_and_non_finite_values_never_crashes() -> None:
    df = pl.DataFrame(
        {
            "title_id": [1.0, 1e300, float("inf"), 7.0],
            "title": ["A", "B", "C", "D"],
            "genres": [["Drama"], ["x", "y"], None, []],
            "year": [1999.0, float("nan"), 1e30, None],
            "synopsis": [{"a": 1}, None, None, None],
        }
    )
    rows, q = ig.ingest_catalog(df)
    assert rows["title_id"].to_list() == ["1e+300", "inf", "7"], "a huge id keeps its spelling, not null"
    assert q.filter(pl.col("reason") == "bad_type")["detail"].to_list() == [
        "column 'synopsis' holds Struct({'a': Int64}) values; expected text, a number or a date"
    ]
    assert sorted(q["reason"].to_list()) == ["bad_type", "bad_year", "bad_year"]


def test_raw_quarantine_payloads_are_capped_with_the_original_length_kept(tmp_path: Path) -> None:
    from core.schemas import QUARANTINE_PAYLOAD_MAX_CHARS as CAP

    huge = "x" * (2 * CAP)
    path = tmp_path / "titles.csv"
    path.write_text(f"title_id,title\n,{huge}\nT1,Heat\nT2,Ronin,{huge}\n")
    raw, rejects = ig.read_tables_with_rejects([path], source="catalog")
    rows, q = ig.ingest_catalog(raw, read_rejects=rejects)
    assert rows["title_id"].to_list() == ["T1"]
    assert q["reason"].to_list() == ["ragged_row", "null_title_id"]
    assert q["payload_truncated"].to_list() == [True, True]
    assert (q["payload"].str.len_chars() == CAP).all() and (q["payload_chars"] > 2 * CAP).all()
    _, small = ig.ingest_catalog(pl.DataFrame({"title_id": [None], "title": ["Heat"]}))
    assert small["payload_truncated"].to_list() == [False]
    assert small["payload_chars"].to_list() == [len(small["payload"][0])]


# ------------------------------------------------------------ files swapped after the listing


def _returns_promptly(fn) -> BaseException | None:
    """Run ``fn`` in a thread and return what it raised (None: it returned); fail if it is still blocked after 60 s.

    60 s is a guard against hanging the suite, not a timing assertion: the read returns at once or never. A
    blocked open of a FIFO is released afterwards by opening the FIFO's write end once (the reader then sees EOF).
    """
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:  # handed to the test, which asserts on it
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=60)
    return outcome[0] if outcome else pytest.fail("the read blocked on a file that is not a regular file")


def _release_blocked_reader(fifo: Path) -> None:
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("name", ["events.csv", "events.tsv", "events.csv.gz", "events.parquet"])
@pytest.mark.parametrize("under_landing_root", [True, False])
def test_a_file_swapped_for_a_fifo_after_listing_is_refused_at_once(
    tmp_path: Path, name: str, under_landing_root: bool
) -> None:
    """The listing saw a regular file; by the time it is read a FIFO (no writer) lies there. Never block on it."""
    fifo = tmp_path / "landing" / "interactions" / "day=2026-01-01" / name
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    root = tmp_path / "landing" if under_landing_root else None
    try:
        error = _returns_promptly(lambda: ig.read_tables_with_rejects([fifo], source="interactions", landing_root=root))
    finally:
        _release_blocked_reader(fifo)
    assert isinstance(error, ValueError), error
    assert str(fifo) in str(error) and "not a regular file" in str(error)


def test_a_symlink_is_followed_only_outside_the_landing_root(tmp_path: Path) -> None:
    """Under the landing root a symlink (e.g. swapped in after listing) is refused; an operator's glob elsewhere
    may point through links."""
    secret = tmp_path / "secret.csv"
    secret.write_text("member_id,title_id\nroot,T1\n")
    link = tmp_path / "landing" / "interactions" / "day=2026-01-01" / "events.csv"
    link.parent.mkdir(parents=True)
    link.symlink_to(secret)
    with pytest.raises(ValueError, match=rf"{re.escape(str(link))}.*symbolic link"):
        ig.read_tables_with_rejects([link], landing_root=tmp_path / "landing")
    parquet = tmp_path / "landing" / "part.parquet"
    pl.DataFrame({"member_id": ["ana"]}).write_parquet(tmp_path / "real.parquet")
    parquet.symlink_to(tmp_path / "real.parquet")
    with pytest.raises(ValueError, match=r"part\.parquet.*symbolic link"):
        ig.read_tables_with_rejects([parquet], landing_root=tmp_path / "landing")
    raw, _ = ig.read_tables_with_rejects([link, parquet], landing_root=tmp_path / "elsewhere")
    assert raw["member_id"].to_list() == ["root", "ana"]


def test_header_names_with_stray_spaces_still_match_the_mapping(tmp_path: Path) -> None:
    movies = tmp_path / "movies.csv"
    movies.write_text("movieId, title ,genres \n1,Heat (1995),Action|Crime\n2,Up (2009),Animation\n")
    raw, rejects = ig.read_tables_with_rejects([movies], source="catalog")
    catalog, _ = ig.ingest_catalog(raw, ML_CATALOG, read_rejects=rejects)
    assert catalog.sort("title_id")["genres"].to_list() == [["Action", "Crime"], ["Animation"]]


def test_two_headers_equal_once_trimmed_are_an_error_naming_both(tmp_path: Path) -> None:
    movies = tmp_path / "movies.csv"
    movies.write_text("movieId,genres,genres \n1,Drama,Comedy\n")
    with pytest.raises(ValueError, match=r"movies\.csv: columns 'genres' and 'genres '"):
        ig.read_tables_with_rejects([movies], source="catalog")
