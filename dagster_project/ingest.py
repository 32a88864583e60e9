"""`make ingest FROM=YYYY-MM-DD TO=YYYY-MM-DD`: catalog -> days -> base model -> shards for a range of days.

One process for the whole range, against the Dagster instance in DAGSTER_HOME, so every run shows in
`dagster dev` with its lineage and checks. raw_catalog runs once, then raw_interactions + curated_conversations
per day, base_model when none is materialized yet, and tokenized_shards per day.

The days are checked before anything runs (see dagster_project.day_range): a day outside the daily partitions,
or files whose events lie outside them, stop the command with the setting to change. A day that fails is
reported and the other days go on. Exit status: 0 when every day got shards, 1 when a day (or the catalog or
base model) failed, 2 when the days cannot run at all.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date

import dagster as dg

from dagster_project.instance import ensure_dagster_home


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day like 2026-01-01") from exc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dagster_project.ingest", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--from", dest="first", type=parse_day, required=True, help="first day (UTC), YYYY-MM-DD")
    parser.add_argument("--to", dest="last", type=parse_day, required=True, help="last day (UTC), included")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as the days go, also through a pipe
    ensure_dagster_home()
    # Imported after the arguments are parsed: these read the settings at import, and `--help` needs none.
    from core.settings import load_settings
    from dagster_project.day_range import check_days, days_between
    from dagster_project.materialize import Runner, StepFailed, materialize_days
    from dagster_project.resources import build_artifacts

    settings = load_settings()
    try:
        data = check_days(settings, args.first, args.last)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    days = days_between(args.first, args.last)
    print(f"PLATFORM_HOME={settings.home}  source={settings.data_source}  days={days[0]}..{days[-1]} ({len(days)})")
    if data is not None:
        print(f"  your interaction data covers {data.first}..{data.last} ({data.origin})")

    from dagster_project.definitions import defs

    runner = Runner(dg.DagsterInstance.get(), defs)
    try:
        outcome = materialize_days(runner, days, build_artifacts(settings), rebuild_base_model=False, keep_going=True)
    except StepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\ntokenized_shards per day:")
    for day, result in outcome.shards.items():
        meta = next(
            e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("tokenized_shards")
        ).materialization.metadata
        print(
            f"  {day}  {meta['dagster/row_count'].value:,} conversations, {meta['tokens'].value:,} tokens, "
            f"{meta['loss_tokens'].value:,} loss tokens  {meta['path'].value}"
        )
    if outcome.failed:
        print(f"\n{len(outcome.failed)} of {len(days)} days failed (the others are done):", file=sys.stderr)
        for day, why in outcome.failed.items():
            print(f"  {day}: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
