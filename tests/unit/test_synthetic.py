"""The synthetic source: deterministic bytes, production-like skew, broken rows, landing layout, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from core import synthetic as syn
from core.schemas import CATALOG_SCHEMA, INTERACTION_EVENTS
from core.settings import SYNTHETIC_DEFAULTS
from core.synthetic.world import build_world

CFG = syn.SyntheticConfig()
DAY = CFG.start_day
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def week() -> pl.DataFrame:
    return pl.concat([syn.generate_interactions(CFG, d) for d in syn.config_days(CFG)])


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- determinism


def test_same_config_and_day_give_the_same_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        build_world.cache_clear()  # regenerate the world too, not just reuse the cache
        syn.write_catalog(tmp_path / name, CFG)
        syn.write_drop(tmp_path / name, CFG, DAY)
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert set(a) == {
        "catalog/catalog.parquet",
        f"interactions/day={DAY}/events.parquet",
        f"conversations/day={DAY}/external.jsonl",
    }
    assert a == b


def test_generated_content_is_pinned() -> None:
    """A digest of one small world's catalog, day of events and partner chats: any change to what a config
    generates (an extra random draw, a reordered stream) shows here, since the demo's counts and every stored
    landing drop depend on it. Last changed on purpose when members' tastes gained an era and titles their
    genre's words (recommendation quality), and again when plays outside a member's taste were abandoned or
    rated low more often (preference pairs)."""
    cfg = syn.SyntheticConfig(seed=3, n_titles=60, n_members=80)
    day = date(2026, 1, 2)
    digest = hashlib.sha256()
    digest.update(syn.generate_catalog(cfg).write_csv().encode())
    digest.update(syn.generate_interactions(cfg, day).write_csv().encode())
    digest.update("\n".join(syn.generate_external_conversations(cfg, day)).encode())
    assert digest.hexdigest() == "ccbc731a6c1cbe115d5507a6eacc86bb584c3afcc20d262037d84b37b9c57f0a"


def test_config_defaults_are_the_platform_settings_defaults() -> None:
    assert (CFG.seed, CFG.n_titles, CFG.n_members, CFG.start_day, CFG.days) == (
        SYNTHETIC_DEFAULTS.seed,
        SYNTHETIC_DEFAULTS.titles,
        SYNTHETIC_DEFAULTS.members,
        SYNTHETIC_DEFAULTS.start,
        SYNTHETIC_DEFAULTS.days,
    )


def test_a_day_does_not_depend_on_which_days_were_generated_before() -> None:
    d1, d3 = DAY, DAY + timedelta(days=2)
    build_world.cache_clear()
    alone = syn.generate_interactions(CFG, d3)
    build_world.cache_clear()
    syn.generate_interactions(CFG, d1)
    after_other = syn.generate_interactions(CFG, d3)
    assert alone.equals(after_other)
    assert syn.generate_external_conversations(CFG, d3) == syn.generate_external_conversations(CFG, d3)
    # Different days and different seeds really differ.
    assert not alone.equals(syn.generate_interactions(CFG, d1))
    other_seed = syn.SyntheticConfig(seed=CFG.seed + 1)
    assert not syn.generate_catalog(other_seed).equals(syn.generate_catalog(CFG))


# ---------------------------------------------------------------------- catalog


def test_catalog_matches_the_landing_contract() -> None:
    cat = syn.generate_catalog(CFG)
    assert cat.columns == list(CATALOG_SCHEMA)
    expected = {**CATALOG_SCHEMA, "genres": pl.String}
    assert dict(cat.schema) == expected
    assert cat.height == CFG.n_titles
    assert cat["title_id"].n_unique() == CFG.n_titles
    assert cat["title"].n_unique() == CFG.n_titles, "repeated names become sequels ('... II')"
    assert all(re.fullmatch(r"[A-Z][A-Za-z' -]+( [IVX]+)?", t) for t in cat["title"].to_list())
    assert cat.filter(pl.col("title").str.starts_with("The ")).height > CFG.n_titles // 4
    assert set(cat["kind"].unique()) == {"movie", "series"}
    genres = cat["genres"].str.split("|")
    assert genres.list.len().is_between(1, 3).all()
    assert set(genres.explode().unique()) == set(syn.GENRES)
    assert cat["year"].is_between(1950, 2026).all()
    assert cat["year"].median() > 2000, "recent titles dominate a streaming catalog"
    assert set(cat["language"].unique()) <= set(syn.LANGUAGES)
    movies = cat.filter(pl.col("kind") == "movie")
    series = cat.filter(pl.col("kind") == "series")
    assert set(movies["maturity"].unique()) <= set(syn.MOVIE_RATINGS)
    assert set(series["maturity"].unique()) <= set(syn.SERIES_RATINGS)
    assert cat.null_count().sum_horizontal().item() == 0


def test_synopses_are_length_skewed_prose() -> None:
    syn_text = syn.generate_catalog(CFG)["synopsis"]
    words = syn_text.str.split(" ").list.len().to_numpy()
    assert words.min() >= 5 and words.max() <= 400
    median, mean = np.median(words), words.mean()
    assert mean > 1.2 * median, "right-skewed: the mean sits above the median"
    assert np.percentile(words, 99) > 4 * median, "a long tail of long synopses"
    assert (words <= 2 * median).mean() > 0.6, "most synopses are short"
    sample = syn_text[0]
    assert sample[0].isupper() and sample.endswith(".")
    assert all(s[0].isupper() and s.endswith(".") for s in syn_text.to_list())


# ----------------------------------------------------------------- interactions


def test_interactions_landing_columns_and_value_ranges() -> None:
    df = syn.generate_interactions(CFG, DAY)
    assert df.columns == ["member_id", "title_id", "ts", "event", "value"]
    assert df.schema["ts"] == pl.String and df.schema["value"] == pl.Float64
    good = df.filter(
        pl.col("member_id").is_not_null()
        & pl.col("title_id").str.starts_with("T")
        & pl.col("ts").str.starts_with(DAY.isoformat())
        & pl.col("event").is_in(list(INTERACTION_EVENTS))
    )
    assert good.height > 0.98 * df.height
    assert set(good["event"].unique()) == set(INTERACTION_EVENTS)
    ts = good["ts"].str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_zone="UTC")
    assert (ts.dt.date() == DAY).all()
    assert ts.is_sorted()
    complete = good.filter(pl.col("event") == "complete")["value"]
    assert complete.is_between(0, 1).all() and complete.null_count() == 0
    rate = good.filter(pl.col("event") == "rate", pl.col("value") <= 5)["value"]
    assert set(rate.unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert good.filter(pl.col("event").is_in(["play", "search"]))["value"].null_count() == (
        good.filter(pl.col("event").is_in(["play", "search"])).height
    )


def test_injected_bad_rows_exist_with_every_defect() -> None:
    df = syn.generate_interactions(CFG, DAY)
    n_bad = -(-df.height * CFG.bad_row_rate // 1)
    assert n_bad >= len(syn.INJECTED_DEFECTS)
    assert df["member_id"].null_count() >= 1
    assert df["title_id"].null_count() >= 1
    assert df.filter(pl.col("title_id").str.starts_with("U")).height >= 1  # not in the catalog
    parsed = df["ts"].str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_zone="UTC", strict=False)
    assert parsed.is_null().sum() >= 1  # unparsable
    assert (parsed.dt.date() < DAY).sum() >= 1  # late event stamped on the previous day
    assert (df["event"] == "pause").sum() >= 1
    assert (df["value"] > 5).sum() >= 1
    # Exact re-deliveries exist too (ingestion collapses them).
    assert df.is_duplicated().sum() >= 2
    none = syn.generate_interactions(syn.SyntheticConfig(bad_row_rate=0.0, duplicate_event_rate=0.0), DAY)
    assert none["member_id"].null_count() == 0 and not none.is_duplicated().any()


def test_title_popularity_is_zipf_like(week: pl.DataFrame) -> None:
    plays = week.filter(pl.col("event") == "play", pl.col("title_id").str.starts_with("T"))
    counts = plays["title_id"].value_counts(sort=True)["count"].to_numpy()
    top = CFG.n_titles // 100
    # Tastes spread plays over every genre, so the head is less dominant than a pure popularity world (> 0.3).
    assert counts[:top].sum() / counts.sum() > 0.2, "top 1% of titles take a large share of plays"
    ranks = np.arange(1, 201)
    slope = np.polyfit(np.log(ranks), np.log(counts[:200]), 1)[0]
    assert -1.6 < slope < -0.6, f"rank/frequency is roughly a power law, slope {slope:.2f}"
    assert len(counts) < CFG.n_titles, "a long tail of titles nobody played this week"


def test_member_activity_is_heavy_tailed(week: pl.DataFrame) -> None:
    day = syn.generate_interactions(CFG, DAY).drop_nulls("member_id")
    per_member = day["member_id"].value_counts()["count"].to_numpy()
    assert len(per_member) < 0.5 * CFG.n_members, "most members are inactive on a given day"
    assert 0.6 * CFG.mean_events_per_active_member < per_member.mean() < 1.6 * CFG.mean_events_per_active_member
    assert per_member.max() >= 5 * np.median(per_member)
    weekly = week.drop_nulls("member_id")["member_id"].value_counts()["count"].to_numpy()
    top_decile = np.sort(weekly)[::-1][: len(weekly) // 10]
    assert top_decile.sum() / weekly.sum() > 0.3, "a few very active members make many of the events"
    assert weekly.max() > 15 * np.median(weekly)


def test_plays_follow_member_taste(week: pl.DataFrame) -> None:
    """A member's favourite genre from six days predicts the seventh day's plays."""
    genres = syn.generate_catalog(CFG).select("title_id", pl.col("genres").str.split("|").alias("gl"))
    plays = (
        week.filter(pl.col("event") == "play")
        .drop_nulls(["member_id", "title_id"])
        .join(genres, on="title_id")
        .with_columns(pl.col("ts").str.slice(0, 10).alias("d"))
    )
    last = syn.config_days(CFG)[-1].isoformat()
    hist = plays.filter(pl.col("d") != last).explode("gl")
    fav = (
        hist.group_by("member_id", "gl")
        .len()
        .sort(["member_id", "len", "gl"], descending=[False, True, False])
        .group_by("member_id")
        .first()
        .select("member_id", pl.col("gl").alias("fav"))
    )
    top_global = hist["gl"].value_counts(sort=True)["gl"][0]
    test = plays.filter(pl.col("d") == last).join(fav, on="member_id")
    personal = test.select(pl.col("gl").list.contains(pl.col("fav")).mean()).item()
    popular = test.select(pl.col("gl").list.contains(pl.lit(top_global)).mean()).item()
    assert personal > popular + 0.1, (personal, popular)


def test_plays_lean_towards_the_members_era(week: pl.DataFrame) -> None:
    """Release years a history shows predict the next titles' years: a taste a model can read from the prompt."""
    years = syn.generate_catalog(CFG).select("title_id", "year")
    plays = (
        week.filter(pl.col("event") == "play")
        .drop_nulls(["member_id", "title_id"])
        .join(years, on="title_id")
        .with_columns(pl.col("ts").str.slice(0, 10).alias("d"))
    )
    last = syn.config_days(CFG)[-1].isoformat()
    era = plays.filter(pl.col("d") != last).group_by("member_id").agg(pl.col("year").median().alias("era"))
    test = plays.filter(pl.col("d") == last).join(era, on="member_id")
    personal = test.select((pl.col("year") - pl.col("era")).abs().median()).item()
    overall = test.select((pl.col("year") - plays["year"].median()).abs().median()).item()
    assert personal < 0.8 * overall, (personal, overall)


def test_generation_is_fast_and_scales() -> None:
    start = time.perf_counter()
    syn.generate_interactions(CFG, DAY + timedelta(days=30))
    assert time.perf_counter() - start < 1.0
    big = syn.SyntheticConfig(n_titles=5000, n_members=150_000)
    start = time.perf_counter()
    df = syn.generate_interactions(big, DAY)
    assert df.height > 100_000
    assert time.perf_counter() - start < 10.0


# ------------------------------------------------------------ external chats


def test_external_conversations_are_mostly_valid_with_each_defect() -> None:
    lines = syn.generate_external_conversations(CFG, DAY)
    assert len(lines) == CFG.external_conversations_per_day
    assert all("\n" not in line for line in lines)
    parsed = []
    invalid = 0
    for line in lines:
        try:
            parsed.append(json.loads(line)["messages"])
        except json.JSONDecodeError:
            invalid += 1
    assert invalid >= 1
    roles_ok = [all(t["role"] in ("system", "user", "assistant") for t in m) for m in parsed]
    has_assistant = [any(t["role"] == "assistant" for t in m) for m in parsed]
    empty = [any(not t["content"].strip() for t in m) for m in parsed]
    text = [" ".join(t["content"] for t in m) for m in parsed]
    email = [bool(re.search(r"[\w.]+@[\w.]+\.\w+", s)) for s in text]
    phone = [bool(re.search(r"\+?\d[\d ]{8,}\d", s)) for s in text]
    assert not all(roles_ok) and not all(has_assistant) and any(empty) and any(email) and any(phone)
    clean = [
        ok and a and not e and not m and not p
        for ok, a, e, m, p in zip(roles_ok, has_assistant, empty, email, phone, strict=True)
    ]
    assert sum(clean) >= 0.8 * len(lines)
    assert syn.generate_external_conversations(syn.SyntheticConfig(external_conversations_per_day=0), DAY) == []


# ------------------------------------------------------------ writing & layout


def test_write_drop_layout_and_no_temp_files(tmp_path: Path) -> None:
    written = syn.write_drop(tmp_path, CFG, DAY)
    paths = syn.landing_paths(tmp_path, DAY)
    assert written == [paths["interactions"], paths["conversations"]]
    assert paths["interactions"] == tmp_path / "interactions" / f"day={DAY}" / "events.parquet"
    assert paths["conversations"] == tmp_path / "conversations" / f"day={DAY}" / "external.jsonl"
    assert not paths["catalog"].exists(), "write_drop is the day's data only"
    catalog = syn.write_catalog(tmp_path, CFG)
    assert catalog == tmp_path / "catalog" / "catalog.parquet"
    assert pl.read_parquet(paths["interactions"]).equals(syn.generate_interactions(CFG, DAY))
    assert paths["conversations"].read_text().splitlines() == syn.generate_external_conversations(CFG, DAY)
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = syn.write_catalog(tmp_path, CFG)
    before = target.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    import core.atomic_io

    monkeypatch.setattr(core.atomic_io.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        syn.write_catalog(tmp_path, syn.SyntheticConfig(seed=99))
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["catalog.parquet"]


def test_ensure_drop_writes_only_what_is_missing(tmp_path: Path) -> None:
    first = syn.ensure_drop(tmp_path, CFG, DAY)
    paths = syn.landing_paths(tmp_path, DAY)
    assert first == [paths["catalog"], paths["interactions"], paths["conversations"]]
    mtimes = {p: p.stat().st_mtime_ns for p in first}
    assert syn.ensure_drop(tmp_path, CFG, DAY) == []
    assert {p: p.stat().st_mtime_ns for p in first} == mtimes
    original = paths["interactions"].read_bytes()
    os.remove(paths["interactions"])
    assert syn.ensure_drop(tmp_path, CFG, DAY) == [paths["interactions"]]
    assert paths["interactions"].read_bytes() == original
    assert syn.existing_days(tmp_path) == [DAY]
    assert syn.next_day(tmp_path, CFG) == DAY + timedelta(days=1)


# ------------------------------------------------------------------------ CLI

SMALL = ["--n-titles", "200", "--n-members", "300"]


def test_cli_drops_the_next_day(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    landing = tmp_path / "landing"
    assert syn.main(["drop", "--landing", str(landing), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "catalog.parquet" in out and f"day={DAY}" in out
    assert syn.existing_days(landing) == [DAY]

    assert syn.main(["drop", "--landing", str(landing), *SMALL]) == 0
    out = capsys.readouterr().out
    assert f"day={DAY + timedelta(days=1)}" in out and "catalog.parquet" not in out

    assert syn.main(["drop", "--landing", str(landing), "--days", "2", *SMALL]) == 0
    assert syn.existing_days(landing) == [DAY + timedelta(days=i) for i in range(4)]
    capsys.readouterr()

    assert syn.main(["drop", "--landing", str(landing), "--day", str(DAY), *SMALL]) == 0
    assert "already present" in capsys.readouterr().out

    with pytest.raises(SystemExit):
        syn.main(["drop", "--landing", str(landing), "--day", "2026-02-30"])
    assert "not a date" in capsys.readouterr().err


def test_cli_runs_as_a_module(tmp_path: Path) -> None:
    day = date(2026, 3, 1)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "core.synthetic",
            "drop",
            "--landing",
            str(tmp_path),
            "--day",
            str(day),
            *SMALL,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"day={day}" in proc.stdout
    assert syn.landing_paths(tmp_path, day)["interactions"].exists()


def test_cli_defaults_are_the_environment_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make drop-day` passes no world flags: the CLI reads the same variables the assets' LandingArea does."""
    monkeypatch.setenv("SYNTHETIC_SEED", "3")
    monkeypatch.setenv("SYNTHETIC_TITLES", "60")
    monkeypatch.setenv("SYNTHETIC_MEMBERS", "80")
    monkeypatch.setenv("PLATFORM_PARTITION_START", "2026-02-01")
    assert syn.main(["drop", "--landing", str(tmp_path / "cli")]) == 0
    assert "day=2026-02-01" in capsys.readouterr().out
    expected = syn.SyntheticConfig(seed=3, n_titles=60, n_members=80, start_day=date(2026, 2, 1))
    syn.ensure_drop(tmp_path / "direct", expected, date(2026, 2, 1))
    assert _tree_bytes(tmp_path / "cli") == _tree_bytes(tmp_path / "direct")

    monkeypatch.setenv("SYNTHETIC_SEED", "seven")
    with pytest.raises(SystemExit):
        syn.main(["drop", "--landing", str(tmp_path / "cli")])
    assert "SYNTHETIC_SEED='seven'" in capsys.readouterr().err
