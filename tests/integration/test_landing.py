"""The landing area's file filter, shared by landing_sensor and curated_conversations.

Partners and sync jobs write the landing area, so what lies there is not trusted: symlinks are not
followed, FIFOs are not opened, and the sensor starts a run only for files an asset will read.
"""

import json
import logging
import os
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from core import synthetic
from core.atomic_io import new_version_id
from core.landing_files import LandingFileRefused, list_day_folder, open_landing_file, scan_root
from dagster_project.sensors import decide_landing, landing_sensor, scan_landing
from resources.artifacts import ArtifactStore
from resources.landing import LandingArea
from resources.warehouse import Warehouse

DAY = "2026-01-01"
SECRET = "root:x:0:0:secret-line-that-must-never-be-read:/root:/bin/bash"
CHAT = {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello, friend"}]}
UPPER_CHAT = {"messages": [{"role": "user", "content": "upper case file"}, {"role": "assistant", "content": "read"}]}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "landing").mkdir()
    (tmp_path / "artifacts").mkdir()
    return tmp_path


def _conversations(home: Path, day: str = DAY) -> Path:
    folder = home / "landing" / "conversations" / f"day={day}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _hostile_drop(home: Path) -> Path:
    """One accepted file per accepted spelling, and one of each thing that must not be read."""
    folder = _conversations(home)
    outside = home / "outside"
    outside.mkdir()
    (outside / "passwd").write_text(SECRET + "\n")
    (folder / "good.jsonl").write_text(json.dumps(CHAT) + "\n")
    (folder / "UPPER.JSONL").write_text(json.dumps(UPPER_CHAT) + "\n")
    (folder / "partner.jsonl").symlink_to(outside / "passwd")
    os.mkfifo(folder / "pipe.jsonl")
    (folder / "part.JSON").write_text(json.dumps(CHAT) + "\n")
    (folder / "nested").mkdir()
    (folder / "nested" / "deep.jsonl").write_text(json.dumps(CHAT) + "\n")
    (folder / ".tmp-incoming.jsonl").write_text("{partial")
    return folder


EXPECTED_IGNORED = {
    f"conversations/day={DAY}/partner.jsonl": "symlink",
    f"conversations/day={DAY}/pipe.jsonl": "not_regular_file",
    f"conversations/day={DAY}/part.JSON": "unsupported_suffix",
    f"conversations/day={DAY}/nested": "nested_directory",
    f"conversations/day={DAY}/.tmp-incoming.jsonl": "hidden_or_temporary",
}
EXPECTED_ACCEPTED = [f"conversations/day={DAY}/UPPER.JSONL", f"conversations/day={DAY}/good.jsonl"]


# ------------------------------------------------------------------------------------------ the filter


def test_the_listing_accepts_only_regular_files_with_a_read_suffix(home: Path) -> None:
    _hostile_drop(home)
    listing = list_day_folder(home / "landing", "conversations", DAY)
    assert [f.rel for f in listing.accepted] == EXPECTED_ACCEPTED
    assert {i.rel: i.reason for i in listing.ignored} == EXPECTED_IGNORED


def test_a_symlinked_day_folder_pointing_outside_the_root_is_not_read(home: Path) -> None:
    elsewhere = home / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.jsonl").write_text(json.dumps(CHAT) + "\n")
    (home / "landing" / "conversations").mkdir(parents=True)
    (home / "landing" / "conversations" / f"day={DAY}").symlink_to(elsewhere, target_is_directory=True)
    listing = list_day_folder(home / "landing", "conversations", DAY)
    assert listing.accepted == ()
    assert [(i.rel, i.reason) for i in listing.ignored] == [(f"conversations/day={DAY}", "symlink")]


def test_a_drop_folder_symlinked_out_of_the_root_is_outside_root(home: Path) -> None:
    elsewhere = home / "elsewhere"
    (elsewhere / f"day={DAY}").mkdir(parents=True)
    (elsewhere / f"day={DAY}" / "data.jsonl").write_text(json.dumps(CHAT) + "\n")
    (home / "landing" / "conversations").symlink_to(elsewhere, target_is_directory=True)
    listing = list_day_folder(home / "landing", "conversations", DAY)
    assert listing.accepted == ()
    assert [(i.rel, i.reason) for i in listing.ignored] == [(f"conversations/day={DAY}/data.jsonl", "outside_root")]


def test_files_outside_a_day_folder_are_reported_not_dropped_silently(home: Path) -> None:
    (home / "landing" / "conversations").mkdir(parents=True)
    (home / "landing" / "conversations" / "forgot-the-day.jsonl").write_text(json.dumps(CHAT) + "\n")
    scan = scan_root(home / "landing")
    assert scan.days == {}
    assert [(i.rel, i.reason) for i in scan.ignored] == [("conversations/forgot-the-day.jsonl", "outside_day_folder")]


def test_configured_globs_follow_the_landing_rules_inside_the_root_and_skip_fifos_everywhere(home: Path) -> None:
    inside = home / "landing" / "interactions" / f"day={DAY}"
    inside.mkdir(parents=True)
    (inside / "events.csv").write_text("member_id,title_id,ts,event\n")
    (inside / "linked.csv").symlink_to(home / "outside.csv")
    os.mkfifo(inside / "pipe.csv")
    outside = home / "exports"
    outside.mkdir()
    (home / "outside.csv").write_text("member_id,title_id,ts,event\n")
    (outside / "a.csv").symlink_to(home / "outside.csv")  # the operator's own link, outside the landing area
    os.mkfifo(outside / "b.csv")

    files = LandingArea(
        root=str(home / "landing"), source="files", interaction_files=str(home / "landing/interactions/day={day}/*.csv")
    )
    assert [p.name for p in files.interaction_paths(date.fromisoformat(DAY))[0]] == ["events.csv"]
    folder = LandingArea(
        root=str(home / "landing"), source="files", interaction_files=str(home / "landing/interactions/day={day}")
    )
    assert [p.name for p in folder.interaction_paths(date.fromisoformat(DAY))[0]] == ["events.csv"]
    elsewhere = LandingArea(root=str(home / "landing"), source="files", interaction_files=str(outside / "*.csv"))
    assert [p.name for p in elsewhere.interaction_paths(date.fromisoformat(DAY))[0]] == ["a.csv"]
    only_fifo = LandingArea(root=str(home / "landing"), source="files", catalog_files=str(outside / "b.csv"))
    with pytest.raises(FileNotFoundError, match=r"b\.csv \(not_regular_file\)"):
        only_fifo.catalog_paths()


def test_a_synthetic_interactions_file_replaced_by_a_symlink_is_not_read(home: Path) -> None:
    landing = LandingArea(root=str(home / "landing"), synthetic_titles=60, synthetic_members=80)
    day = date.fromisoformat(DAY)
    events = landing.interaction_paths(day)[0][0]
    events.rename(home / "moved.parquet")
    events.symlink_to(home / "moved.parquet")
    with pytest.raises(FileNotFoundError, match=r"events\.parquet \(symlink\)"):
        landing.interaction_paths(day)


def test_opening_a_fifo_or_symlink_is_refused_without_blocking(home: Path) -> None:
    """The race: a listed file is replaced by a FIFO or a symlink before it is opened."""
    folder = _conversations(home)
    os.mkfifo(folder / "raced.jsonl")  # no writer: a plain open() would block forever
    with pytest.raises(LandingFileRefused) as fifo:
        open_landing_file(folder / "raced.jsonl")
    assert fifo.value.reason == "not_regular_file"
    (folder / "link.jsonl").symlink_to(folder.parent)
    with pytest.raises(LandingFileRefused) as link:
        open_landing_file(folder / "link.jsonl")
    assert link.value.reason == "symlink"
    (folder / "ok.jsonl").write_bytes(b"{}\n")
    with open_landing_file(folder / "ok.jsonl") as fh:
        assert fh.read() == b"{}\n"


# ------------------------------------------------------------------------------------------ the sensor


def _sensor_tick(home: Path, instance: dg.DagsterInstance, cursor: str | None = None) -> dg.SensorResult:
    resources = {
        "landing": LandingArea(root=str(home / "landing")),
        "artifacts": ArtifactStore(root=str(home / "artifacts")),
    }
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return landing_sensor(context)


@pytest.fixture
def instance(tmp_path_factory: pytest.TempPathFactory):
    inst = dg.DagsterInstance.from_config(str(tmp_path_factory.mktemp("dagster_home")))
    yield inst
    inst.dispose()


def test_a_drop_with_no_file_an_asset_reads_starts_no_run(home: Path, instance: dg.DagsterInstance) -> None:
    (home / "artifacts" / "base_model" / new_version_id()).mkdir(parents=True)
    folder = _conversations(home)
    (folder / "part.JSON").write_text(json.dumps(CHAT) + "\n")
    (folder / "partner.jsonl").symlink_to("/etc/hostname")
    os.mkfifo(folder / "pipe.jsonl")
    (folder / "nested").mkdir()
    (folder / "nested" / "deep.jsonl").write_text(json.dumps(CHAT) + "\n")
    interactions = home / "landing" / "interactions" / f"day={DAY}"
    interactions.mkdir(parents=True)
    (interactions / "notes.txt").write_text("not data")

    result = _sensor_tick(home, instance)
    assert result.run_requests == []
    message = result.skip_reason.skip_message
    for name, reason in [
        ("part.JSON", "unsupported_suffix"),
        ("partner.jsonl", "symlink"),
        ("pipe.jsonl", "not_regular_file"),
        ("nested", "nested_directory"),
        ("notes.txt", "unsupported_suffix"),
    ]:
        assert f"{name} ({reason})" in message

    # The same day gets a file an asset reads: now it is a drop, and the ignored files do not change its signature.
    (folder / "good.jsonl").write_text(json.dumps(CHAT) + "\n")
    requested = _sensor_tick(home, instance, result.cursor)
    assert [r.partition_key for r in requested.run_requests] == [DAY]
    assert requested.run_requests[0].tags["platform/drop_files"] == "1"
    assert requested.run_requests[0].tags["platform/ignored_files"] == "5"


def test_the_sensor_counts_exactly_the_files_the_asset_reads(home: Path) -> None:
    _hostile_drop(home)
    synthetic.ensure_drop(home / "landing", synthetic.SyntheticConfig(n_titles=60, n_members=80), date(2026, 1, 2))
    (home / "landing" / "interactions" / "day=2026-01-02" / "events.PARQUET.txt").write_text("x")
    landing = LandingArea(root=str(home / "landing"))
    drops = scan_landing(home / "landing")
    for day in (DAY, "2026-01-02"):
        sensor_files = [name for name, _, _ in drops[day].files if name.startswith("conversations/")]
        asset_files = [
            p.relative_to(home / "landing").as_posix() for p in landing.conversation_paths(date.fromisoformat(day))
        ]
        assert sensor_files == asset_files
    interaction_files = [
        p.relative_to(home / "landing").as_posix() for p in landing.interaction_paths(date(2026, 1, 2))[0]
    ]
    assert interaction_files == [name for name, _, _ in drops["2026-01-02"].files if name.startswith("interactions/")]
    assert [name for name, _, _ in drops[DAY].files] == EXPECTED_ACCEPTED
    assert [name for name, _, _ in drops["2026-01-02"].files] == [
        "conversations/day=2026-01-02/external.jsonl",
        "interactions/day=2026-01-02/events.parquet",
    ]


def test_decide_landing_reports_ignored_files_of_every_day(home: Path, instance: dg.DagsterInstance) -> None:
    _hostile_drop(home)
    decision = decide_landing(instance, home / "landing", None, True, {DAY})
    assert [r.partition_key for r in decision.requests] == [DAY]
    assert {i.rel: i.reason for i in decision.ignored} == EXPECTED_IGNORED


# ------------------------------------------------------------------------------------------- the asset


def _materialize_day(home: Path, landing: LandingArea) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    from assets.catalog import raw_catalog, raw_interactions
    from assets.conversations import curated_conversations

    assets = [raw_catalog, raw_interactions, curated_conversations]
    resources = {"warehouse": Warehouse(path=str(home / "w.duckdb")), "landing": landing}
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize(assets, selection=["raw_catalog"], resources=resources, instance=instance).success
    result = dg.materialize(
        assets,
        selection=["raw_interactions", "curated_conversations"],
        partition_key=DAY,
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    return result, instance


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
    return {k: getattr(v, "value", v) for k, v in events[-1].materialization.metadata.items()}


def _warnings(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id) if e.level == logging.WARNING]


def test_curation_never_follows_a_symlink_or_opens_a_fifo_and_reports_what_it_ignored(home: Path) -> None:
    _hostile_drop(home)
    landing = LandingArea(root=str(home / "landing"), synthetic_titles=60, synthetic_members=80)
    # Checked first: with the FIFO among the files to read, the materialization below would block forever.
    assert [p.name for p in landing.conversation_paths(date.fromisoformat(DAY))] == ["UPPER.JSONL", "good.jsonl"]

    result, instance = _materialize_day(home, landing)
    assert result.success
    meta = _meta(result, "curated_conversations")
    assert {row["file"]: row["reason"] for row in meta["ignored_files"]} == EXPECTED_IGNORED
    warned = "\n".join(_warnings(instance, result.run_id))
    assert "partner.jsonl (symlink)" in warned and "pipe.jsonl (not_regular_file)" in warned

    wh = Warehouse(path=str(home / "w.duckdb"))
    quarantine = wh.read_table("curated.quarantine")
    assert not any("secret-line" in (p or "") for p in quarantine["payload"].to_list())
    external = wh.query("SELECT messages FROM curated.conversations WHERE kind = 'external'")
    contents = {m["content"] for conversation in external["messages"].to_list() for m in conversation}
    assert {"hi there", "upper case file"} <= contents  # both accepted spellings were read
