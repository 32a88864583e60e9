"""DuckLake warehouses for tests: each on its own catalog database of the worker's PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

from core.local_postgres import LocalPostgres
from resources import ducklake
from resources.warehouse import Warehouse


def new_lake_warehouse(server: LocalPostgres, data_path: Path | str) -> Iterator[Warehouse]:
    """A Warehouse on a new catalog database; this process's attachment is closed afterwards."""
    catalog = server.create_database(f"lake_{uuid.uuid4().hex[:12]}")
    warehouse = Warehouse(backend="ducklake", ducklake_catalog=catalog, ducklake_data_path=str(data_path))
    yield warehouse
    ducklake.forget_lake(catalog, str(data_path))
