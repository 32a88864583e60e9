import datetime as dt
import threading
from pathlib import Path

import duckdb
import polars as pl
import pytest
from support.warehouse_rows import conversation_rows, events

from core import schemas
from resources.warehouse import TABLES, Warehouse, create_table_sql, duckdb_type, replace_in


def test_loading_a_partition_twice_gives_the_same_table(any_warehouse: Warehouse) -> None:
    wh = any_warehouse
    d1, d2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    wh.replace_partition("raw.interactions", events(d1, 3), d1)
    wh.replace_partition("raw.interactions", events(d2, 2), d2)
    wh.replace_partition("raw.interactions", events(d1, 3), d1)
    counts = wh.query("SELECT day, count(*) AS n FROM raw.interactions GROUP BY day ORDER BY day")
    assert counts.rows() == [(d1, 3), (d2, 2)]


def test_failed_write_rolls_back(any_warehouse: Warehouse) -> None:
    wh = any_warehouse
    d1 = dt.date(2026, 1, 1)
    wh.replace_partition("raw.interactions", events(d1, 3), d1)
    with pytest.raises(ValueError, match="missing contract columns"):
        wh.replace_partition("raw.interactions", events(d1, 1).drop("event"), d1)
    assert wh.query("SELECT count(*) AS n FROM raw.interactions")["n"][0] == 3


def test_round_trip_keeps_contract_dtypes(any_warehouse: Warehouse) -> None:
    wh = any_warehouse
    d1 = dt.date(2026, 1, 1)
    wh.replace_partition("raw.interactions", events(d1, 2), d1)
    assert dict(wh.read_table("raw.interactions").schema) == schemas.INTERACTIONS_SCHEMA
    assert dict(wh.read_table("curated.conversations").schema) == schemas.CONVERSATIONS_SCHEMA


def test_writer_waits_for_a_lock_held_by_another_process(tmp_path: Path) -> None:
    """Dagster runs steps in separate processes; a second writer must wait, not fail."""
    import subprocess
    import sys

    db = tmp_path / "w.duckdb"
    wh = Warehouse(path=str(db), lock_timeout_s=30)
    wh.ensure_tables()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('locked', flush=True); time.sleep(2)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    done = threading.Event()
    d1 = dt.date(2026, 1, 1)
    wh.replace_partition("raw.interactions", events(d1, 1), d1)
    done.set()
    holder.wait(timeout=30)
    assert wh.query("SELECT count(*) AS n FROM raw.interactions")["n"][0] == 1


# ------------------------------------------------------------------------- several tables, one transaction


def _quarantine_rows(day: dt.date, reasons: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "conversation_id": [None] * len(reasons),
            "day": [day] * len(reasons),
            "reason": reasons,
            "detail": ["x"] * len(reasons),
            "payload": ["{}"] * len(reasons),
        }
    )


def _refuse_quarantine_reason(wh: Warehouse, reason: str) -> None:
    """Recreate curated.quarantine so the database itself rejects rows with `reason` (a failure mid-transaction)."""
    wh.ensure_tables()
    with wh.connect() as con:
        con.execute("DROP TABLE curated.quarantine")
        ddl = create_table_sql("curated.quarantine", TABLES["curated.quarantine"])
        con.execute(ddl[:-1] + f", CHECK (reason <> '{reason}'))")


def test_a_partitions_data_and_quarantine_rows_are_replaced_together_or_not_at_all(tmp_path: Path) -> None:
    wh = Warehouse(path=str(tmp_path / "w.duckdb"))
    d1 = dt.date(2026, 1, 1)
    wh.replace_partitions(
        {
            "curated.conversations": conversation_rows(d1, ["a", "b"]),
            "curated.quarantine": _quarantine_rows(d1, ["x"]),
        },
        d1,
    )
    _refuse_quarantine_reason(wh, "refused")
    with pytest.raises(duckdb.ConstraintException):
        wh.replace_partitions(
            {
                "curated.conversations": conversation_rows(d1, ["c"]),
                "curated.quarantine": _quarantine_rows(d1, ["refused"]),
            },
            d1,
        )
    # The conversations written before the quarantine insert failed were rolled back with it.
    assert sorted(wh.read_table("curated.conversations")["conversation_id"].to_list()) == ["a", "b"]

    counts = wh.replace_partitions(
        {"curated.conversations": conversation_rows(d1, ["c"]), "curated.quarantine": _quarantine_rows(d1, [])}, d1
    )
    assert counts == {"curated.conversations": 1, "curated.quarantine": 0}
    assert wh.read_table("curated.conversations")["conversation_id"].to_list() == ["c"]
    assert wh.read_table("curated.quarantine").height == 0


def test_a_contract_violation_is_reported_before_anything_is_written(any_warehouse: Warehouse) -> None:
    wh = any_warehouse
    d1 = dt.date(2026, 1, 1)
    wh.replace_partitions({"curated.conversations": conversation_rows(d1, ["a"])}, d1)
    with pytest.raises(ValueError, match="missing contract columns"):
        wh.replace_partitions(
            {
                "curated.conversations": conversation_rows(d1, ["b"]),
                "curated.quarantine": _quarantine_rows(d1, ["x"]).drop("reason"),
            },
            d1,
        )
    assert wh.read_table("curated.conversations")["conversation_id"].to_list() == ["a"]


def test_a_transaction_that_fails_after_writing_leaves_nothing_behind(any_warehouse: Warehouse) -> None:
    wh = any_warehouse
    d1 = dt.date(2026, 1, 1)
    wh.replace_partition("raw.interactions", events(d1, 3), d1)

    def write_then_fail(con: duckdb.DuckDBPyConnection) -> None:
        replace_in(con, "raw.interactions", events(d1, 1), "day = ?", [d1])
        replace_in(con, "curated.conversations", conversation_rows(d1, ["a"]), "day = ?", [d1])
        raise RuntimeError("the step failed after its writes")

    with pytest.raises(RuntimeError, match="after its writes"):
        wh.run_transaction(write_then_fail)
    assert wh.read_table("raw.interactions").height == 3
    assert wh.read_table("curated.conversations").height == 0


# --------------------------------------------------------------------------------- older warehouse files


def test_booleans_map_to_duckdb_boolean() -> None:
    assert duckdb_type(pl.Boolean) == "BOOLEAN"
    assert duckdb_type(pl.List(pl.Boolean)) == "BOOLEAN[]"


def test_tables_created_by_an_older_version_gain_the_new_contract_columns(tmp_path: Path, monkeypatch) -> None:
    """A contract that grows a column must not break a warehouse file written before it did."""
    db = tmp_path / "w.duckdb"
    old_contract = {"source": pl.String, "day": pl.Date, "reason": pl.String, "detail": pl.String, "payload": pl.String}
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA raw")
    con.execute(create_table_sql("raw.quarantine", old_contract))
    con.execute("INSERT INTO raw.quarantine VALUES ('catalog', NULL, 'missing_id', 'old row', '{}')")
    con.close()

    grown = {**old_contract, "payload_chars": pl.Int64, "payload_truncated": pl.Boolean}
    monkeypatch.setitem(TABLES, "raw.quarantine", grown)
    wh = Warehouse(path=str(db))
    wh.ensure_tables()
    wh.replace_rows(
        "raw.quarantine",
        pl.DataFrame(
            {
                "source": ["interactions"],
                "day": [dt.date(2026, 1, 1)],
                "reason": ["bad_timestamp"],
                "detail": ["new row"],
                "payload": ["{}"],
                "payload_chars": [2],
                "payload_truncated": [False],
            }
        ),
        "source = 'interactions'",
    )
    assert dict(wh.read_table("raw.quarantine").schema) == grown
    stored = wh.query("SELECT detail, payload_chars, payload_truncated FROM raw.quarantine ORDER BY detail")
    assert stored.rows() == [("new row", 2, False), ("old row", None, None)]
    wh.ensure_tables()  # idempotent once the columns exist


def test_a_warehouse_written_before_payload_caps_takes_capped_quarantine_rows(tmp_path: Path) -> None:
    """The real upgrade: quarantine tables without payload_chars/payload_truncated, then today's writers."""
    db = tmp_path / "w.duckdb"
    before = ("payload_chars", "payload_truncated")
    con = duckdb.connect(str(db))
    for table in ("raw.quarantine", "curated.quarantine"):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {table.split('.')[0]}")
        old = {c: t for c, t in TABLES[table].items() if c not in before}
        con.execute(create_table_sql(table, old))
    con.execute("INSERT INTO curated.quarantine VALUES (NULL, DATE '2026-01-01', 'bad_schema', 'old', '{}')")
    con.close()

    wh = Warehouse(path=str(db))
    d2 = dt.date(2026, 1, 2)
    huge = "x" * (schemas.QUARANTINE_PAYLOAD_MAX_CHARS + 10)
    wh.replace_partitions(
        {"curated.quarantine": _quarantine_rows(d2, ["invalid_json"]).with_columns(payload=pl.lit(huge))}, d2
    )
    stored = wh.query(
        "SELECT day, length(payload) AS kept, payload_chars, payload_truncated FROM curated.quarantine ORDER BY day"
    )
    assert stored.rows() == [
        (dt.date(2026, 1, 1), 2, None, None),
        (d2, schemas.QUARANTINE_PAYLOAD_MAX_CHARS, len(huge), True),
    ]
    assert dict(wh.read_table("raw.quarantine").schema) == schemas.RAW_QUARANTINE_SCHEMA
