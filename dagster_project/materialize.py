"""Materialize catalog -> days -> base model -> shards in this process, through the configured Dagster instance.

`make ingest` and `make demo` both run the data half this way. Every job runs in-process, so a range of days
costs one interpreter start instead of one per step (`dagster asset materialize` starts a process per step), and
every run is recorded in DAGSTER_HOME, so `dagster dev` shows the runs, checks and lineage afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import dagster as dg

from resources.artifacts import ArtifactStore

DAY_ASSETS = [dg.AssetKey("raw_interactions"), dg.AssetKey("curated_conversations"), dg.AssetKey("preference_pairs")]
SHARD_ASSETS = [dg.AssetKey("tokenized_shards"), dg.AssetKey("preference_shards")]


class StepFailed(Exception):
    """A run that did not succeed; the message names the step, the day, the run and the first error."""

    def __init__(self, label: str, partition: str | None, result: dg.ExecuteInProcessResult) -> None:
        errors = [
            f"{e.step_key}: {e.step_failure_data.error.message.strip()}"
            for e in result.all_events
            if e.event_type_value == "STEP_FAILURE" and e.step_failure_data.error is not None
        ]
        where = f" ({partition})" if partition else ""
        detail = f": {errors[0]}" if errors else ""
        super().__init__(f"step {label}{where} failed in run {result.run_id}{detail}")


@dataclass
class Runner:
    """Runs the code location's jobs in-process on one instance and keeps the wall time per step label."""

    instance: dg.DagsterInstance
    defs: dg.Definitions
    timings: dict[str, float] = field(default_factory=dict)

    def run(
        self, job_name: str, label: str, *, gate_may_refuse: bool = False, **kwargs: object
    ) -> dg.ExecuteInProcessResult:
        """Run a job; StepFailed unless it succeeded, or (``gate_may_refuse``) only the champion gate's blocking
        check failed: a candidate the gate keeps out is an outcome to report, not a broken run."""
        start = time.perf_counter()
        result = self.defs.resolve_job_def(job_name).execute_in_process(
            instance=self.instance, raise_on_error=False, **kwargs
        )
        self.timings[label] = self.timings.get(label, 0.0) + time.perf_counter() - start
        if not result.success and not (gate_may_refuse and only_the_gate_refused(result)):
            raise StepFailed(label, kwargs.get("partition_key"), result)
        failed = [f"{asset}:{check}" for asset, check in failed_checks(result)]
        if failed:
            print(f"  ! failed asset checks in {label}: {failed}")
        return result


def failed_checks(result: dg.ExecuteInProcessResult) -> list[tuple[str, str]]:
    """(asset, check name) of every asset check that failed in the run."""
    return [
        (e.asset_check_evaluation_data.asset_key.to_user_string(), e.asset_check_evaluation_data.check_name)
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.asset_check_evaluation_data.passed
    ]


def only_the_gate_refused(result: dg.ExecuteInProcessResult) -> bool:
    """Whether the run's only failure is eval_report's blocking no_regression_vs_champion check."""
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return (
        bool(failures)
        and all(e.step_key == "eval_report" for e in failures)
        and {check for _, check in failed_checks(result)} == {"no_regression_vs_champion"}
    )


def metadata_number(result: dg.ExecuteInProcessResult, key: str, asset: str | None = None) -> float:
    """Sum of a numeric metadata entry over the run's materializations (of `asset` only, when given)."""
    total = 0.0
    for event in result.get_asset_materialization_events():
        if asset is not None and event.asset_key != dg.AssetKey(asset):
            continue
        value = event.materialization.metadata.get(key)
        total += float(value.value) if value is not None else 0.0
    return total


@dataclass
class DaysOutcome:
    """What a range run produced: the days that got shards, the days that failed and why, token totals."""

    shards: dict[str, dg.ExecuteInProcessResult] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    tokens: float = 0.0
    tokenize_seconds: float = 0.0


def materialize_days(
    runner: Runner, days: list[str], artifacts: ArtifactStore, *, rebuild_base_model: bool, keep_going: bool
) -> DaysOutcome:
    """raw_catalog once, raw_interactions + curated_conversations + preference_pairs per day, base_model, then
    tokenized_shards + preference_shards per day.

    base_model comes after the days because the preset's tokenizer is trained on their curated train split;
    without `rebuild_base_model` an existing one is kept, so shards of later ranges use the same tokenizer.
    With `keep_going` a failed day is recorded and the other days go on (it gets no shards); otherwise the
    first failure raises StepFailed. A failed catalog or base model always raises: no day can go on without it.
    """
    outcome = DaysOutcome()
    runner.run("catalog_job", "raw_catalog")
    ingested: list[str] = []
    for day in days:
        print(f"  ingest {day}")
        try:
            result = runner.run(
                "ingestion_job",
                "events+conversations+pairs",
                partition_key=day,
                asset_selection=DAY_ASSETS,
            )
        except StepFailed as exc:
            _record_failure(outcome, day, exc, keep_going)
            continue
        events = metadata_number(result, "dagster/row_count", "raw_interactions")
        conversations = metadata_number(result, "dagster/row_count", "curated_conversations")
        pairs = metadata_number(result, "dagster/row_count", "preference_pairs")
        print(f"    {events:,.0f} events, {conversations:,.0f} curated conversations, {pairs:,.0f} preference pairs")
        ingested.append(day)
    if not ingested:
        return outcome
    if rebuild_base_model or artifacts.latest("base_model") is None:
        print("  base model")
        runner.run("base_model_job", "base_model")
    for day in ingested:
        print(f"  tokenize {day}")
        try:
            result = runner.run("ingestion_job", "shards", partition_key=day, asset_selection=SHARD_ASSETS)
        except StepFailed as exc:
            _record_failure(outcome, day, exc, keep_going)
            continue
        outcome.shards[day] = result
        outcome.tokens += metadata_number(result, "tokens", "tokenized_shards")
        outcome.tokenize_seconds += metadata_number(result, "tokenize_seconds", "tokenized_shards")
    return outcome


def _record_failure(outcome: DaysOutcome, day: str, exc: StepFailed, keep_going: bool) -> None:
    if not keep_going:
        raise exc
    print(f"  ! {day}: {exc}")
    outcome.failed[day] = str(exc)
