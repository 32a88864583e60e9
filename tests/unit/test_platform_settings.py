"""core.settings is the one reader of platform settings: defaults, overrides, blank values, errors naming the
variable, and no other module of the Dagster side reading the environment on its own."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

from core import settings

REPO = Path(__file__).resolve().parents[2]


def test_synthetic_world_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SYNTHETIC_SEED", "SYNTHETIC_TITLES", "SYNTHETIC_MEMBERS", "SYNTHETIC_DAYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PLATFORM_PARTITION_START", " ")  # blank: the default
    assert settings.load_synthetic_settings() == settings.SYNTHETIC_DEFAULTS
    monkeypatch.setenv("SYNTHETIC_TITLES", "60")
    monkeypatch.setenv("PLATFORM_PARTITION_START", "2025-12-01")
    world = settings.load_synthetic_settings()
    assert (world.titles, world.start, world.seed) == (60, date(2025, 12, 1), settings.SYNTHETIC_DEFAULTS.seed)
    loaded = settings.load_settings()
    assert (loaded.synthetic_titles, loaded.partition_start) == (60, date(2025, 12, 1))


@pytest.mark.parametrize(
    ("read", "name", "default"),
    [
        (settings.landing_sensor_interval_seconds, "LANDING_SENSOR_INTERVAL_SECONDS", 30),
        (settings.retrain_sensor_interval_seconds, "RETRAIN_SENSOR_INTERVAL_SECONDS", 60),
        (settings.retrain_min_new_loss_tokens, "RETRAIN_MIN_NEW_LOSS_TOKENS", 200_000),
    ],
)
def test_sensor_settings(monkeypatch: pytest.MonkeyPatch, read, name: str, default: int) -> None:
    monkeypatch.delenv(name, raising=False)
    assert read() == default
    monkeypatch.setenv(name, " 7 ")
    assert read() == 7
    monkeypatch.setenv(name, "0")
    with pytest.raises(ValueError, match=rf"{name}=0 must be >= 1"):
        read()
    monkeypatch.setenv(name, "soon")
    with pytest.raises(ValueError, match=rf"{name}='soon' must be an integer"):
        read()


def test_schedule_and_retrain_run_config_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NIGHTLY_RETRAIN_CRON", raising=False)
    monkeypatch.delenv("RETRAIN_RUN_CONFIG", raising=False)
    assert (settings.nightly_retrain_cron(), settings.retrain_run_config_file()) == ("0 3 * * *", "")
    monkeypatch.setenv("NIGHTLY_RETRAIN_CRON", "15 2 * * *")
    monkeypatch.setenv("RETRAIN_RUN_CONFIG", " ~/retrain.yaml ")
    assert (settings.nightly_retrain_cron(), settings.retrain_run_config_file()) == ("15 2 * * *", "~/retrain.yaml")


def test_dagster_home_defaults_under_the_platform_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLATFORM_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert settings.dagster_home() == tmp_path.resolve() / "dagster"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))
    assert settings.dagster_home() == tmp_path / "elsewhere"


def test_env_var_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CATALOG_FILES", raising=False)
    assert not settings.env_var_as_is("CATALOG_FILES")
    for value, as_is in (("", False), ("   ", False), (" /a/*.csv", False), ("/a/*.csv", True)):
        monkeypatch.setenv("CATALOG_FILES", value)
        assert settings.env_var_as_is("CATALOG_FILES") is as_is, value


# Reads of the environment outside core.settings that are not platform settings: what a launcher passes on to
# the processes it starts (PYTHONPATH). Setting a variable for this process or a child is not a read.
_ALLOWED = {("resources/launchers.py", "PYTHONPATH")}
_READ = re.compile(r"""(?:os\.environ\.get\(|os\.getenv\(|os\.environ\[)\s*["']([A-Z_]+)["'](?!\]\s*=[^=])""")


def test_the_dagster_side_reads_settings_only_through_core_settings() -> None:
    found = set()
    for layer in ("assets", "resources", "dagster_project"):
        for path in sorted((REPO / layer).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            found |= {(rel, name) for name in _READ.findall(path.read_text())}
    assert found - _ALLOWED == set()


def test_warehouse_backend_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLATFORM_HOME", str(tmp_path))
    for name in ("WAREHOUSE_BACKEND", "DUCKLAKE_CATALOG", "DUCKLAKE_DATA_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert settings.load_settings().warehouse_backend == "duckdb"

    monkeypatch.setenv("WAREHOUSE_BACKEND", "ducklake")
    with pytest.raises(ValueError, match="needs DUCKLAKE_CATALOG"):
        settings.load_settings()
    monkeypatch.setenv("DUCKLAKE_CATALOG", "dbname=lake host=127.0.0.1 port=5433 user=platform")
    loaded = settings.load_settings()
    assert loaded.ducklake_data_path == str(tmp_path.resolve() / "lake")

    monkeypatch.setenv("WAREHOUSE_BACKEND", "postgres")
    with pytest.raises(ValueError, match="WAREHOUSE_BACKEND='postgres' is not supported"):
        settings.load_settings()


def test_signal_thresholds_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import load_signal_thresholds
    from core.signals import SignalThresholds

    for name in ("SIGNAL_NEGATIVE_RATING_MAX", "SIGNAL_POSITIVE_RATING_MIN", "SIGNAL_ABANDONED_BELOW"):
        monkeypatch.delenv(name, raising=False)
    assert load_signal_thresholds() == SignalThresholds()
    monkeypatch.setenv("SIGNAL_NEGATIVE_RATING_MAX", "2.5")
    monkeypatch.setenv("SIGNAL_ABANDONED_BELOW", "0.1")
    got = load_signal_thresholds()
    assert (got.negative_rating_max, got.abandoned_below) == (2.5, 0.1)
    monkeypatch.setenv("SIGNAL_POSITIVE_RATING_MIN", "lots")
    with pytest.raises(ValueError, match="SIGNAL_POSITIVE_RATING_MIN='lots' must be a number"):
        load_signal_thresholds()
    monkeypatch.setenv("SIGNAL_POSITIVE_RATING_MIN", "2.0")
    with pytest.raises(ValueError, match=r"SIGNAL_\* settings: .*below positive_rating_min"):
        load_signal_thresholds()
