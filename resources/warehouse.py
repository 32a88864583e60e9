"""The warehouse: raw and curated tables with idempotent partition writes, on a DuckDB file or a DuckLake.

The DuckDB file allows one writing process at a time, and Dagster runs steps in separate processes, so every
operation opens a short-lived connection and retries while another process holds the lock. That lock is also
what makes read-check-write transactions safe across processes: while one holds its read-write connection no
other process can open the file. Threads of one process share DuckDB's database instance (and so do not contend
for the file lock); a per-file lock in this module serializes them the same way.

A DuckLake (resources/ducklake.py) takes many writers at once. Its transactions are optimistic: a commit that
conflicts with a concurrent one fails, and `Warehouse.run_transaction` runs the transaction again.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import date
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import dagster as dg
import duckdb
import polars as pl

from core import schemas
from resources import ducklake

T = TypeVar("T")

TABLES: dict[str, dict[str, pl.DataType]] = {
    "raw.catalog": schemas.CATALOG_SCHEMA,
    "raw.interactions": schemas.INTERACTIONS_SCHEMA,
    "raw.quarantine": schemas.RAW_QUARANTINE_SCHEMA,
    "curated.conversations": schemas.CONVERSATIONS_SCHEMA,
    "curated.quarantine": schemas.CONVERSATION_QUARANTINE_SCHEMA,
    "curated.preference_pairs": schemas.PREFERENCE_PAIRS_SCHEMA,
    # Pair rejects, same columns as curated.quarantine (conversation_id holds the pair_id): a table of their own,
    # so a conversation day and a pair day each replace only their own rejects.
    "curated.preference_quarantine": schemas.CONVERSATION_QUARANTINE_SCHEMA,
}

# Content hashes another day already holds (curation's cross-day dedup). `day <> ?`, not `day < ?`: days run
# concurrently and in any order, and the first to commit a text keeps it; re-running a day is stable because its
# own rows never count.
SEEN_ELSEWHERE_SQL = "SELECT DISTINCT content_hash FROM curated.conversations WHERE day <> ?"

# Keys of `Warehouse.run_transaction(serialize=...)`: one row each in meta.write_claims.
SERIALIZE_KEYS = ("curated.conversations", "curated.preference_pairs")
# The pairs' cross-day dedup, as SEEN_ELSEWHERE_SQL is the conversations'.
PAIRS_SEEN_ELSEWHERE_SQL = "SELECT DISTINCT content_hash FROM curated.preference_pairs WHERE day <> ?"


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
    """`Warehouse.ensure_tables` on an open read-write connection (one catalog query for every column)."""
    for schema_name in ("raw", "curated", "meta"):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema_name}")
    for table, schema in TABLES.items():
        con.execute(create_table_sql(table, schema))
    con.execute("CREATE TABLE IF NOT EXISTS meta.write_claims (key VARCHAR, claims BIGINT)")
    for key in SERIALIZE_KEYS:
        con.execute(
            "INSERT INTO meta.write_claims SELECT $1, 0 "
            "WHERE NOT EXISTS (SELECT 1 FROM meta.write_claims WHERE key = $1)",
            [key],
        )
    have = {
        f"{schema_name}.{table_name}.{column}"
        for schema_name, table_name, column in con.execute(
            "SELECT schema_name, table_name, column_name FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name IN ('raw', 'curated')"
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


class Commit(NamedTuple, Generic[T]):
    """What a committed transaction returned, the snapshot it wrote (DuckLake; None on the file) and how many
    times it ran again after losing a commit conflict."""

    value: T
    snapshot: int | None
    retries: int


class Warehouse(dg.ConfigurableResource):
    """The warehouse: the embedded DuckDB file (`backend="duckdb"`, the default) or a DuckLake whose catalog is a
    PostgreSQL database and whose data are Parquet files under `ducklake_data_path` (`backend="ducklake"`).

    Both hold the same tables under the same contracts; assets call the same methods on either.
    """

    backend: str = "duckdb"
    path: str = ""  # the DuckDB file (backend "duckdb")
    ducklake_catalog: str = ""  # libpq conninfo of the catalog database (backend "ducklake")
    ducklake_data_path: str = ""  # a directory or an object-store URL for the Parquet files (backend "ducklake")
    lock_timeout_s: float = 300.0
    commit_attempts: int = 12  # DuckLake: runs of one transaction that lost commit conflicts, before giving up

    def describe(self) -> str:
        """Where the data live, for messages and metadata (no password)."""
        if self.backend == "ducklake":
            return f"DuckLake (catalog {ducklake.redact(self.ducklake_catalog)}, data {self.ducklake_data_path})"
        return self.path

    def _check(self) -> None:
        if self.backend == "duckdb":
            if not self.path:
                raise ValueError(
                    "the duckdb warehouse needs the path of its file (PLATFORM_HOME/warehouse.duckdb in a deployment)"
                )
        elif self.backend == "ducklake":
            if not self.ducklake_catalog or not self.ducklake_data_path:
                raise ValueError(
                    "WAREHOUSE_BACKEND=ducklake needs DUCKLAKE_CATALOG (a PostgreSQL conninfo such as "
                    "'dbname=lake host=127.0.0.1 port=5432 user=platform') and DUCKLAKE_DATA_PATH "
                    "(a directory or s3:// URL for the Parquet files); see docs/warehouse.md"
                )
        else:
            raise ValueError(f"WAREHOUSE_BACKEND={self.backend!r} is not available: use 'duckdb' or 'ducklake'")

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection whose default catalog holds the warehouse's schemas (`raw`, `curated`)."""
        self._check()
        if self.backend == "ducklake":
            cursor = ducklake.lake_root(self.ducklake_catalog, self.ducklake_data_path).cursor()
            try:
                cursor.execute(f"USE {ducklake.LAKE}")
                yield cursor
            finally:
                cursor.close()
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(
                    self.path, read_only=read_only and Path(self.path).exists(), config=dict(ducklake.OFFLINE_CONFIG)
                )
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
        instead of failing the first insert that names them. A lake is checked once per process.
        """
        if self.backend == "ducklake":
            key = (os.getpid(), self.ducklake_catalog, self.ducklake_data_path)
            if key in _ENSURED_LAKES:
                return
            self._run(_ensure_tables_on, serialize=None, message="ensure tables")
            _ENSURED_LAKES.add(key)
            return
        with self.connect() as con:
            _ensure_tables_on(con)

    def run_transaction(
        self, work: Callable[[duckdb.DuckDBPyConnection], T], *, serialize: str | None = None, message: str = ""
    ) -> Commit[T]:
        """Run `work(con)` inside one transaction: committed when it returns, rolled back if it raises.

        `work` may read, decide and write as one step. On the DuckDB file no other writer runs meanwhile (other
        processes wait for its file lock, other threads for this process's lock). On DuckLake writers run at
        once; a commit that loses a conflict is rolled back and `work` runs again on the new snapshot, so it
        must not have effects outside the transaction. Writers whose decisions depend on what other writers
        committed (curation's cross-day dedup reads every other day) name a `serialize` key: two concurrent
        transactions with the same key always conflict, so one of them runs again and sees the other's rows.
        """
        if self.backend == "ducklake":
            self.ensure_tables()  # the file's transactions ensure them on their own connection (in _run)
        return self._run(work, serialize=serialize, message=message)

    def _run(self, work: Callable[[duckdb.DuckDBPyConnection], T], *, serialize: str | None, message: str) -> Commit[T]:
        self._check()
        if self.backend == "duckdb":
            with _process_lock(self.path), self.connect() as con:
                _ensure_tables_on(con)
                return Commit(_in_transaction(con, work, None, None), None, 0)
        delay = 0.05
        for attempt in range(self.commit_attempts):
            token = uuid.uuid4().hex
            with self.connect() as con:
                try:
                    value = _in_transaction(con, work, serialize, (message, token))
                except duckdb.Error as exc:
                    if not ducklake.is_conflict(exc) or attempt + 1 == self.commit_attempts:
                        if ducklake.is_conflict(exc):
                            raise RuntimeError(
                                f"{message or 'a warehouse transaction'} lost {self.commit_attempts} commit conflicts "
                                f"in a row on {self.describe()}; too many writers change the same tables at once. "
                                "Run fewer days at a time (the run queue's tag limits) or raise commit_attempts."
                            ) from exc
                        raise
                else:
                    return Commit(value, _snapshot_of(con, token), attempt)
            time.sleep(delay * (0.5 + random.random()))  # jitter: writers that collided retry apart
            delay = min(delay * 2, 3.0)
        raise AssertionError("unreachable")

    def snapshot(self) -> int | None:
        """The lake's latest snapshot id (None on the DuckDB file, which keeps no history)."""
        if self.backend != "ducklake":
            return None
        self.ensure_tables()
        with self.connect() as con:
            row = con.execute(f"SELECT id FROM ducklake_current_snapshot('{ducklake.LAKE}')").fetchone()
        return int(row[0]) if row else None

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        self.ensure_tables()
        with self.connect() as con:
            table = con.sql(sql, params=list(params or [])).to_arrow_table()
        return pl.from_arrow(table)  # type: ignore[return-value]

    def replace_rows(self, table: str, df: pl.DataFrame, where: str, params: Sequence[Any] = ()) -> int:
        """Delete the rows matching `where`, insert `df`, in one transaction.

        This is what makes loading a partition twice give the same table, not duplicates.
        """
        return self.replace_tables([(table, df, where, params)]).value[table]

    def replace_tables(
        self, writes: Sequence[tuple[str, pl.DataFrame, str, Sequence[Any]]], message: str = ""
    ) -> Commit[dict[str, int]]:
        """Several `replace_rows` (table, frame, where, params) in ONE transaction: all of them or none.

        E.g. a partition's data rows and its quarantine rows, so no reader ever sees one without the other.
        Frames are checked against their contracts before the database is touched.
        """
        frames = [(table, schemas.conform(df, TABLES[table]), where, params) for table, df, where, params in writes]

        def write(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
            counts: dict[str, int] = {}
            for table, frame, where, params in frames:
                counts[table] = counts.get(table, 0) + _delete_insert(con, table, frame, where, params)
            return counts

        return self.run_transaction(write, message=message or "replace " + ", ".join(t for t, *_ in writes))

    def replace_partition(self, table: str, df: pl.DataFrame, day: date) -> int:
        return self.replace_rows(table, df, "day = ?", [day])

    def replace_partitions(self, frames: Mapping[str, pl.DataFrame], day: date) -> dict[str, int]:
        """Replace `day`'s rows of several tables in one transaction."""
        return self.replace_tables([(table, df, "day = ?", [day]) for table, df in frames.items()]).value

    def read_table(
        self, table: str, where: str = "TRUE", params: Sequence[Any] = (), snapshot: int | None = None
    ) -> pl.DataFrame:
        """`table`'s rows matching `where`; as of DuckLake `snapshot` when given (time travel)."""
        schema = TABLES[table]
        cols = ", ".join(schema)
        if snapshot is not None and self.backend != "ducklake":
            raise ValueError(
                f"reading {table} as of snapshot {snapshot} needs the ducklake backend; {self.path} has no history"
            )
        at = f" AT (VERSION => {int(snapshot)})" if snapshot is not None else ""
        df = self.query(f"SELECT {cols} FROM {table}{at} WHERE {where}", params)
        return schemas.conform(df, schema) if df.height else schemas.empty_frame(schema)


_ENSURED_LAKES: set[tuple[int, str, str]] = set()


def _in_transaction(
    con: duckdb.DuckDBPyConnection,
    work: Callable[[duckdb.DuckDBPyConnection], T],
    serialize: str | None,
    commit_message: tuple[str, str] | None,
) -> T:
    con.execute("BEGIN TRANSACTION")
    try:
        if serialize is not None and commit_message is not None:  # the DuckDB file is serialized by its lock
            _claim(con, serialize)
        value = work(con)
        if commit_message is not None:
            message, token = commit_message
            con.execute(
                f"CALL {ducklake.LAKE}.set_commit_message('catalog-posttrain', ?, extra_info => ?)", [message, token]
            )
        con.execute("COMMIT")
        return value
    except BaseException:
        with suppress(duckdb.Error):  # a failed statement or commit may already have ended the transaction
            con.execute("ROLLBACK")
        raise


def _claim(con: duckdb.DuckDBPyConnection, key: str) -> None:
    """Touch `key`'s row of meta.write_claims: DuckLake fails the later of two concurrent commits that both
    delete from one table, so two transactions that claim the same key never both commit unseen by each other."""
    if key not in SERIALIZE_KEYS:
        raise ValueError(f"serialize={key!r} is not one of the warehouse's SERIALIZE_KEYS {SERIALIZE_KEYS}")
    con.execute("UPDATE meta.write_claims SET claims = claims + 1 WHERE key = ?", [key])


def _snapshot_of(con: duckdb.DuckDBPyConnection, token: str) -> int | None:
    row = con.execute(
        f"SELECT max(snapshot_id) FROM {ducklake.LAKE}.snapshots() WHERE commit_extra_info = ?", [token]
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None
