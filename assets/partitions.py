"""Partitions shared by the daily assets."""

from __future__ import annotations

import dagster as dg

from core.settings import load_settings

# end_offset=1: today's partition exists, so a drop that lands today can be ingested today.
daily_partitions = dg.DailyPartitionsDefinition(start_date=load_settings().partition_start.isoformat(), end_offset=1)
