"""The raw assets on hostile input: a bad record is a quarantine row with its file and line, never a
failed load; what no record can survive fails once, without the retry policy repeating it."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from assets.catalog import raw_catalog, raw_interactions
from assets.conversations import curated_conversations
from resources.landing import LandingArea
from resources.warehouse import TABLES, Warehouse, create_table_sql

DAY = "2026-01-01"
ASSETS = [raw_catalog, raw_interactions, curated_conversations]
TITLES = "title_id,title\nT1,Heat\nT2,Ronin\nT3,Alien\n"
EVENTS = (
    "member_id,title_id,ts,event\n"
    "ana,T1,2026-01-01T08:00:00Z,play\n"
    "Jos\u00e9,T1,2026-01-01T09:00:00Z,play\n"
    "Jos\u00e8,T2,2026-01-01T10:00:00Z,play\n"
    "bo,T3,2026-01-01T11:00:00Z,play,4,oops\n"  # ragged: more fields than the header
    "cy,T3,2026-01-01T12:00:00Z,play\n"
)


def _files_landing(home: Path, **kw: str) -> LandingArea:
    (home / "landing").mkdir(exist_ok=True)
    return LandingArea(
        root=str(home / "landing"),
        source="files",
        catalog_files=str(home / "titles.csv"),
        interaction_files=str(home / "events-{day}.csv"),
        **kw,
    )


def _run(home: Path, landing: LandingArea, selection: list[str], partition: str | None = None):
    resources = {"warehouse": Warehouse(path=str(home / "w.duckdb")), "landing": landing}
    return dg.materialize(
        ASSETS,
        selection=selection,
        partition_key=partition,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def _failure(result: dg.ExecuteInProcessResult) -> tuple[str, int]:
    """(the step failure's message, how many times the step was sent back for a retry).

    Also asserts the step raised a ``dg.Failure`` (it carries user failure data): a plain exception
    would be retried by a RetryPolicy, and a run-level retry setting could change that at any time.
    """
    failures = result.get_step_failure_events()
    assert len(failures) == 1
    data = failures[0].step_failure_data
    assert data.user_failure_data is not None, f"not a dg.Failure: {data.error.cls_name}"
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    return data.error.message, len(retries)


@pytest.mark.parametrize(("encoding", "kept"), [("utf-8", {"ana", "cy"}), ("latin-1", {"ana", "cy", "José", "Josè"})])
def test_bad_lines_are_quarantined_with_file_and_line_and_the_day_still_loads(
    tmp_path: Path, encoding: str, kept: set[str]
) -> None:
    (tmp_path / "titles.csv").write_text(TITLES)
    events = tmp_path / f"events-{DAY}.csv"
    events.write_bytes(EVENTS.encode("latin-1"))
    landing = _files_landing(tmp_path, interaction_encoding=encoding)
    assert _run(tmp_path, landing, ["raw_catalog"]).success
    result = _run(tmp_path, landing, ["raw_interactions"], DAY)
    assert result.success

    wh = Warehouse(path=str(tmp_path / "w.duckdb"))
    assert set(wh.read_table("raw.interactions")["member_id"]) == kept
    q = wh.read_table("raw.quarantine", "source = 'interactions'")
    expected = {f"{events}:5": "ragged_row"}
    if encoding == "utf-8":
        expected |= {f"{events}:3": "encoding_error", f"{events}:4": "encoding_error"}
    assert {d.split(": ")[0]: r for r, d in q.select("reason", "detail").iter_rows()} == expected
    assert q["payload_truncated"].to_list() == [False] * q.height
    meta = result.asset_materializations_for_node("raw_interactions")[0].metadata
    assert meta["unreadable_records"].value == len(expected) and meta["encoding"].value == encoding


def test_an_undecodable_header_fails_once_naming_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "titles.csv").write_bytes("title_id,t\u00eftle\nT1,Heat\n".encode("latin-1"))
    result = _run(tmp_path, _files_landing(tmp_path), ["raw_catalog"])
    assert not result.success
    message, retries = _failure(result)
    assert f"{tmp_path / 'titles.csv'}:1: the header row is not valid utf-8" in message
    assert "CATALOG_ENCODING" in message and retries == 0


def test_an_empty_catalog_is_a_permanent_error_and_is_not_retried(tmp_path: Path) -> None:
    (tmp_path / f"events-{DAY}.csv").write_text(EVENTS.split("\n", 1)[0] + "\n")
    result = _run(tmp_path, _files_landing(tmp_path), ["raw_interactions"], DAY)
    assert not result.success
    message, retries = _failure(result)
    assert "raw.catalog is empty: materialize raw_catalog" in message
    assert retries == 0, "the retry policy must not repeat an error only the user can fix"


def test_the_turn_cap_reaches_curation_from_the_run_config(tmp_path: Path) -> None:
    (tmp_path / "titles.csv").write_text(TITLES)
    (tmp_path / f"events-{DAY}.csv").write_text(EVENTS)
    drop = tmp_path / "landing" / "conversations" / f"day={DAY}"
    drop.mkdir(parents=True)
    turns = [{"role": r, "content": f"turn {i}"} for i in range(6) for r in ("user", "assistant")]
    (drop / "long.jsonl").write_text(json.dumps({"messages": turns}) + "\n")
    landing = _files_landing(tmp_path)
    assert _run(tmp_path, landing, ["raw_catalog"]).success
    assert _run(tmp_path, landing, ["raw_interactions"], DAY).success
    resources = {"warehouse": Warehouse(path=str(tmp_path / "w.duckdb")), "landing": landing}
    config = {"ops": {"curated_conversations": {"config": {"max_turns": 10}}}}
    result = dg.materialize(
        ASSETS, selection=["curated_conversations"], partition_key=DAY, resources=resources, run_config=config
    )
    assert result.success
    q = Warehouse(path=str(tmp_path / "w.duckdb")).read_table("curated.quarantine")
    assert q.filter(q["reason"] == "too_many_turns")["detail"].to_list() == [
        "conversation has 12 messages, over max_turns=10; split it into shorter conversations"
    ]


def test_a_missing_files_setting_is_a_permanent_error(tmp_path: Path) -> None:
    landing = LandingArea(root=str(tmp_path), source="files", catalog_files="", interaction_files="")
    result = _run(tmp_path, landing, ["raw_interactions"], DAY)
    message, retries = _failure(result)
    assert "INTERACTION_FILES is not set" in message and retries == 0


# ------------------------------------------------------------------ one transaction per asset write


def _refuse_every_raw_quarantine_row(wh: Warehouse) -> None:
    """Recreate raw.quarantine so the database itself rejects every row: a failure mid-transaction."""
    with wh.connect() as con:
        con.execute("DROP TABLE raw.quarantine")
        ddl = create_table_sql("raw.quarantine", TABLES["raw.quarantine"])
        con.execute(ddl[:-1] + ", CHECK (reason IS NULL))")


def test_a_failed_quarantine_write_leaves_the_catalog_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "titles.csv").write_text(TITLES)
    landing = _files_landing(tmp_path)
    assert _run(tmp_path, landing, ["raw_catalog"]).success
    wh = Warehouse(path=str(tmp_path / "w.duckdb"))
    before = wh.read_table("raw.catalog")["title_id"].sort().to_list()
    (tmp_path / "titles.csv").write_text(TITLES + "T4,Brazil\n,no id\n")  # a new title, and a row to quarantine
    _refuse_every_raw_quarantine_row(wh)
    with dg.build_asset_context() as context, pytest.raises(duckdb.ConstraintException):
        raw_catalog(context, warehouse=wh, landing=landing)
    assert wh.read_table("raw.catalog")["title_id"].sort().to_list() == before == ["T1", "T2", "T3"]


@pytest.mark.parametrize("pattern", ["events-{day}.csv", "events-*.csv"], ids=["per_day", "undated_quarantine"])
def test_a_failed_quarantine_write_leaves_the_days_events_as_they_were(tmp_path: Path, pattern: str) -> None:
    """Events, the day's quarantine and (without {day} in the glob) the undated quarantine: all or none."""
    (tmp_path / "titles.csv").write_text(TITLES)
    events = tmp_path / f"events-{DAY}.csv"
    events.write_text(EVENTS)
    landing = _files_landing(tmp_path)
    landing = LandingArea(**{**landing.model_dump(), "interaction_files": str(tmp_path / pattern)})
    assert _run(tmp_path, landing, ["raw_catalog"]).success
    assert _run(tmp_path, landing, ["raw_interactions"], DAY).success
    wh = Warehouse(path=str(tmp_path / "w.duckdb"))
    before = wh.read_table("raw.interactions")["member_id"].sort().to_list()
    # A new event, and one quarantine row: dated with a per-day file, undated (day NULL) with a many-day glob.
    events.write_text(EVENTS.split("\n", 1)[0] + "\ndee,T2,2026-01-01T13:00:00Z,play\nbad,T2,not a time,play\n")
    _refuse_every_raw_quarantine_row(wh)
    with dg.build_asset_context(partition_key=DAY) as context, pytest.raises(duckdb.ConstraintException):
        raw_interactions(context, warehouse=wh, landing=landing)
    assert wh.read_table("raw.interactions")["member_id"].sort().to_list() == before
    assert sorted(before) == sorted(["ana", "Jos\u00e9", "Jos\u00e8", "cy"])


# ------------------------------------------------------------------ ignored landing entries in metadata


def test_entries_the_landing_rules_leave_out_are_listed_in_raw_interactions_metadata(tmp_path: Path) -> None:
    landing = LandingArea(root=str(tmp_path / "landing"), synthetic_titles=60, synthetic_members=80)
    assert _run(tmp_path, landing, ["raw_catalog"]).success
    drop = tmp_path / "landing" / "interactions" / f"day={DAY}"
    drop.mkdir(parents=True)
    (drop / "notes.txt").write_text("not data")
    (drop / "nested").mkdir()
    (tmp_path / "elsewhere.csv").write_text("member_id\n")
    (drop / "linked.csv").symlink_to(tmp_path / "elsewhere.csv")
    result = _run(tmp_path, landing, ["raw_interactions"], DAY)
    assert result.success
    meta = result.asset_materializations_for_node("raw_interactions")[0].metadata
    prefix = f"interactions/day={DAY}"
    assert meta["ignored_files"].value == [
        {"file": f"{prefix}/linked.csv", "reason": "symlink"},
        {"file": f"{prefix}/nested", "reason": "nested_directory"},
        {"file": f"{prefix}/notes.txt", "reason": "unsupported_suffix"},
    ]


def test_a_files_glob_into_the_landing_area_reports_what_it_leaves_out(tmp_path: Path) -> None:
    (tmp_path / "titles.csv").write_text(TITLES)
    drop = tmp_path / "landing" / "partner" / f"day={DAY}"
    drop.mkdir(parents=True)
    (drop / "events.csv").write_text(EVENTS)
    (drop / "events.json").write_text("{}")
    (drop / "copy.csv").symlink_to(drop / "events.csv")
    landing = _files_landing(tmp_path)
    landing = LandingArea(**{**landing.model_dump(), "interaction_files": str(tmp_path / "landing/partner/day={day}")})
    assert _run(tmp_path, landing, ["raw_catalog"]).success
    result = _run(tmp_path, landing, ["raw_interactions"], DAY)
    assert result.success
    meta = result.asset_materializations_for_node("raw_interactions")[0].metadata
    assert meta["files"].value == [str(drop / "events.csv")]
    assert meta["ignored_files"].value == [
        {"file": f"partner/day={DAY}/copy.csv", "reason": "symlink"},
        {"file": f"partner/day={DAY}/events.json", "reason": "unsupported_suffix"},
    ]


def test_an_events_file_swapped_for_a_symlink_after_listing_fails_once_and_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race between the landing listing and the read: the asset opens the listed path without following it."""
    landing = LandingArea(root=str(tmp_path / "landing"), synthetic_titles=60, synthetic_members=80)
    assert _run(tmp_path, landing, ["raw_catalog"]).success
    secret = tmp_path / "secret.parquet"  # readable, so following the link would load it
    listed = LandingArea.interaction_paths

    def list_then_swap(self: LandingArea, day, log=None):
        paths, per_day = listed(self, day, log)
        pl.read_parquet(paths[0]).with_columns(member_id=pl.lit("root")).write_parquet(secret)
        paths[0].unlink()
        paths[0].symlink_to(secret)  # after the listing accepted it as a regular file
        return paths, per_day

    monkeypatch.setattr(LandingArea, "interaction_paths", list_then_swap)
    wh = Warehouse(path=str(tmp_path / "w.duckdb"))
    with dg.build_asset_context(partition_key=DAY) as context, pytest.raises(dg.Failure) as failure:
        raw_interactions(context, warehouse=wh, landing=landing)
    assert "events.parquet: it became a symbolic link" in failure.value.description
    assert failure.value.allow_retries is False
    assert "root" not in wh.read_table("raw.interactions")["member_id"].to_list()
