"""The checks `make ingest` and the demo run before anything: the data's dates, the partitions, the demo's days."""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from assets.partitions import OutsidePartitions, first_partition_day, last_partition_day
from core.settings import PlatformSettings, load_settings
from dagster_project.day_range import check_days, days_between, interaction_dates
from dagster_project.demo import demo_days, parse_args

START = first_partition_day()


def files_settings(pattern: str, timestamp_column: str = "timestamp") -> PlatformSettings:
    mapping = {"member_id": "userId", "title_id": "movieId", "timestamp": timestamp_column}
    return dataclasses.replace(
        load_settings(), data_source="files", interaction_files=pattern, interaction_mapping=json.dumps(mapping)
    )


def epoch(day: date, hour: int = 12) -> int:
    return int(datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp())


def test_dates_come_from_the_timestamp_column_with_its_header_trimmed(tmp_path: Path) -> None:
    first, last = START + timedelta(days=3), START + timedelta(days=9)
    rows = [
        "userId,movieId, timestamp ",
        f"1,10,{epoch(first, 0)}",
        f"2,11,{last.isoformat()}T23:59:59Z",
        "3,12,not-a-time",
        f"4,13,{epoch(first + timedelta(days=1))}",
    ]
    (tmp_path / "ratings.csv").write_text("\n".join(rows) + "\n")
    dates = interaction_dates(files_settings(str(tmp_path / "ratings.csv")))
    assert dates is not None and (dates.first, dates.last) == (first, last)
    assert str(tmp_path / "ratings.csv") in dates.origin


def test_dates_span_every_matched_file_csv_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text(f"userId,movieId,timestamp\n1,2,{epoch(START + timedelta(days=5))}\n")
    stamps = [datetime(START.year, START.month, START.day, 8) + timedelta(days=d) for d in (2, 30)]
    pl.DataFrame({"userId": [1, 2], "movieId": [3, 4], "timestamp": stamps}).write_parquet(tmp_path / "b.parquet")
    dates = interaction_dates(files_settings(str(tmp_path / "*")))
    assert dates is not None
    assert (dates.first, dates.last) == (START + timedelta(days=2), START + timedelta(days=30))
    assert "2 files" in dates.origin


def test_dates_of_a_day_pattern_come_from_the_folders_alone(tmp_path: Path) -> None:
    for name in ("2025-03-04", "2025-03-01", "2025-13-45", "latest"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "events-1.parquet").write_bytes(b"not opened")
    dates = interaction_dates(files_settings(str(tmp_path / "{day}" / "events-*.parquet")))
    assert dates is not None and (dates.first, dates.last) == (date(2025, 3, 1), date(2025, 3, 4))


def test_a_timestamp_column_missing_from_the_header_is_named_with_the_columns_present(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,when\n1,2,3\n")
    with pytest.raises(ValueError, match=r"'timestamp' is not in the header.*'when'"):
        interaction_dates(files_settings(str(tmp_path / "ratings.csv")))


def test_no_files_and_the_synthetic_source() -> None:
    with pytest.raises(FileNotFoundError, match="INTERACTION_FILES"):
        interaction_dates(files_settings("/nonexistent/ratings-*.csv"))
    assert interaction_dates(dataclasses.replace(load_settings(), data_source="synthetic")) is None


def test_data_before_the_partitions_names_the_variable_and_the_data_first_day(tmp_path: Path) -> None:
    early = START - timedelta(days=40)
    (tmp_path / "r.csv").write_text(f"userId,movieId,timestamp\n1,2,{epoch(early)}\n1,3,{epoch(START)}\n")
    with pytest.raises(OutsidePartitions, match=f"starts on {early}.*set PLATFORM_PARTITION_START={early}$"):
        check_days(files_settings(str(tmp_path / "r.csv")), START, START)


def test_requested_days_outside_the_partitions_or_the_data(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text(f"userId,movieId,timestamp\n1,2,{epoch(START + timedelta(days=1))}\n")
    settings = files_settings(str(tmp_path / "r.csv"))
    with pytest.raises(OutsidePartitions, match=f"set PLATFORM_PARTITION_START={START - timedelta(days=1)}$"):
        check_days(settings, START - timedelta(days=1), START + timedelta(days=1))
    with pytest.raises(OutsidePartitions, match="after the last daily partition"):
        check_days(settings, START, last_partition_day() + timedelta(days=1))
    with pytest.raises(ValueError, match="holds none of your interaction data"):
        check_days(settings, START + timedelta(days=2), START + timedelta(days=3))
    with pytest.raises(ValueError, match="is after the last day"):
        check_days(settings, START + timedelta(days=1), START)
    assert check_days(settings, START, START + timedelta(days=2)).first == START + timedelta(days=1)
    assert days_between(START, START + timedelta(days=2))[-1] == (START + timedelta(days=2)).isoformat()


def demo_args(*argv: str) -> argparse.Namespace:
    return parse_args(list(argv))


def test_demo_days_files_source_needs_explicit_days() -> None:
    files = dataclasses.replace(load_settings(), data_source="files", synthetic_days=7)
    with pytest.raises(ValueError, match="--to YYYY-MM-DD or --days N"):
        demo_days(demo_args(), files)
    assert demo_days(demo_args("--days", "2"), files) == (START, START + timedelta(days=1))
    assert demo_days(demo_args("--from", "2026-02-01", "--to", "2026-02-03"), files) == (
        date(2026, 2, 1),
        date(2026, 2, 3),
    )
    synthetic = dataclasses.replace(files, data_source="synthetic", synthetic_days=3)
    assert demo_days(demo_args(), synthetic) == (START, START + timedelta(days=2))
    with pytest.raises(SystemExit):
        demo_args("--to", "2026-02-03", "--days", "2")


def test_demo_sft_steps_is_a_valid_training_job_config() -> None:
    import dagster as dg

    from dagster_project.definitions import defs
    from dagster_project.demo import training_run_config

    job = defs.resolve_job_def("training_job")
    config = training_run_config(demo_args("--sft-steps", "450").sft_steps)
    assert dg.validate_run_config(job, config)["ops"]["trained_checkpoint"]["config"]["max_steps"] == 450
    assert training_run_config(demo_args().sft_steps) == {}  # the training defaults, unchanged
    with pytest.raises(SystemExit):
        demo_args("--sft-steps", "0")
