"""`make demo`: materialize the asset graph for the demo days on the embedded default.

Runs go through the Dagster instance in DAGSTER_HOME (SQLite), so every run,
materialization and asset check shows up in `dagster dev` afterwards.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

import dagster as dg

from dagster_project.instance import ensure_dagster_home


def _run(job: dg.JobDefinition, instance: dg.DagsterInstance, label: str, timings: dict[str, float], **kwargs) -> None:
    start = time.perf_counter()
    result = job.execute_in_process(instance=instance, raise_on_error=False, **kwargs)
    timings[label] = timings.get(label, 0.0) + time.perf_counter() - start
    if not result.success:
        raise SystemExit(f"demo step {label} failed ({kwargs.get('partition_key', '')}); see `dagster dev` for the run")
    failed_checks = [
        f"{e.asset_check_evaluation_data.asset_key.to_user_string()}:{e.asset_check_evaluation_data.check_name}"
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.asset_check_evaluation_data.passed
    ]
    if failed_checks:
        print(f"  ! failed asset checks in {label}: {failed_checks}")
    return result


def _metadata_number(result: dg.ExecuteInProcessResult, key: str) -> float:
    total = 0.0
    for event in result.get_asset_materialization_events():
        value = event.materialization.metadata.get(key)
        total += float(value.value) if value is not None else 0.0
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=None, help="demo days (default SYNTHETIC_DAYS)")
    parser.add_argument("--skip-training", action="store_true", help="stop after tokenized_shards")
    args = parser.parse_args(argv)
    ensure_dagster_home()

    from core.settings import load_settings
    from dagster_project.definitions import defs

    settings = load_settings()
    n_days = args.days or settings.synthetic_days
    days = [(settings.partition_start + timedelta(days=i)).isoformat() for i in range(n_days)]
    instance = dg.DagsterInstance.get()
    ingestion = defs.resolve_job_def("ingestion_job")
    key = dg.AssetKey
    timings: dict[str, float] = {}

    print(f"PLATFORM_HOME={settings.home}  days={days[0]}..{days[-1]}")
    _run(defs.resolve_job_def("catalog_job"), instance, "raw_catalog", timings)
    for day in days:
        print(f"  ingest {day}")
        _run(
            ingestion,
            instance,
            "raw_interactions+curated_conversations",
            timings,
            partition_key=day,
            asset_selection=[key("raw_interactions"), key("curated_conversations")],
        )
    _run(defs.resolve_job_def("base_model_job"), instance, "base_model", timings)
    tokens = tokenize_seconds = 0.0
    for day in days:
        print(f"  tokenize {day}")
        result = _run(
            ingestion,
            instance,
            "tokenized_shards",
            timings,
            partition_key=day,
            asset_selection=[key("tokenized_shards")],
        )
        tokens += _metadata_number(result, "tokens")
        tokenize_seconds += _metadata_number(result, "tokenize_seconds")
    evals: list = []
    trains: list = []
    if not args.skip_training:
        print("  train + evaluate")
        result = _run(defs.resolve_job_def("training_job"), instance, "trained_checkpoint+eval_report", timings)
        evals = [
            e.materialization.metadata
            for e in result.get_asset_materialization_events()
            if e.asset_key == key("eval_report")
        ]
        trains = [
            e.materialization.metadata
            for e in result.get_asset_materialization_events()
            if e.asset_key == key("trained_checkpoint")
        ]
    print("\nwall time per step (s):")
    for label, seconds in timings.items():
        print(f"  {label:42s} {seconds:8.1f}")
    from dagster_project.report import print_summary

    print_summary(settings, days)
    if trains:
        meta = {k: getattr(v, "value", v) for k, v in trains[0].items()}
        print(
            f"\ntrained_checkpoint: {meta['steps']} steps on {meta['world_size']} processes, "
            f"{meta['tokens_seen']:,} tokens, final loss {meta['final_loss']:.4f}, "
            f"{meta['tokens_per_second']:,.0f} tokens/s, packing efficiency {meta['packing_efficiency']:.3f}, "
            f"MFU estimate {meta['mfu_estimate']:.2f}"
        )
    if evals:
        meta = {k: getattr(v, "value", v) for k, v in evals[0].items()}
        print("\neval_report:")
        for name in ("validation_loss", "test_loss", "base_model_validation_loss"):
            print(f"  {name:28s} {meta[name]:.4f}")
        for system in ("model", "base_model", "popularity"):
            print(f"  {system:12s} hit@1 {meta[system + '/hit@1']:.3f}  hit@5 {meta[system + '/hit@5']:.3f}")
        print(f"  promoted: {meta['promoted']}  (champion compared: {meta['champion']})")
    if tokenize_seconds:
        print(f"  tokenization throughput: {tokens / tokenize_seconds:,.0f} tokens/s (render+tokenize+mask)")


if __name__ == "__main__":
    main()
