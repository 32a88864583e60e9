"""The DuckDB warehouse: raw and curated tables with idempotent partition writes.

DuckDB allows one writing process per database file, and Dagster runs steps in
separate processes, so every operation opens a short-lived connection and
retries while another process holds the lock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
        with self.connect() as con:
            con.execute("CREATE SCHEMA IF NOT EXISTS raw")
            con.execute("CREATE SCHEMA IF NOT EXISTS curated")
            for table, schema in TABLES.items():
                con.execute(create_table_sql(table, schema))

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        self.ensure_tables()
        with self.connect() as con:
            table = con.sql(sql, params=list(params or [])).to_arrow_table()
        return pl.from_arrow(table)  # type: ignore[return-value]

    def replace_rows(self, table: str, df: pl.DataFrame, where: str, params: Sequence[Any] = ()) -> int:
        """Delete the rows matching `where`, insert `df`, in one transaction.

        This is what makes loading a partition twice give the same table, not duplicates.
        """
        schema = TABLES[table]
        frame = schemas.conform(df, schema)
        self.ensure_tables()
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"DELETE FROM {table} WHERE {where}", list(params))
                if frame.height:
                    con.register("incoming_rows", frame.to_arrow())
                    cols = ", ".join(schema)
                    con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM incoming_rows")
                    con.unregister("incoming_rows")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return frame.height

    def replace_partition(self, table: str, df: pl.DataFrame, day: date) -> int:
        return self.replace_rows(table, df, "day = ?", [day])

    def read_table(self, table: str, where: str = "TRUE", params: Sequence[Any] = ()) -> pl.DataFrame:
        schema = TABLES[table]
        cols = ", ".join(schema)
        df = self.query(f"SELECT {cols} FROM {table} WHERE {where}", params)
        return schemas.conform(df, schema) if df.height else schemas.empty_frame(schema)
