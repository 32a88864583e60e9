import datetime as dt
import threading
from pathlib import Path

import polars as pl
import pytest

from core import schemas
from resources.warehouse import DuckDBWarehouse


def _events(day: dt.date, n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "member_id": [f"m{i}" for i in range(n)],
            "title_id": ["t1"] * n,
            "ts": [dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)] * n,
            "event": ["play"] * n,
            "value": [None] * n,
            "day": [day] * n,
        },
        schema=schemas.INTERACTIONS_SCHEMA,
    )


def test_loading_a_partition_twice_gives_the_same_table(tmp_path: Path) -> None:
    wh = DuckDBWarehouse(path=str(tmp_path / "w.duckdb"))
    d1, d2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    wh.replace_partition("raw.interactions", _events(d1, 3), d1)
    wh.replace_partition("raw.interactions", _events(d2, 2), d2)
    wh.replace_partition("raw.interactions", _events(d1, 3), d1)
    counts = wh.query("SELECT day, count(*) AS n FROM raw.interactions GROUP BY day ORDER BY day")
    assert counts.rows() == [(d1, 3), (d2, 2)]


def test_failed_write_rolls_back(tmp_path: Path) -> None:
    wh = DuckDBWarehouse(path=str(tmp_path / "w.duckdb"))
    d1 = dt.date(2026, 1, 1)
    wh.replace_partition("raw.interactions", _events(d1, 3), d1)
    with pytest.raises(ValueError, match="missing contract columns"):
        wh.replace_partition("raw.interactions", _events(d1, 1).drop("event"), d1)
    assert wh.query("SELECT count(*) AS n FROM raw.interactions")["n"][0] == 3


def test_round_trip_keeps_contract_dtypes(tmp_path: Path) -> None:
    wh = DuckDBWarehouse(path=str(tmp_path / "w.duckdb"))
    d1 = dt.date(2026, 1, 1)
    wh.replace_partition("raw.interactions", _events(d1, 2), d1)
    assert dict(wh.read_table("raw.interactions").schema) == schemas.INTERACTIONS_SCHEMA
    assert dict(wh.read_table("curated.conversations").schema) == schemas.CONVERSATIONS_SCHEMA


def test_writer_waits_for_a_lock_held_by_another_process(tmp_path: Path) -> None:
    """Dagster runs steps in separate processes; a second writer must wait, not fail."""
    import subprocess
    import sys

    db = tmp_path / "w.duckdb"
    wh = DuckDBWarehouse(path=str(db), lock_timeout_s=30)
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
    wh.replace_partition("raw.interactions", _events(d1, 1), d1)
    done.set()
    holder.wait(timeout=30)
    assert wh.query("SELECT count(*) AS n FROM raw.interactions")["n"][0] == 1
