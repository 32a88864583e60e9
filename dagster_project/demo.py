"""`make demo`: materialize the whole asset graph for a range of days, then train and evaluate.

Runs go through the Dagster instance in DAGSTER_HOME (SQLite), so every run,
materialization and asset check shows up in `dagster dev` afterwards. The data half
is `make ingest`'s (dagster_project.materialize), with the same checks of the days.

Days: `--from` (default PLATFORM_PARTITION_START) and either `--to` or `--days`. The
synthetic source defaults to SYNTHETIC_DAYS days; with PLATFORM_DATA_SOURCE=files
the days must be given, since only the user knows which of their data's days to run.
"""

from __future__ import annotations

import argparse
from datetime import date, timedelta
from typing import TYPE_CHECKING

import dagster as dg

from dagster_project.ingest import parse_day
from dagster_project.instance import ensure_dagster_home

if TYPE_CHECKING:
    from core.settings import PlatformSettings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dagster_project.demo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--from", dest="first", type=parse_day, help="first day (default PLATFORM_PARTITION_START)")
    span = parser.add_mutually_exclusive_group()
    span.add_argument("--to", dest="last", type=parse_day, help="last day, included")
    span.add_argument("--days", type=int, help="number of days from --from (synthetic default: SYNTHETIC_DAYS)")
    parser.add_argument("--skip-training", action="store_true", help="stop after tokenized_shards")
    parser.add_argument(
        "--preference",
        action="store_true",
        help="after SFT and its evaluation, preference-train the champion (preference_job) and evaluate that too",
    )
    parser.add_argument(
        "--sft-steps",
        type=int,
        help="optimizer steps of the SFT run (default: the training default, TrainConfig max_steps)",
    )
    args = parser.parse_args(argv)
    if args.sft_steps is not None and args.sft_steps < 1:
        parser.error(f"--sft-steps {args.sft_steps}: give at least 1")
    return args


def training_run_config(sft_steps: int | None) -> dict[str, object]:
    """training_job's run config for the demo: the defaults, or only the step count changed."""
    if sft_steps is None:
        return {}
    return {"ops": {"trained_checkpoint": {"config": {"max_steps": sft_steps}}}}


def demo_days(args: argparse.Namespace, settings: PlatformSettings) -> tuple[date, date]:
    """The first and last day the flags ask for; SYNTHETIC_DAYS sizes only the synthetic source's default."""
    first = args.first or settings.partition_start
    if args.last is not None:
        return first, args.last
    if args.days is not None:
        if args.days < 1:
            raise ValueError(f"--days {args.days}: give at least 1")
        return first, first + timedelta(days=args.days - 1)
    if settings.data_source == "files":
        raise ValueError(
            "with PLATFORM_DATA_SOURCE=files give the days to run: --to YYYY-MM-DD or --days N "
            f"(counted from --from, default PLATFORM_PARTITION_START={settings.partition_start})"
        )
    return first, first + timedelta(days=settings.synthetic_days - 1)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ensure_dagster_home()
    # Imported after the arguments are parsed: these read the settings at import, and `--help` needs none.
    from core.settings import load_settings
    from dagster_project.day_range import check_days, days_between
    from dagster_project.materialize import Runner, StepFailed, materialize_days
    from dagster_project.report import print_summary
    from dagster_project.resources import build_artifacts

    settings = load_settings()
    try:
        first, last = demo_days(args, settings)
        check_days(settings, first, last)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    days = days_between(first, last)

    from dagster_project.definitions import defs

    runner = Runner(dg.DagsterInstance.get(), defs)
    print(f"PLATFORM_HOME={settings.home}  days={days[0]}..{days[-1]}")
    try:
        outcome = materialize_days(runner, days, build_artifacts(settings), rebuild_base_model=True, keep_going=False)
        training = preference = None
        if not args.skip_training:
            print("  train + evaluate")
            training = runner.run(
                "training_job", "trained_checkpoint+eval_report", run_config=training_run_config(args.sft_steps)
            )
            if args.preference:
                print("  preference-train + evaluate")
                preference = runner.run("preference_job", "preference_checkpoint+eval_report", gate_may_refuse=True)
    except StepFailed as exc:
        raise SystemExit(f"demo {exc}; see `dagster dev` for the run") from exc

    print("\nwall time per step (s):")
    for label, seconds in runner.timings.items():
        print(f"  {label:42s} {seconds:8.1f}")
    print_summary(settings, days)
    if training is not None:
        print_training(training)
    if preference is not None:
        print_preference(preference)
    if outcome.tokenize_seconds:
        print(
            f"  tokenization throughput: {outcome.tokens / outcome.tokenize_seconds:,.0f} tokens/s "
            "(render+tokenize+mask)"
        )


def _metadata_of(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object] | None:
    for event in result.get_asset_materialization_events():
        if event.asset_key == dg.AssetKey(asset):
            return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
    return None


def _number(meta: dict[str, object], key: str) -> str:
    value = meta.get(key)
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_training(result: dg.ExecuteInProcessResult) -> None:
    """The trained checkpoint's throughput and the eval report's losses, hit rates and gate decision."""
    meta = _metadata_of(result, "trained_checkpoint")
    if meta:
        print(
            f"\ntrained_checkpoint: {meta['steps']} steps on {meta['world_size']} processes, "
            f"{meta['tokens_seen']:,} tokens, final loss {meta['final_loss']:.4f}, "
            f"{meta['tokens_per_second']:,.0f} tokens/s, packing efficiency {meta['packing_efficiency']:.3f}, "
            f"MFU estimate {meta['mfu_estimate']:.2f}"
        )
    print_training_eval(result, "eval_report")


def print_training_eval(result: dg.ExecuteInProcessResult, title: str) -> None:
    meta = _metadata_of(result, "eval_report")
    if meta:
        print(f"\n{title}:")
        for name in ("validation_loss", "test_loss", "base_model_validation_loss"):
            print(f"  {name:28s} {meta[name]:.4f}")
        print("  ranking the same candidates, test split (95% bootstrap interval):")
        for system in ("model", "base_model", "popularity", "cooccurrence"):
            cells = "  ".join(f"{k} {_number(meta, f'{system}/{k}')}" for k in ("hit@1", "hit@5", "hit@10", "ndcg@10"))
            print(f"  {system:12s} {cells}  hit@5 {meta.get(f'{system}/hit@5_ci', '—')}  n {meta.get(f'{system}/n')}")
        for baseline in ("popularity", "cooccurrence", "base_model"):
            verdicts = {k: meta.get(f"model_beats/{baseline}/{k}") for k in ("hit@5", "ndcg@10")}
            print(f"  model beats {baseline:12s} " + "  ".join(f"{k}: {v}" for k, v in verdicts.items()))
        print(f"  promoted: {meta['promoted']}  (champion compared: {meta['champion']})")

    if meta and "preference/n" in meta:
        print_pairs(meta)


def print_pairs(meta: dict[str, object]) -> None:
    keys = ("accuracy", "reward_margin", "likelihood_accuracy")
    cells = "  ".join(f"{k} {_number(meta, f'preference/{k}')} {meta.get(f'preference/{k}_ci', '')}" for k in keys)
    print(f"  held-out pairs (test, n {meta['preference/n']}): {cells}")


def print_preference(result: dg.ExecuteInProcessResult) -> None:
    """The preference checkpoint's run and its evaluation, next to the SFT champion's."""
    meta = _metadata_of(result, "preference_checkpoint")
    if meta:
        print(
            f"\npreference_checkpoint: {meta['steps']} steps from {meta['start_champion']}, final loss "
            f"{meta['final_loss']:.4f}, train accuracy {meta['final_accuracy']:.3f}, reward margin "
            f"{meta['final_reward_margin']:.3f}, {meta['tokens_per_second']:,.0f} tokens/s, "
            f"{meta['trainable_parameters']:,} trainable parameters"
        )
    print_training_eval(result, "eval_report of the preference checkpoint")


if __name__ == "__main__":
    main()
