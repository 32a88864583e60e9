"""Training layer: the trained checkpoint, launched through a TrainingLauncher resource."""

import json
from pathlib import Path
from typing import Any

import dagster as dg

from assets.metadata import image_markdown
from assets.models import base_model
from assets.shards import tokenized_shards
from core.eval_report import plot_loss_curve
from core.shards import read_manifest
from core.tokenizer_training import tokenizer_fingerprint
from resources.artifacts import ArtifactStore
from resources.launchers import TrainingLauncher

TRAINING_POOL = "training"


class TrainingRunConfig(dg.Config):
    """The knobs people change per run; any other `training.config.TrainConfig` key goes in `extra_json`."""

    window_days: int = 0  # train on the newest N daily partitions; 0 = all of them
    seq_len: int = 1024
    micro_batch_rows: int = 4
    grad_accum_steps: int = 2
    max_steps: int = 100
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 25
    activation_checkpointing: bool = False
    distributed: str = "ddp"
    log_every: int = 5
    extra_json: str = "{}"  # JSON object of any other TrainConfig keys, e.g. {"pack_buffer_rows": 1024}


def latest_shard_dirs(artifacts: ArtifactStore, window_days: int = 0) -> list[Path]:
    """The newest version of every materialized tokenized_shards partition (optionally the last N days)."""
    root = artifacts.asset_dir("tokenized_shards")
    days = sorted(p.name for p in root.iterdir() if p.is_dir() and artifacts.latest("tokenized_shards", p.name))
    if not days:
        raise dg.Failure("no tokenized_shards partition is materialized yet: run the ingestion job first")
    if window_days:
        days = days[-window_days:]
    return [artifacts.require_latest("tokenized_shards", day) for day in days]


def build_train_config(
    config: TrainingRunConfig, base_dir: Path, shard_dirs: list[Path], output_dir: Path
) -> dict[str, Any]:
    knobs = config.model_dump(exclude={"window_days", "extra_json"})
    try:
        extra = json.loads(config.extra_json or "{}")
    except json.JSONDecodeError as exc:
        raise dg.Failure(f"trained_checkpoint config extra_json is not valid JSON: {exc}") from exc
    if not isinstance(extra, dict):
        raise dg.Failure("trained_checkpoint config extra_json must be a JSON object of TrainConfig keys")
    return {
        "base_model_dir": str(base_dir),
        "shard_dirs": [str(p) for p in shard_dirs],
        "output_dir": str(output_dir),
        "split": "train",
        **knobs,
        **extra,
    }


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
    staging = artifacts.staging_dir("trained_checkpoint", lineage)
    train_config = build_train_config(config, base_dir, shard_dirs, staging)
    result = trainer.launch(context, train_config, staging)
    summary = result.summary
    # Everything the version holds is written before it is published: versions are immutable.
    (staging / "lineage.json").write_text(
        json.dumps(
            {
                "base_model": str(base_dir),
                "shards": [str(p) for p in shard_dirs],
                "dagster_run_id": context.run.run_id,
                "root_run_id": lineage,
            },
            indent=2,
        )
    )
    plot = plot_loss_curve(staging / "loss_curve.png", summary.get("loss_curve", []))
    version, path = artifacts.publish("trained_checkpoint", staging)
    manifests = {str(p.parent.name): read_manifest(p) for p in shard_dirs}
    # What rank 0 reported through Pipes (data fingerprints, weights hash, conversation counts), then ours.
    reported = {k: v for k, v in result.reported_metadata.items() if k != "loss_curve"}
    return dg.MaterializeResult(
        metadata={
            **reported,
            "path": dg.MetadataValue.path(str(path)),
            "version": version,
            "base_model": dg.MetadataValue.path(str(base_dir)),
            "shard_versions": dg.MetadataValue.json({p.parent.name: p.name for p in shard_dirs}),
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
        },
        data_version=dg.DataVersion(version),
    )
