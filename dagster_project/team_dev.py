"""`make dev-team`: the team set-up on one machine, to try it before a cluster.

It starts PostgreSQL (Debian's package, core/local_postgres.py) under PLATFORM_HOME/postgres, creates two
databases on it (`lake`, the DuckLake catalog; `dagster`, Dagster's run, event and schedule storage), writes
DAGSTER_HOME/dagster.yaml with PostgreSQL storage and several ingestion runs at once, and runs `dagster dev`
with WAREHOUSE_BACKEND=ducklake. PostgreSQL keeps running after `dagster dev` stops (`make dev-team-stop`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

from core.local_postgres import SUPERUSER, LocalPostgres
from core.settings import REPO_ROOT, dagster_home, ingestion_concurrency, load_settings, team_postgres_port
from dagster_project.instance import INSTANCE_TEMPLATE

LAKE_DATABASE = "lake"
DAGSTER_DATABASE = "dagster"


def team_instance_config(template: dict[str, Any], postgres_url: str, ingestion_runs: int) -> dict[str, Any]:
    """The embedded instance config with Dagster's storage on PostgreSQL and `ingestion_runs` day runs at once.

    One run at a time is what the DuckDB file needs; DuckLake takes concurrent writers, so a backfill's days run
    side by side (curation's cross-day dedup holds under concurrency, see assets/conversations.py).
    """
    config = {**template, "storage": {"postgres": {"postgres_url": postgres_url}}}
    runs = dict(config["concurrency"]["runs"])
    runs["tag_concurrency_limits"] = [
        {**limit, "limit": ingestion_runs} if limit.get("key") == "platform/lane" else limit
        for limit in runs["tag_concurrency_limits"]
    ]
    config["concurrency"] = {**config["concurrency"], "runs": runs}
    return config


def prepare() -> dict[str, str]:
    """Start PostgreSQL, create the databases and DAGSTER_HOME; the environment `dagster dev` needs."""
    settings = load_settings()
    server = LocalPostgres(settings.home / "postgres", team_postgres_port())
    if (server.pgdata / "postmaster.pid").exists():
        print(f"PostgreSQL already running on {server.host}:{server.port}")
    else:
        server.start()
        print(f"PostgreSQL started on {server.host}:{server.port} (log {server.log_file})")
    catalog = server.create_database(LAKE_DATABASE)
    server.create_database(DAGSTER_DATABASE)
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    # psycopg2, the driver dagster-postgres installs (SQLAlchemy 2.1 would otherwise pick psycopg 3).
    url = f"postgresql+psycopg2://{SUPERUSER}@{server.host}:{server.port}/{DAGSTER_DATABASE}"
    config = team_instance_config(yaml.safe_load(INSTANCE_TEMPLATE.read_text()), url, ingestion_concurrency())
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        "DAGSTER_HOME": str(home),
        "WAREHOUSE_BACKEND": "ducklake",
        "DUCKLAKE_CATALOG": catalog,
        "DUCKLAKE_DATA_PATH": settings.ducklake_data_path,
    }
    for name, value in env.items():
        print(f"  {name}={value}")
    return env


def main() -> None:
    env = {**os.environ, **prepare()}
    dagster = str(Path(sys.executable).with_name("dagster"))
    os.chdir(REPO_ROOT)
    os.execve(dagster, [dagster, "dev", "-w", "workspace.yaml", *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
