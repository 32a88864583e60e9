"""Training layer: the trained checkpoint, launched through a TrainingLauncher resource."""

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dagster as dg

from assets.metadata import image_markdown
from assets.models import base_model
from assets.shards import tokenized_shards
from core.eval_report import plot_loss_curve
from core.shards import read_manifest
from core.tokenizer_training import tokenizer_fingerprint
from core.warehouse_lineage import shard_snapshots
from resources.artifacts import ArtifactStore, leftovers_metadata
from resources.launchers import TrainingLauncher
from training.config import ConfigError, TrainConfig

TRAINING_POOL = "training"


_TRAIN_DEFAULTS = TrainConfig.defaults()


class TrainingRunConfig(dg.Config):
    """The knobs people change per run; any other `training.config.TrainConfig` key goes in `extra_json`.

    Each knob's default is TrainConfig's (referenced, never re-typed): the Launchpad form and
    `python -m training.sft` train with the same values unless a person changes one.
    """

    window_days: int = 0  # train on the newest N daily partitions; 0 = all of them
    seq_len: int = _TRAIN_DEFAULTS["seq_len"]
    micro_batch_rows: int = _TRAIN_DEFAULTS["micro_batch_rows"]
    grad_accum_steps: int = _TRAIN_DEFAULTS["grad_accum_steps"]
    max_steps: int = _TRAIN_DEFAULTS["max_steps"]
    lr: float = _TRAIN_DEFAULTS["lr"]
    min_lr_ratio: float = _TRAIN_DEFAULTS["min_lr_ratio"]
    warmup_steps: int = _TRAIN_DEFAULTS["warmup_steps"]
    weight_decay: float = _TRAIN_DEFAULTS["weight_decay"]
    grad_clip: float = _TRAIN_DEFAULTS["grad_clip"]
    seed: int = _TRAIN_DEFAULTS["seed"]
    checkpoint_every: int = _TRAIN_DEFAULTS["checkpoint_every"]
    activation_checkpointing: bool = _TRAIN_DEFAULTS["activation_checkpointing"]
    distributed: str = _TRAIN_DEFAULTS["distributed"]
    log_every: int = _TRAIN_DEFAULTS["log_every"]
    extra_json: str = "{}"  # JSON object of any other TrainConfig keys, e.g. {"pack_buffer_rows": 1024}


# TrainConfig keys the platform sets and a run may not: the paths lineage.json records (base model, shards, where
# the version is written), the split (training on held-out data would make eval_report meaningless), the tokenizer
# check (its mismatch is silent train/serve skew) and the launcher's CPU thread budget (threads_per_process).
OWNED_BY_PLATFORM = {
    "base_model_dir": "it is the latest base_model version, recorded in lineage.json",
    "shard_dirs": "they are the latest tokenized_shards versions (choose days with window_days)",
    "output_dir": "it is the run's staging directory, published as the trained_checkpoint version",
    "split": "training reads the train split only; validation and test are eval_report's held-out data",
    "check_tokenizer_fingerprint": "shards tokenized by another tokenizer are train/serve skew; re-tokenize instead",
    "cpu_threads": "the launcher's threads_per_process sets the CPU threads of each trainer process",
}
# Run config fields that are also TrainConfig keys: one way to set each, as a typed field of the Launchpad form.
RUN_CONFIG_KEYS = tuple(k for k in TrainingRunConfig.model_fields if k not in ("window_days", "extra_json"))
PLATFORM_KEYS = (*OWNED_BY_PLATFORM, *RUN_CONFIG_KEYS)


def config_failure(message: str, asset: str = "trained_checkpoint") -> dg.Failure:
    """A run config error: permanent until a person edits the config, so the RetryPolicy must not repeat it."""
    return dg.Failure(description=f"{asset} config: {message}", allow_retries=False)


def latest_shard_dirs(artifacts: ArtifactStore, window_days: int = 0) -> list[Path]:
    """The newest version of every materialized tokenized_shards partition (optionally the last N days)."""
    days = artifacts.partitions("tokenized_shards")
    if not days:
        raise dg.Failure(
            description=f"no tokenized_shards partition is materialized yet under {artifacts.root}: run the ingestion "
            "job (or materialize tokenized_shards for at least one day) first",
            allow_retries=False,
        )
    if window_days:
        days = days[-window_days:]
    return [artifacts.require_latest("tokenized_shards", day) for day in days]


def parse_extra_json(
    text: str, run_fields: Iterable[str] = TrainingRunConfig.model_fields, asset: str = "trained_checkpoint"
) -> dict[str, Any]:
    """The extra trainer config keys of a run; refuses keys the platform owns or a run config field already sets."""
    try:
        extra = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise config_failure(f"extra_json is not valid JSON ({exc}); give a JSON object such as {{}}", asset) from exc
    if not isinstance(extra, dict):
        raise config_failure(
            f"extra_json must be a JSON object of trainer config keys, got {type(extra).__name__}: {text[:200]!r}",
            asset,
        )
    for key in extra:
        if key in OWNED_BY_PLATFORM:
            raise config_failure(
                f"extra_json may not set {key!r}: {OWNED_BY_PLATFORM[key]}. Remove it from extra_json.", asset
            )
        if key in run_fields:
            raise config_failure(
                f"extra_json may not set {key!r}: set it as the run config field {key} instead (one place per knob)",
                asset,
            )
    return extra


def build_train_config(
    config: TrainingRunConfig, base_dir: Path, shard_dirs: list[Path], output_dir: Path
) -> dict[str, Any]:
    """The complete, validated trainer config: checked here, in seconds, before any trainer process or pod starts.

    Returned with every TrainConfig key spelled out, so the run's metadata records defaults too.
    """
    knobs = config.model_dump(include=set(RUN_CONFIG_KEYS))
    extra = parse_extra_json(config.extra_json)
    platform = {
        "base_model_dir": str(base_dir),
        "shard_dirs": [str(p) for p in shard_dirs],
        "output_dir": str(output_dir),
        "split": "train",
        "check_tokenizer_fingerprint": True,
    }
    try:
        return TrainConfig.from_dict({**knobs, **extra, **platform}).to_dict()
    except ConfigError as exc:
        raise config_failure(f"{exc}. Fix the run config (extra_json keys are the TrainConfig fields).") from exc


def lineage_finished(instance: dg.DagsterInstance, root_run_id: str) -> bool | None:
    """Whether every run of a lineage (the root run and its re-executions) finished; None if not in this instance."""
    if instance.get_run_by_id(root_run_id) is None:
        return None
    group = instance.get_run_group(root_run_id)
    return all(run.is_finished for run in group[1]) if group else None


def loss_curve_markdown(curve: list[dict[str, Any]], max_rows: int = 25) -> str:
    if not curve:
        return "_(no steps)_"
    stride = max(1, len(curve) // max_rows)
    picked = curve[::stride] + ([curve[-1]] if (len(curve) - 1) % stride else [])
    lines = ["| step | loss | lr |", "|---:|---:|---:|"]
    lines += [f"| {p['step']} | {p['loss']:.4f} | {p['lr']:.2e} |" for p in picked]
    return "\n".join(lines)


@dg.asset(
    group_name="training",
    kinds={"pytorch", "huggingface"},
    deps=[tokenized_shards, base_model],
    pool=TRAINING_POOL,
    # A retry runs in the same run (same root run id, same staging dir), so the trainer resumes from its checkpoint.
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    description=(
        "Supervised fine-tuning of base_model on the train split of tokenized_shards (all days or a window), "
        "run by the configured TrainingLauncher; an HF model dir + training state + summary.json."
    ),
)
def trained_checkpoint(
    context: dg.AssetExecutionContext,
    config: TrainingRunConfig,
    artifacts: ArtifactStore,
    trainer: TrainingLauncher,
) -> dg.MaterializeResult:
    base_dir = artifacts.require_latest("base_model")
    shard_dirs = latest_shard_dirs(artifacts, config.window_days)
    # One staging directory per run lineage: a retried run resumes from the checkpoints it left.
    lineage = context.run.root_run_id or context.run.run_id
    staging = artifacts.staging_path("trained_checkpoint", lineage)
    train_config = build_train_config(config, base_dir, shard_dirs, staging)
    artifacts.staging_dir("trained_checkpoint", lineage)  # only once the config is known to be valid
    # Leftovers of crashed runs: never this lineage's, never a lineage with a run that may still resume.
    leftovers = artifacts.clean_stale_temp_dirs("trained_checkpoint")
    leftovers += artifacts.clean_stale_staging_dirs(
        "trained_checkpoint", lambda key: lineage_finished(context.instance, key), keep=frozenset({lineage})
    )
    result = trainer.launch(context, train_config, staging)
    summary = result.summary
    manifests = {str(p.parent.name): read_manifest(p) for p in shard_dirs}
    snapshots = shard_snapshots(manifests)
    # Everything the version holds is written before it is published: versions are immutable.
    (staging / "lineage.json").write_text(
        json.dumps(
            {
                "base_model": str(base_dir),
                "shards": [str(p) for p in shard_dirs],
                # day -> the warehouse snapshot its shards were read at (DuckLake; empty on the DuckDB file)
                "warehouse_snapshots": snapshots,
                "dagster_run_id": context.run.run_id,
                "root_run_id": lineage,
            },
            indent=2,
        )
    )
    plot = plot_loss_curve(staging / "loss_curve.png", summary.get("loss_curve", []))
    version, path = artifacts.publish("trained_checkpoint", staging)
    # What rank 0 reported through Pipes (data fingerprints, weights hash, conversation counts), then ours.
    reported = {k: v for k, v in result.reported_metadata.items() if k != "loss_curve"}
    return dg.MaterializeResult(
        metadata={
            **reported,
            "path": dg.MetadataValue.path(str(path)),
            "version": version,
            "base_model": dg.MetadataValue.path(str(base_dir)),
            "shard_versions": dg.MetadataValue.json({p.parent.name: p.name for p in shard_dirs}),
            "warehouse_snapshots": dg.MetadataValue.json(snapshots),
            "train_conversations": sum(m["splits"]["train"]["conversations"] for m in manifests.values()),
            "tokenizer_fingerprint": tokenizer_fingerprint(base_dir),
            "world_size": trainer.world_size,
            "config": dg.MetadataValue.json(train_config),
            "steps": summary.get("steps"),
            "tokens_seen": summary.get("tokens_seen"),
            "loss_tokens": summary.get("loss_tokens"),
            "final_loss": summary.get("final_loss"),
            "best_loss": summary.get("best_loss"),
            "tokens_per_second": summary.get("tokens_per_second"),
            "packing_efficiency": summary.get("packing_efficiency"),
            "mfu_estimate": summary.get("mfu_estimate"),
            "loss_curve": dg.MetadataValue.md(loss_curve_markdown(summary.get("loss_curve", []))),
            "loss_curve_plot": dg.MetadataValue.md(image_markdown([path / plot.name])),
            "cleaned_up": leftovers_metadata(leftovers),
        },
        data_version=dg.DataVersion(version),
    )
