"""Sensors: a new landing drop starts that day's ingestion; enough new training data starts a training run.

`landing_sensor` (default RUNNING: it only reads a directory listing and the instance)
  watches `landing/interactions/day=YYYY-MM-DD/` and `landing/conversations/day=YYYY-MM-DD/`.
  A day's *drop* is the set of files in those two folders that the assets read, chosen by the
  same filter the assets use (`core.landing_files`: regular files directly in the day folder,
  no symlinks, a suffix the folder's reader takes); its signature is a hash of their names,
  sizes and modification times. Entries the filter ignores are reported with a reason in the
  tick's log and skip message and never start a run. The sensor requests one `ingestion_job` run for the
  day's partition per new signature (run key `landing:<day>:<signature>`, so even a lost
  cursor cannot launch it twice) and keeps `{day: signature}` in its cursor. A drop is not
  requested when:
  - the day is already being processed by a queued or running run (it is looked at again on
    the next tick), or
  - `raw_interactions` and `curated_conversations` of that day were both materialized after
    the drop's newest file was written (e.g. the synthetic source generated the drop inside
    a backfill run): it is marked as seen.
  When `base_model` has no version yet, `tokenized_shards` cannot be built; the sensor then
  requests `raw_interactions` + `curated_conversations` only (tag `platform/tokenize=skipped`)
  and the day is tokenized later by a backfill of `ingestion_job` once `base_model` exists.

`retraining_sensor` (default STOPPED: a training run costs minutes of every core; turn it on in
  the UI or with `dagster sensor start retraining_sensor`) compares the newest version of every
  `tokenized_shards` partition with the shard versions the newest `trained_checkpoint` was
  trained on (its `lineage.json`). Versions the checkpoint did not use and that are newer than
  the newest one it did use are "new"; when their train-split loss tokens reach
  `RETRAIN_MIN_NEW_LOSS_TOKENS` it requests a `training_job` run, once per set of shard versions
  (cursor + run key). It never requests a run while a training run is queued or running.

`preference_sensor` (default STOPPED) does the same for preference training: new `preference_shards`
  versions against those the newest `preference_checkpoint` used; when their train-split pairs reach
  `RETRAIN_MIN_NEW_PAIRS` it requests a `preference_job` run (run key `prefer:<hash>`), never while a
  training or preference run is queued or running.

Their settings come from `core.settings`. The two minimum intervals (LANDING_SENSOR_INTERVAL_SECONDS,
RETRAIN_SENSOR_INTERVAL_SECONDS) are arguments of the decorators, so they are read when the Definitions load and a
change needs a reload of the code location; the threshold and RETRAIN_RUN_CONFIG are read on every tick.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from assets.partitions import daily_partitions
from core.landing_files import IgnoredFile, describe_ignored, scan_root
from core.settings import (
    landing_sensor_interval_seconds,
    retrain_min_new_loss_tokens,
    retrain_min_new_pairs,
    retrain_run_config_file,
    retrain_sensor_interval_seconds,
)
from dagster_project.jobs import ingestion_job, preference_job, training_job, training_run_tags
from resources.artifacts import ArtifactStore
from resources.landing import LandingArea

IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
RAW_AND_CURATED = [dg.AssetKey("raw_interactions"), dg.AssetKey("curated_conversations")]
TRAINED = dg.AssetKey("trained_checkpoint")
_DAY_DIR = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")


# ------------------------------------------------------------------------------------ training run config


def retrain_run_config() -> dict[str, Any]:
    """Run config for sensor/schedule-started training runs: the YAML file named by RETRAIN_RUN_CONFIG, or {}.

    Same format as `dagster job execute -c`, e.g. `ops: {trained_checkpoint: {config: {max_steps: 200}}}`.
    """
    path = retrain_run_config_file()
    if not path:
        return {}
    try:
        loaded = yaml.safe_load(Path(path).expanduser().read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"RETRAIN_RUN_CONFIG={path!r} could not be read as YAML run config: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ValueError(f"RETRAIN_RUN_CONFIG={path!r} must hold a YAML mapping like `ops: {{...}}`")
    return loaded


# ------------------------------------------------------------------------------------------- landing drops


@dataclass(frozen=True)
class Drop:
    """The files that make up one day's landing drop."""

    day: str
    files: tuple[tuple[str, int, int], ...]  # (path relative to the landing root, size, mtime_ns), sorted
    ignored: tuple[IgnoredFile, ...] = ()  # entries of the day's folders no asset reads (not in the signature)

    @property
    def signature(self) -> str:
        text = "\n".join(f"{name}\t{size}\t{mtime}" for name, size, mtime in self.files)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def newest_mtime(self) -> float:
        return max(mtime for _, _, mtime in self.files) / 1e9


def scan_landing(root: Path) -> dict[str, Drop]:
    """Every day with at least one file an asset reads under landing/{interactions,conversations}/day=YYYY-MM-DD/.

    The files are those `core.landing_files` accepts, the filter the assets read through: hidden and temporary
    names (atomic-write temp files still being written), symlinks, FIFOs, nested folders and unread suffixes are
    not part of a drop (they are in each Drop's `ignored`).
    """
    return scan_drops(root)[0]


def scan_drops(root: Path) -> tuple[dict[str, Drop], list[IgnoredFile]]:
    """(drops of days with accepted files, every ignored landing entry with its reason)."""
    scan = scan_root(root)
    drops = {
        day: Drop(day, tuple((f.rel, f.size, f.mtime_ns) for f in listing.accepted), listing.ignored)
        for day, listing in scan.days.items()
        if listing.accepted
    }
    return drops, scan.ignored


def _runs_in_progress(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(statuses=IN_PROGRESS), limit=1000))


# What each of our jobs materializes when a run does not name an asset subset.
_JOB_ASSETS = {
    ingestion_job.name: {
        *RAW_AND_CURATED,
        dg.AssetKey("tokenized_shards"),
        dg.AssetKey("preference_pairs"),
        dg.AssetKey("preference_shards"),
    },
    training_job.name: {TRAINED, dg.AssetKey("eval_report")},
}


def _targets(run: dg.DagsterRun, keys: Iterable[dg.AssetKey]) -> bool:
    """Whether a run materializes any of `keys` (one of our jobs, or an asset selection from the UI)."""
    selected = run.asset_selection if run.asset_selection is not None else _JOB_ASSETS.get(run.job_name, set())
    return any(k in selected for k in keys)


def partitions_in_progress(instance: dg.DagsterInstance) -> set[str]:
    """Daily partitions of raw_interactions/curated_conversations that a queued or running run is processing."""
    return {
        run.tags["dagster/partition"]
        for run in _runs_in_progress(instance)
        if "dagster/partition" in run.tags and _targets(run, RAW_AND_CURATED)
    }


def last_materialized(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> float | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return records[0].timestamp if records else None


def ingested_after(instance: dg.DagsterInstance, drop: Drop) -> bool:
    """Both raw_interactions and curated_conversations of the day were materialized after the drop was written."""
    for key in RAW_AND_CURATED:
        when = last_materialized(instance, key, drop.day)
        if when is None or when < drop.newest_mtime:
            return False
    return True


@dataclass
class LandingDecision:
    """What one landing-sensor tick does (kept separate from the decorator so it can be read and tested)."""

    requests: list[dg.RunRequest] = field(default_factory=list)
    cursor: dict[str, str] = field(default_factory=dict)
    already_ingested: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    outside_partitions: list[str] = field(default_factory=list)
    ignored: list[IgnoredFile] = field(default_factory=list)  # landing entries no asset reads, with reasons


def decide_landing(
    instance: dg.DagsterInstance,
    landing_root: Path,
    cursor: str | None,
    base_model_ready: bool,
    valid_days: set[str],
) -> LandingDecision:
    try:
        seen: dict[str, str] = json.loads(cursor) if cursor else {}
    except json.JSONDecodeError:
        seen = {}  # an unreadable cursor only costs a re-check: run keys still stop duplicate runs
    drops, ignored = scan_drops(landing_root)
    decision = LandingDecision(cursor=dict(seen), ignored=ignored)
    changed = {day: drop for day, drop in drops.items() if seen.get(day) != drop.signature}
    if not changed:
        return decision
    busy = partitions_in_progress(instance)
    for day in sorted(changed):
        drop = changed[day]
        if day not in valid_days:
            decision.outside_partitions.append(day)
            decision.cursor[day] = drop.signature
        elif day in busy:
            decision.deferred.append(day)  # looked at again next tick, once that run is done
        elif ingested_after(instance, drop):
            decision.already_ingested.append(day)
            decision.cursor[day] = drop.signature
        else:
            tags = {
                "platform/drop_signature": drop.signature,
                "platform/drop_files": str(len(drop.files)),
                "platform/ignored_files": str(len(drop.ignored)),
            }
            selection = None
            if not base_model_ready:
                selection = RAW_AND_CURATED
                tags["platform/tokenize"] = "skipped"
            decision.requests.append(
                dg.RunRequest(
                    run_key=f"landing:{day}:{drop.signature}",
                    partition_key=day,
                    asset_selection=selection,
                    tags=tags,
                )
            )
            decision.cursor[day] = drop.signature
    return decision


@dg.sensor(
    job=ingestion_job,
    minimum_interval_seconds=landing_sensor_interval_seconds(),  # read when the Definitions load
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Requests ingestion_job for a day's partition once per new landing drop "
        "(files under landing/interactions|conversations/day=YYYY-MM-DD/)."
    ),
)
def landing_sensor(
    context: dg.SensorEvaluationContext, landing: LandingArea, artifacts: ArtifactStore
) -> dg.SensorResult:
    base_ready = artifacts.latest("base_model") is not None
    valid_days = set(daily_partitions.get_partition_keys())
    decision = decide_landing(context.instance, Path(landing.root), context.cursor, base_ready, valid_days)
    cursor = json.dumps(decision.cursor, sort_keys=True)
    if decision.outside_partitions:
        context.log.warning(
            f"drops for days outside the daily partitions ({daily_partitions.start:%Y-%m-%d} .. tomorrow) are ignored: "
            f"{decision.outside_partitions}; set PLATFORM_PARTITION_START earlier to ingest them"
        )
    if decision.already_ingested:
        context.log.info(f"already ingested after their files were written: {decision.already_ingested}")
    # Hidden and temporary names are the atomic-write protocol (a file still being copied in), not a mistake.
    mistakes = [i for i in decision.ignored if i.reason != "hidden_or_temporary"]
    ignored = f"; not read: {describe_ignored(mistakes)}" if mistakes else ""
    if mistakes:
        context.log.warning(
            f"{len(mistakes)} landing entries are not read by any asset: {describe_ignored(mistakes)} "
            "(README 'Landing area' lists the reasons)"
        )
    if decision.deferred:
        context.log.info(f"a queued or running run is processing {decision.deferred}; looking again next tick")
    if decision.requests and not base_ready:
        context.log.warning(
            "base_model has no version yet, so tokenized_shards cannot be built: requesting raw_interactions + "
            "curated_conversations only. Materialize base_model (base_model_job), then backfill ingestion_job "
            "for these days."
        )
    if decision.requests:
        context.log.info(f"requesting ingestion for {[r.partition_key for r in decision.requests]}")
        return dg.SensorResult(run_requests=decision.requests, cursor=cursor)
    if decision.deferred:
        reason = f"waiting for the runs processing {decision.deferred}"
    elif decision.already_ingested:
        reason = f"new drops {decision.already_ingested} were already ingested"
    else:
        reason = f"no new landing drop under {landing.root}"
    return dg.SensorResult(skip_reason=reason + ignored, cursor=cursor)


# ---------------------------------------------------------------------------------------------- retraining


@dataclass(frozen=True)
class TrainingDelta:
    """Shard versions a new training run would see that the newest checkpoint did not."""

    checkpoint: str | None  # the newest trained_checkpoint version
    current: dict[str, str]  # day -> newest shard version
    new: dict[str, str]  # day -> version, the subset of `current` that counts as new
    new_amount: int  # the new versions' train-split loss tokens (SFT shards) or pairs (preference shards)

    @property
    def key(self) -> str:
        """Identifies the data a training run would see; one request per key."""
        text = json.dumps(self.current, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _used_shards(artifacts: ArtifactStore, asset: str, checkpoint: str | None, key: str) -> dict[str, str]:
    """day -> shard version the checkpoint trained on (its lineage.json's `key`, read without fetching the model)."""
    text = artifacts.read_text(asset, checkpoint, "lineage.json") if checkpoint else None
    if text is None:
        return {}
    lineage = json.loads(text)
    return {Path(p).parent.name: Path(p).name for p in lineage.get(key, [])}


def shard_delta(
    artifacts: ArtifactStore, checkpoint_asset: str, shard_asset: str, lineage_key: str, count: str
) -> TrainingDelta:
    """Shard versions of `shard_asset` the newest `checkpoint_asset` did not train on, with the sum of their
    manifests' train-split `count` (loss tokens, or pairs)."""
    # Version ids and small files only: a sensor tick never downloads a checkpoint or shards.
    checkpoints = artifacts.version_ids(checkpoint_asset)
    checkpoint = checkpoints[-1] if checkpoints else None
    used = _used_shards(artifacts, checkpoint_asset, checkpoint, lineage_key)
    newest_used = max(used.values(), default="")
    current: dict[str, str] = {}
    for day in artifacts.partitions(shard_asset):
        if _DAY_DIR.match(f"day={day}"):
            current[day] = artifacts.version_ids(shard_asset, day)[-1]
    # Version ids are sortable UTC timestamps: "newer than the newest version the checkpoint used" leaves out
    # old days that a windowed run (window_days) chose not to train on.
    new = {day: v for day, v in current.items() if used.get(day) != v and v > newest_used}
    amount = 0
    for day, version in new.items():
        manifest = json.loads(artifacts.read_text(shard_asset, version, "manifest.json", day) or "{}")
        amount += int(manifest.get("splits", {}).get("train", {}).get(count, 0))
    return TrainingDelta(checkpoint=checkpoint, current=current, new=new, new_amount=amount)


def training_delta(artifacts: ArtifactStore) -> TrainingDelta:
    return shard_delta(artifacts, "trained_checkpoint", "tokenized_shards", "shards", "loss_tokens")


def preference_delta(artifacts: ArtifactStore) -> TrainingDelta:
    """As training_delta, for preference_checkpoint and preference_shards; the amount counts train pairs."""
    return shard_delta(artifacts, "preference_checkpoint", "preference_shards", "preference_shards", "pairs")


def training_runs_in_progress(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Queued or running runs that train: training_job, or any run whose asset selection has trained_checkpoint."""
    return [run for run in _runs_in_progress(instance) if _targets(run, [TRAINED])]


def busy_reason(runs: list[dg.DagsterRun]) -> str:
    listed = ", ".join(f"{r.run_id[:8]} ({r.status.value})" for r in runs[:3])
    return f"a training run is already queued or running: {listed}; not requesting another"


def training_tags(delta: TrainingDelta, trigger: str) -> dict[str, str]:
    return {
        **training_run_tags(),  # the run's time limit, as on training_job itself
        "platform/trigger": trigger,
        "platform/new_loss_tokens": str(delta.new_amount),
        "platform/new_shard_days": ",".join(sorted(delta.new))[:200],
    }


@dg.sensor(
    job=training_job,
    minimum_interval_seconds=retrain_sensor_interval_seconds(),  # read when the Definitions load
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Requests training_job when the train-split loss tokens in tokenized_shards versions newer than the last "
        "trained_checkpoint reach RETRAIN_MIN_NEW_LOSS_TOKENS; never while a training run is queued or running."
    ),
)
def retraining_sensor(context: dg.SensorEvaluationContext, artifacts: ArtifactStore) -> dg.SensorResult:
    running = training_runs_in_progress(context.instance)
    if running:
        return dg.SensorResult(skip_reason=busy_reason(running))
    delta = training_delta(artifacts)
    threshold = retrain_min_new_loss_tokens()
    since = f"since {delta.checkpoint}" if delta.checkpoint else "(no trained_checkpoint yet)"
    if delta.new_amount < threshold:
        return dg.SensorResult(
            skip_reason=(
                f"{delta.new_amount:,} new train loss tokens in {len(delta.new)} shard version(s) {since}; "
                f"threshold RETRAIN_MIN_NEW_LOSS_TOKENS={threshold:,}"
            )
        )
    if context.cursor == delta.key:
        return dg.SensorResult(
            skip_reason=(
                f"a training run was already requested for this data (run key retrain:{delta.key}); "
                "waiting for new shard versions"
            )
        )
    context.log.info(f"{delta.new_amount:,} new train loss tokens {since}: requesting training_job")
    request = dg.RunRequest(
        run_key=f"retrain:{delta.key}", run_config=retrain_run_config(), tags=training_tags(delta, "retraining_sensor")
    )
    return dg.SensorResult(run_requests=[request], cursor=delta.key)


PREFERENCE = dg.AssetKey("preference_checkpoint")


@dg.sensor(
    job=preference_job,
    minimum_interval_seconds=retrain_sensor_interval_seconds(),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Requests preference_job when the train-split pairs in preference_shards versions newer than the last "
        "preference_checkpoint reach RETRAIN_MIN_NEW_PAIRS; never while a training run is queued or running."
    ),
)
def preference_sensor(context: dg.SensorEvaluationContext, artifacts: ArtifactStore) -> dg.SensorResult:
    running = [run for run in _runs_in_progress(context.instance) if _targets(run, [TRAINED, PREFERENCE])]
    if running:
        return dg.SensorResult(skip_reason=busy_reason(running))
    delta = preference_delta(artifacts)
    threshold = retrain_min_new_pairs()
    since = f"since {delta.checkpoint}" if delta.checkpoint else "(no preference_checkpoint yet)"
    if delta.new_amount < threshold:
        return dg.SensorResult(
            skip_reason=(
                f"{delta.new_amount:,} new train pairs in {len(delta.new)} shard version(s) {since}; "
                f"threshold RETRAIN_MIN_NEW_PAIRS={threshold:,}"
            )
        )
    if context.cursor == delta.key:
        return dg.SensorResult(
            skip_reason=f"a preference run was already requested for this data (run key prefer:{delta.key})"
        )
    context.log.info(f"{delta.new_amount:,} new train pairs {since}: requesting preference_job")
    tags = {
        **training_run_tags(),
        "platform/trigger": "preference_sensor",
        "platform/new_pairs": str(delta.new_amount),
        "platform/new_shard_days": ",".join(sorted(delta.new))[:200],
    }
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"prefer:{delta.key}", tags=tags)], cursor=delta.key)


# eval_report carries AutomationCondition.eager(): a trained_checkpoint materialized on its own (Launchpad) is
# evaluated automatically. Dagster's default sensor for automation conditions starts STOPPED; this one runs.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.assets("eval_report"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' AutomationConditions (eval_report: eager after a new trained_checkpoint).",
)

SENSORS = [landing_sensor, retraining_sensor, preference_sensor, automation_sensor]
