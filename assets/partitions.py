"""Partitions shared by the daily assets, and the check that a range of days falls inside them."""

from __future__ import annotations

from datetime import date

import dagster as dg

from core.settings import load_settings

# end_offset=1: today's partition exists, so a drop that lands today can be ingested today.
daily_partitions = dg.DailyPartitionsDefinition(start_date=load_settings().partition_start.isoformat(), end_offset=1)


class OutsidePartitions(ValueError):
    """Days that have no daily partition: raised before any run, with the setting to change."""


def first_partition_day() -> date:
    """PLATFORM_PARTITION_START as the partitions read it (also when it lies in the future and no partition exists)."""
    return daily_partitions.start.date()


def last_partition_day() -> date:
    """Today (UTC): the last partition that exists now."""
    return date.fromisoformat(daily_partitions.get_last_partition_key())


def require_within_partitions(first: date, last: date, what: str, data_first_day: date | None = None) -> None:
    """Fail with the variable to set when `first..last` leaves the daily partitions.

    Dagster's own error for such a day ("All selected assets must have a PartitionsDefinition containing the
    passed partition key") names neither PLATFORM_PARTITION_START nor the day it should be. `data_first_day`,
    when known, is the first day of the user's data: the value to suggest, rather than the requested day.
    """
    start, end = first_partition_day(), last_partition_day()
    if first < start:
        suggested = min(first, data_first_day) if data_first_day else first
        raise OutsidePartitions(
            f"{what} starts on {first}, before the first daily partition ({start}): "
            f"set PLATFORM_PARTITION_START={suggested.isoformat()}"
        )
    if last > end:
        raise OutsidePartitions(
            f"{what} runs to {last}, after the last daily partition ({end}, today in UTC): a day gets its "
            "partition when it begins; leave out the days that have not begun"
        )
