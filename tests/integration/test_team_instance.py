"""`make dev-team`'s instance: Dagster's storage on PostgreSQL, day runs side by side, the warehouse on DuckLake."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from core.local_postgres import SUPERUSER, LocalPostgres
from dagster_project.instance import INSTANCE_TEMPLATE, instance_config_gaps
from dagster_project.team_dev import team_instance_config


def _template() -> dict:
    return yaml.safe_load(INSTANCE_TEMPLATE.read_text())


def test_the_team_config_keeps_run_monitoring_and_opens_the_ingestion_lane() -> None:
    config = team_instance_config(_template(), "postgresql://u@127.0.0.1:5433/dagster", ingestion_runs=4)
    assert config["storage"] == {"postgres": {"postgres_url": "postgresql://u@127.0.0.1:5433/dagster"}}
    [lane] = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert lane == {"key": "platform/lane", "value": "ingestion", "limit": 4}
    assert instance_config_gaps(config) == []
    assert _template()["concurrency"]["runs"]["tag_concurrency_limits"][0]["limit"] == 1  # the template is untouched


@pytest.mark.slow
def test_runs_of_the_team_instance_are_stored_in_postgres_and_write_the_lake(
    postgres_server: LocalPostgres, lake_warehouse, tmp_path: Path
) -> None:
    from dagster_postgres import PostgresRunStorage

    from assets.catalog import raw_catalog
    from resources.landing import LandingArea

    postgres_server.create_database("dagster_team_test")
    url = f"postgresql+psycopg2://{SUPERUSER}@{postgres_server.host}:{postgres_server.port}/dagster_team_test"
    home = tmp_path / "dagster"
    home.mkdir()
    config = team_instance_config(_template(), url, ingestion_runs=4)
    config.pop("run_launcher")  # the local launcher's health checks need a daemon; storage is what is tested
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        landing = LandingArea(root=str(tmp_path / "landing"), synthetic_titles=30, synthetic_members=20)
        result = dg.materialize(
            [raw_catalog], resources={"warehouse": lake_warehouse, "landing": landing}, instance=instance
        )
        assert result.success
        [run] = instance.get_runs()
        event = instance.get_latest_materialization_event(dg.AssetKey("raw_catalog"))
        assert event is not None and event.run_id == run.run_id
        assert "warehouse/snapshot" in event.asset_materialization.metadata
    assert lake_warehouse.query("SELECT count(*) AS n FROM raw.catalog")["n"][0] == 30
