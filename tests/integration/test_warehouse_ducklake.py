"""The DuckLake backend: snapshots and time travel, and writers that run at once and still commit correctly."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

import duckdb
import pytest
from support.warehouse_rows import events

from resources import ducklake
from resources.warehouse import Commit, Warehouse, fetch, replace_in

D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)


def test_each_write_records_its_snapshot_and_an_old_snapshot_reads_back_as_it_was(lake_warehouse: Warehouse) -> None:
    wh = lake_warehouse
    first = wh.replace_tables([("raw.interactions", events(D1, ["a", "b"]), "day = ?", [D1])], message="day 1")
    second = wh.replace_tables([("raw.interactions", events(D1, ["c"]), "day = ?", [D1])], message="day 1 again")
    assert first.snapshot is not None and second.snapshot is not None and second.snapshot > first.snapshot
    assert wh.snapshot() == second.snapshot

    as_it_was = wh.read_table("raw.interactions", "day = ?", [D1], snapshot=first.snapshot)
    assert sorted(as_it_was["member_id"].to_list()) == ["a", "b"]
    assert wh.read_table("raw.interactions")["member_id"].to_list() == ["c"]
    messages = wh.query(
        "SELECT commit_message FROM lake.snapshots() WHERE snapshot_id IN (?, ?) ORDER BY snapshot_id",
        [first.snapshot, second.snapshot],
    )["commit_message"].to_list()
    assert messages == ["day 1", "day 1 again"]


def test_the_duckdb_file_has_no_snapshots_to_read(tmp_path) -> None:
    wh = Warehouse(path=str(tmp_path / "w.duckdb"))
    assert wh.replace_tables([("raw.interactions", events(D1, ["a"]), "day = ?", [D1])]).snapshot is None
    with pytest.raises(ValueError, match="needs the ducklake backend"):
        wh.read_table("raw.interactions", snapshot=1)


def _race(wh: Warehouse, works: list[Callable[[duckdb.DuckDBPyConnection], None]], **kwargs) -> list[Commit]:
    """Run each work in its own thread so that every first attempt has written before any of them commits."""
    barrier = threading.Barrier(len(works))
    commits: list[Commit] = [None] * len(works)  # type: ignore[list-item]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        attempts = 0

        def gated(con: duckdb.DuckDBPyConnection) -> None:
            nonlocal attempts
            works[i](con)
            attempts += 1
            if attempts == 1:
                barrier.wait(timeout=60)

        try:
            commits[i] = wh.run_transaction(gated, **kwargs)
        except BaseException as exc:  # reported below, with the thread's commits
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(works))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return commits


def test_writers_replacing_different_days_at_once_both_commit_after_a_retry(lake_warehouse: Warehouse) -> None:
    wh = lake_warehouse
    wh.replace_partition("raw.interactions", events(D1, ["old1"]), D1)
    wh.replace_partition("raw.interactions", events(D2, ["old2"]), D2)

    def replace(day: dt.date, member: str) -> Callable[[duckdb.DuckDBPyConnection], None]:
        return lambda con: replace_in(con, "raw.interactions", events(day, [member]), "day = ?", [day]) and None

    commits = _race(wh, [replace(D1, "new1"), replace(D2, "new2")])
    # Both deleted from raw.interactions: DuckLake failed the later commit, which ran again on the new snapshot.
    assert sorted(c.retries for c in commits) == [0, 1]
    rows = wh.query("SELECT day, member_id FROM raw.interactions ORDER BY day").rows()
    assert rows == [(D1, "new1"), (D2, "new2")]


def _insert_if_unseen(day: dt.date) -> Callable[[duckdb.DuckDBPyConnection], None]:
    """Read-check-write: member m1 belongs to one day only, the first to commit it (like curation's dedup)."""

    def work(con: duckdb.DuckDBPyConnection) -> None:
        seen = fetch(con, "SELECT count(*) AS n FROM raw.interactions WHERE member_id = 'm1' AND day <> ?", [day])
        if seen["n"][0] == 0:
            replace_in(con, "raw.interactions", events(day, ["m1"]), "day = ?", [day])

    return work


def test_read_check_write_transactions_with_a_serialize_key_never_both_commit_unseen(
    lake_warehouse: Warehouse,
) -> None:
    commits = _race(lake_warehouse, [_insert_if_unseen(D1), _insert_if_unseen(D2)], serialize="curated.conversations")
    assert sorted(c.retries for c in commits) == [0, 1]
    assert lake_warehouse.query("SELECT count(*) AS n FROM raw.interactions WHERE member_id = 'm1'")["n"][0] == 1


def test_without_the_key_insert_only_writers_do_not_see_each_other(lake_warehouse: Warehouse) -> None:
    """Why curation names a serialize key: DuckLake lets two inserting transactions both commit."""
    commits = _race(lake_warehouse, [_insert_if_unseen(D1), _insert_if_unseen(D2)])
    assert [c.retries for c in commits] == [0, 0]
    assert lake_warehouse.query("SELECT count(*) AS n FROM raw.interactions WHERE member_id = 'm1'")["n"][0] == 2


def test_an_unknown_serialize_key_is_refused(lake_warehouse: Warehouse) -> None:
    with pytest.raises(ValueError, match="SERIALIZE_KEYS"):
        lake_warehouse.run_transaction(lambda con: None, serialize="raw.nothing")


def test_a_backend_without_its_settings_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="DUCKLAKE_CATALOG"):
        Warehouse(backend="ducklake").query("SELECT 1")
    with pytest.raises(ValueError, match="use 'duckdb' or 'ducklake'"):
        Warehouse(backend="sqlite", path="x").query("SELECT 1")


def test_an_extension_built_for_another_duckdb_is_named(monkeypatch) -> None:
    monkeypatch.setattr(duckdb, "__version__", "0.0.1")
    with pytest.raises(RuntimeError, match=r"no ducklake extension for duckdb 0\.0\.1 \(it has \['v1\.5\.5'\]\)"):
        ducklake.extension_file("duckdb_extension_ducklake", "ducklake", "duckdb-extension-ducklake")


def test_an_unreachable_catalog_says_what_to_check(tmp_path) -> None:
    from core.local_postgres import free_port

    catalog = f"dbname=lake host=127.0.0.1 port={free_port()} user=platform password=secret connect_timeout=2"
    with pytest.raises(RuntimeError, match="PostgreSQL is reachable") as raised:
        Warehouse(backend="ducklake", ducklake_catalog=catalog, ducklake_data_path=str(tmp_path)).query("SELECT 1")
    assert "secret" not in str(raised.value)


def test_a_lake_whose_data_path_is_on_s3_writes_parquet_objects_and_time_travels(
    postgres_server, s3_env: str, tmp_path
) -> None:
    import uuid

    from support.lake import new_lake_warehouse
    from support.s3 import client

    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    client(s3_env).create_bucket(Bucket=bucket)
    lakes = new_lake_warehouse(postgres_server, f"s3://{bucket}/warehouse/")
    wh = next(lakes)
    members = [f"m{i}" for i in range(50)]  # past the inlining limit: the rows go to a Parquet object
    first = wh.replace_tables([("raw.interactions", events(D1, members), "day = ?", [D1])])
    wh.replace_tables([("raw.interactions", events(D1, ["x"]), "day = ?", [D1])])
    assert wh.read_table("raw.interactions", snapshot=first.snapshot).height == 50
    assert wh.read_table("raw.interactions")["member_id"].to_list() == ["x"]
    keys = [o["Key"] for o in client(s3_env).list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.startswith("warehouse/raw/interactions/") and k.endswith(".parquet") for k in keys), keys
    next(lakes, None)


def test_the_s3_secret_follows_the_endpoint_setting() -> None:
    from core.settings import ObjectStoreSettings

    sql = ducklake.s3_secret_sql(ObjectStoreSettings("k", "s'x", "", "eu-west-1", "https://minio.internal:9000"))
    assert "KEY_ID 'k'" in sql and "SECRET 's''x'" in sql and "REGION 'eu-west-1'" in sql
    assert "ENDPOINT 'minio.internal:9000'" in sql and "USE_SSL true" in sql and "URL_STYLE 'path'" in sql
    aws = ducklake.s3_secret_sql(ObjectStoreSettings("", "", "", "us-east-1", ""))
    assert "ENDPOINT" not in aws and "KEY_ID" not in aws


def _attach_and_write(warehouse_json: str, day: str, barrier) -> None:
    wh = Warehouse.model_validate_json(warehouse_json)
    barrier.wait(timeout=120)
    d = dt.date.fromisoformat(day)
    wh.replace_partition("raw.interactions", events(d, [f"m-{day}"]), d)


def test_processes_that_first_open_a_new_catalog_at_the_same_time_all_succeed(lake_warehouse: Warehouse) -> None:
    """The first attach creates DuckLake's metadata tables; several day runs starting on a new lake race for it."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    days = [f"2026-01-0{i}" for i in range(1, 5)]
    barrier = ctx.Barrier(len(days))
    procs = [
        ctx.Process(target=_attach_and_write, args=(lake_warehouse.model_dump_json(), day, barrier)) for day in days
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * len(days)
    assert lake_warehouse.query("SELECT count(*) AS n FROM raw.interactions")["n"][0] == len(days)


def test_a_writer_that_keeps_losing_conflicts_gives_up_with_a_clear_error(lake_warehouse: Warehouse) -> None:
    wh = lake_warehouse
    wh.replace_partition("raw.interactions", events(D1, ["old1"]), D1)
    wh.replace_partition("raw.interactions", events(D2, ["old2"]), D2)
    impatient = wh.model_copy(update={"commit_attempts": 1})
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def replace(day: dt.date) -> None:
        def work(con: duckdb.DuckDBPyConnection) -> None:
            replace_in(con, "raw.interactions", events(day, ["new"]), "day = ?", [day])
            barrier.wait(timeout=60)

        try:
            outcomes.append(impatient.run_transaction(work, message=f"replace {day}"))
        except RuntimeError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=replace, args=(d,)) for d in (D1, D2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    errors = [o for o in outcomes if isinstance(o, RuntimeError)]
    assert len(outcomes) == 2 and len(errors) == 1
    assert "lost 1 commit conflicts in a row" in str(errors[0]) and "Run fewer days at a time" in str(errors[0])
