"""DuckLake: the warehouse's catalog in PostgreSQL and its data as Parquet files under a data path.

Many processes on many machines can write one lake: each commit is a new snapshot in the catalog, readers see
a committed snapshot and never a half-written one. Two writers conflict only when both delete from one table
(or change its schema); DuckLake then fails the later commit, and `Warehouse.run_transaction` runs the whole
transaction again.

The extensions come from PyPI packages built for the pinned duckdb (`duckdb-extension-ducklake`,
`duckdb-extension-postgres-scanner`) and are loaded by path, with DuckDB's extension auto-install and auto-load
off: nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib
import os
import random
import re
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import duckdb

from core.settings import ObjectStoreSettings, object_store_settings

LAKE = "lake"  # the catalog name the lake is attached under on every connection

# DuckDB settings for every connection this platform opens (the embedded file too): never fetch an extension.
OFFLINE_CONFIG = {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}

_EXTENSIONS = (
    ("duckdb_extension_postgres_scanner", "postgres_scanner", "duckdb-extension-postgres-scanner"),
    ("duckdb_extension_ducklake", "ducklake", "duckdb-extension-ducklake"),
)
_HTTPFS = ("duckdb_extension_httpfs", "httpfs", "duckdb-extension-httpfs")


def extension_file(module: str, name: str, distribution: str) -> Path:
    """The `.duckdb_extension` file a PyPI extension package ships for the installed duckdb."""
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeError(
            f"WAREHOUSE_BACKEND=ducklake needs the PyPI package {distribution}=={duckdb.__version__} "
            f"(pip install '{distribution}=={duckdb.__version__}'; it is a dependency of this project)"
        ) from exc
    root = Path(next(iter(package.__path__))) / "extensions"
    path = root / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.is_file():
        built_for = sorted(p.name for p in root.glob("v*")) if root.is_dir() else []
        raise RuntimeError(
            f"{distribution} has no {name} extension for duckdb {duckdb.__version__} (it has {built_for or 'none'}): "
            f"install {distribution}=={duckdb.__version__}, the version of duckdb this project pins"
        )
    return path


def attach_sql(catalog: str, data_path: str) -> str:
    """ATTACH statement for a lake whose catalog is the PostgreSQL database `catalog` (a libpq conninfo)."""
    quoted_catalog = catalog.replace("'", "''")
    quoted_path = data_path.replace("'", "''")
    return f"ATTACH 'ducklake:postgres:{quoted_catalog}' AS {LAKE} (DATA_PATH '{quoted_path}')"


def local_data_path(data_path: str) -> bool:
    return "://" not in data_path


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def s3_secret_sql(store: ObjectStoreSettings) -> str:
    """DuckDB secret for s3:// data paths from the AWS_* settings (an S3-compatible endpoint when one is set)."""
    options = ["TYPE s3", f"REGION {_sql_text(store.region)}"]
    if store.key_id:
        options += [f"KEY_ID {_sql_text(store.key_id)}", f"SECRET {_sql_text(store.secret)}"]
    if store.session_token:
        options.append(f"SESSION_TOKEN {_sql_text(store.session_token)}")
    if store.endpoint_url:
        endpoint = urlsplit(store.endpoint_url)
        if not endpoint.netloc:
            raise ValueError(f"AWS_ENDPOINT_URL={store.endpoint_url!r} must be a URL such as http://127.0.0.1:9000")
        options += [
            f"ENDPOINT {_sql_text(endpoint.netloc)}",
            "URL_STYLE 'path'",  # what S3-compatible servers serve; AWS itself needs no endpoint
            f"USE_SSL {'true' if endpoint.scheme == 'https' else 'false'}",
        ]
    return f"CREATE OR REPLACE SECRET platform_s3 ({', '.join(options)})"


ATTACH_ATTEMPTS = 6


def _lost_initialization_race(exc: duckdb.Error) -> bool:
    """Two processes that attach a new catalog at once both create its metadata tables; one loses."""
    text = str(exc)
    return "Failed to initialize DuckLake" in text and ("already exists" in text or "duplicate key" in text)


def open_lake(catalog: str, data_path: str) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB with the extensions loaded and the lake attached."""
    if local_data_path(data_path):
        Path(data_path).mkdir(parents=True, exist_ok=True)
    elif not data_path.startswith("s3://"):
        raise ValueError(f"DUCKLAKE_DATA_PATH={data_path!r}: use a directory or an s3:// URL")
    for attempt in range(ATTACH_ATTEMPTS):
        con = duckdb.connect(config=dict(OFFLINE_CONFIG))
        try:
            for module, name, distribution in _EXTENSIONS:
                con.execute(f"LOAD '{extension_file(module, name, distribution)}'")
            if data_path.startswith("s3://"):
                con.execute(f"LOAD '{extension_file(*_HTTPFS)}'")
                con.execute(s3_secret_sql(object_store_settings()))
            con.execute(attach_sql(catalog, data_path))
            return con
        except duckdb.Error as exc:
            con.close()
            if _lost_initialization_race(exc) and attempt + 1 < ATTACH_ATTEMPTS:
                time.sleep(0.1 * (attempt + 1) * (0.5 + random.random()))  # the winner finishes creating them
                continue
            raise RuntimeError(
                f"cannot attach the DuckLake catalog {redact(catalog)!r} with data path {data_path!r}: "
                f"{redact(str(exc))}. Check that PostgreSQL is reachable and the database exists (make dev-team "
                "starts one locally), and that the data path is the one this catalog was created with."
            ) from exc
    raise AssertionError("unreachable")


_LAKES: dict[tuple[int, str, str], duckdb.DuckDBPyConnection] = {}
_LAKES_GUARD = threading.Lock()


def lake_root(catalog: str, data_path: str) -> duckdb.DuckDBPyConnection:
    """This process's attached lake (attached once: loading the extensions and attaching costs ~0.3 s).

    Callers take a `.cursor()` per transaction: cursors share the attachment but each has its own transaction.
    Keyed by pid as well, so a forked child attaches its own instead of using its parent's sockets.
    """
    key = (os.getpid(), catalog, data_path)
    with _LAKES_GUARD:
        root = _LAKES.get(key)
        if root is None:
            root = _LAKES[key] = open_lake(catalog, data_path)
        return root


def forget_lake(catalog: str, data_path: str) -> None:
    """Close this process's attachment (tests that drop a catalog database; nothing else needs it)."""
    with _LAKES_GUARD:
        root = _LAKES.pop((os.getpid(), catalog, data_path), None)
    if root is not None:
        root.close()


def is_conflict(exc: BaseException) -> bool:
    """Whether a failed commit lost to a concurrent one (worth running the transaction again)."""
    text = str(exc).lower()
    # A logical conflict, or the race for the next snapshot id outlasting DuckLake's own retries.
    return isinstance(exc, duckdb.Error) and ("transaction conflict" in text or "duplicate key" in text)


def redact(text: str) -> str:
    """`text` (a libpq conninfo, or a message quoting one) without the password, for messages and metadata."""
    return re.sub(r"password\s*=\s*('[^']*'|\S+)", "password=***", text)
