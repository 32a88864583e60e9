"""The DuckDB warehouse: raw and curated tables with idempotent partition writes.

DuckDB allows one writing process per database file, and Dagster runs steps in
separate processes, so every operation opens a short-lived connection and
retries while another process holds the lock.

That lock is also what makes read-check-write sequences safe across processes:
while `transaction()` holds its read-write connection no other process can open
the file, so what the transaction reads stays true until it commits. Threads of
one process share DuckDB's database instance (and so do not contend for the file
lock); a per-file lock in this module serializes them the same way.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl

from core import schemas

TABLES: dict[str, dict[str, pl.DataType]] = {
    "raw.catalog": schemas.CATALOG_SCHEMA,
    "raw.interactions": schemas.INTERACTIONS_SCHEMA,
    "raw.quarantine": schemas.RAW_QUARANTINE_SCHEMA,
    "curated.conversations": schemas.CONVERSATIONS_SCHEMA,
    "curated.quarantine": schemas.CONVERSATION_QUARANTINE_SCHEMA,
}


def duckdb_type(dtype: pl.DataType) -> str:
    """DuckDB DDL type for a polars dtype used in our contracts."""
    if dtype == pl.String:
        return "VARCHAR"
    if dtype == pl.Boolean:
        return "BOOLEAN"
    if dtype == pl.Int32:
        return "INTEGER"
    if dtype == pl.Int64:
        return "BIGINT"
    if dtype == pl.Float64:
        return "DOUBLE"
    if dtype == pl.Date:
        return "DATE"
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMPTZ" if dtype.time_zone else "TIMESTAMP"
    if isinstance(dtype, pl.List):
        return f"{duckdb_type(dtype.inner)}[]"
    if isinstance(dtype, pl.Struct):
        fields = ", ".join(f"{f.name} {duckdb_type(f.dtype)}" for f in dtype.fields)
        return f"STRUCT({fields})"
    raise TypeError(f"no DuckDB mapping for polars dtype {dtype}")


def create_table_sql(table: str, schema: Mapping[str, pl.DataType]) -> str:
    cols = ", ".join(f"{name} {duckdb_type(dtype)}" for name, dtype in schema.items())
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols})"


def replace_in(
    con: duckdb.DuckDBPyConnection, table: str, df: pl.DataFrame, where: str, params: Sequence[Any] = ()
) -> int:
    """Inside the caller's transaction: delete `table`'s rows matching `where`, insert `df` (conformed here)."""
    return _delete_insert(con, table, schemas.conform(df, TABLES[table]), where, params)


def _delete_insert(
    con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, where: str, params: Sequence[Any]
) -> int:
    schema = TABLES[table]
    con.execute(f"DELETE FROM {table} WHERE {where}", list(params))
    if frame.height:
        cols = ", ".join(schema)
        con.register("incoming_rows", frame.to_arrow())
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM incoming_rows")
        con.unregister("incoming_rows")  # after a failure the aborted transaction refuses this; the caller rolls back
    return frame.height


def fetch(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
    """A query's result as a polars frame, on the caller's connection (inside its transaction)."""
    return pl.from_arrow(con.sql(sql, params=list(params)).to_arrow_table())  # type: ignore[return-value]


def _ensure_tables_on(con: duckdb.DuckDBPyConnection) -> None:
    """`DuckDBWarehouse.ensure_tables` on an open read-write connection (one catalog query for every column)."""
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    con.execute("CREATE SCHEMA IF NOT EXISTS curated")
    for table, schema in TABLES.items():
        con.execute(create_table_sql(table, schema))
    have = {
        f"{schema_name}.{table_name}.{column}"
        for schema_name, table_name, column in con.execute(
            "SELECT schema_name, table_name, column_name FROM duckdb_columns() WHERE schema_name IN ('raw', 'curated')"
        ).fetchall()
    }
    for table, schema in TABLES.items():
        for column, dtype in schema.items():
            if f"{table}.{column}" not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {duckdb_type(dtype)}")


_PROCESS_LOCKS: dict[str, threading.RLock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


def _process_lock(path: str) -> threading.RLock:
    """One lock per database file in this process (DuckDB's file lock only excludes other processes)."""
    key = os.path.realpath(path)
    with _PROCESS_LOCKS_GUARD:
        return _PROCESS_LOCKS.setdefault(key, threading.RLock())


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


class DuckDBWarehouse(dg.ConfigurableResource):
    """The embedded warehouse (`PLATFORM_HOME/warehouse.duckdb` by default)."""

    path: str
    lock_timeout_s: float = 300.0

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(self.path, read_only=read_only and Path(self.path).exists())
                break
            except duckdb.IOException as exc:
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        try:
            yield con
        finally:
            con.close()

    def ensure_tables(self) -> None:
        """Create missing schemas and tables, and add the columns the contracts gained since a table was created.

        A warehouse written by an older version keeps working: its tables get the new columns (NULL in old rows)
        instead of failing the first insert that names them.
        """
        with self.connect() as con:
            _ensure_tables_on(con)

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection inside one transaction: committed when the block ends, rolled back on error.

        Nothing else writes the database while the block runs (other processes wait for DuckDB's file lock, other
        threads for this process's lock), so a block may read, decide and write as one step.
        """
        with _process_lock(self.path), self.connect() as con:
            _ensure_tables_on(con)
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                with suppress(duckdb.Error):  # a failed statement may already have ended the transaction
                    con.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        self.ensure_tables()
        with self.connect() as con:
            table = con.sql(sql, params=list(params or [])).to_arrow_table()
        return pl.from_arrow(table)  # type: ignore[return-value]

    def replace_rows(self, table: str, df: pl.DataFrame, where: str, params: Sequence[Any] = ()) -> int:
        """Delete the rows matching `where`, insert `df`, in one transaction.

        This is what makes loading a partition twice give the same table, not duplicates.
        """
        return self.replace_tables([(table, df, where, params)])[table]

    def replace_tables(self, writes: Sequence[tuple[str, pl.DataFrame, str, Sequence[Any]]]) -> dict[str, int]:
        """Several `replace_rows` (table, frame, where, params) in ONE transaction: all of them or none.

        E.g. a partition's data rows and its quarantine rows, so no reader ever sees one without the other.
        Frames are checked against their contracts before the database is touched.
        """
        frames = [(table, schemas.conform(df, TABLES[table]), where, params) for table, df, where, params in writes]
        counts: dict[str, int] = {}
        with self.transaction() as con:
            for table, frame, where, params in frames:
                counts[table] = counts.get(table, 0) + _delete_insert(con, table, frame, where, params)
        return counts

    def replace_partition(self, table: str, df: pl.DataFrame, day: date) -> int:
        return self.replace_rows(table, df, "day = ?", [day])

    def replace_partitions(self, frames: Mapping[str, pl.DataFrame], day: date) -> dict[str, int]:
        """Replace `day`'s rows of several tables in one transaction."""
        return self.replace_tables([(table, df, "day = ?", [day]) for table, df in frames.items()])

    def read_table(self, table: str, where: str = "TRUE", params: Sequence[Any] = ()) -> pl.DataFrame:
        schema = TABLES[table]
        cols = ", ".join(schema)
        df = self.query(f"SELECT {cols} FROM {table} WHERE {where}", params)
        return schemas.conform(df, schema) if df.height else schemas.empty_frame(schema)
