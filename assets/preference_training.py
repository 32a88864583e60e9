"""Preference layer's model: DPO (or IPO) on top of the SFT champion, launched like trained_checkpoint."""

import json
from pathlib import Path
from typing import Any

import dagster as dg

from assets.champions import champion_checkpoint_dir, champion_registry, read_lineage
from assets.metadata import image_markdown
from assets.preferences import preference_shards
from assets.training import (
    OWNED_BY_PLATFORM,
    TRAINING_POOL,
    config_failure,
    lineage_finished,
    loss_curve_markdown,
    parse_extra_json,
    trained_checkpoint,
)
from core.champion import current_champion
from core.eval_report import plot_loss_curve
from core.shards import read_manifest
from resources.artifacts import ArtifactStore, leftovers_metadata
from resources.launchers import TrainingLauncher
from training.config import ConfigError
from training.dpo_config import DPOConfig

ASSET = "preference_checkpoint"
_DEFAULTS = DPOConfig.defaults()


class PreferenceRunConfig(dg.Config):
    """The knobs of a preference run; any other `training.dpo_config.DPOConfig` key (e.g. an `adapter`) goes in
    `extra_json`. Defaults are DPOConfig's."""

    window_days: int = 0  # train on the newest N daily partitions of preference_shards; 0 = all of them
    beta: float = _DEFAULTS["beta"]
    loss_type: str = _DEFAULTS["loss_type"]
    label_smoothing: float = _DEFAULTS["label_smoothing"]
    sft_weight: float = _DEFAULTS["sft_weight"]
    reference: str = _DEFAULTS["reference"]
    seq_len: int = _DEFAULTS["seq_len"]
    micro_batch_rows: int = _DEFAULTS["micro_batch_rows"]
    grad_accum_steps: int = _DEFAULTS["grad_accum_steps"]
    max_steps: int = _DEFAULTS["max_steps"]
    lr: float = _DEFAULTS["lr"]
    warmup_steps: int = _DEFAULTS["warmup_steps"]
    checkpoint_every: int = _DEFAULTS["checkpoint_every"]
    seed: int = _DEFAULTS["seed"]
    log_every: int = _DEFAULTS["log_every"]
    extra_json: str = "{}"


RUN_KEYS = tuple(k for k in PreferenceRunConfig.model_fields if k not in ("window_days", "extra_json"))
_OWNED = {**OWNED_BY_PLATFORM, "reference_model_dir": "it is the SFT champion the run starts from"}


def latest_preference_shards(artifacts: ArtifactStore, window_days: int = 0) -> list[Path]:
    days = artifacts.partitions("preference_shards")
    if not days:
        raise dg.Failure(
            description=f"no preference_shards partition is materialized yet under {artifacts.root}: run the "
            "ingestion job (or materialize preference_pairs and preference_shards for a day) first",
            allow_retries=False,
        )
    if window_days:
        days = days[-window_days:]
    return [artifacts.require_latest("preference_shards", day) for day in days]


def starting_checkpoint(artifacts: ArtifactStore) -> tuple[Path, str]:
    """The SFT champion's directory and version: preference training starts from it and is anchored to it."""
    champion = current_champion(champion_registry(artifacts))
    if champion is None:
        raise dg.Failure(
            description="no champion yet: preference training starts from the champion checkpoint. Materialize "
            "trained_checkpoint and eval_report (training_job) first",
            allow_retries=False,
        )
    path = champion_checkpoint_dir(artifacts, champion.checkpoint)
    if not (path / "config.json").is_file():
        raise dg.Failure(
            description=f"champion {champion.version} points at {path}, which holds no model; evaluate a checkpoint "
            "again to record a champion that exists",
            allow_retries=False,
        )
    return path, champion.version


def build_preference_config(
    config: PreferenceRunConfig, start: Path, shard_dirs: list[Path], output_dir: Path
) -> dict[str, Any]:
    """The complete, validated DPOConfig dict, checked before any trainer process starts."""
    extra = parse_extra_json(config.extra_json, PreferenceRunConfig.model_fields, ASSET)
    owned = [k for k in extra if k in _OWNED]
    if owned:
        raise config_failure(f"extra_json may not set {owned[0]!r}: {_OWNED[owned[0]]}", ASSET)
    platform = {
        "base_model_dir": str(start),  # also the reference (DPOConfig's reference_model_dir left empty)
        "shard_dirs": [str(p) for p in shard_dirs],
        "output_dir": str(output_dir),
        "split": "train",
        "check_tokenizer_fingerprint": True,
    }
    try:
        return DPOConfig.from_dict({**config.model_dump(include=set(RUN_KEYS)), **extra, **platform}).to_dict()
    except ConfigError as exc:
        raise config_failure(f"{exc}. Fix the run config (extra_json keys are DPOConfig fields).", ASSET) from exc


@dg.asset(
    group_name="training",
    kinds={"pytorch", "huggingface"},
    deps=[preference_shards, trained_checkpoint],
    pool=TRAINING_POOL,
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    description=(
        "Preference training (DPO, or IPO; optionally a LoRA adapter) of the SFT champion on the train split of "
        "preference_shards, the champion also being the reference; an HF model dir + training state + summary.json."
    ),
)
def preference_checkpoint(
    context: dg.AssetExecutionContext,
    config: PreferenceRunConfig,
    artifacts: ArtifactStore,
    trainer: TrainingLauncher,
) -> dg.MaterializeResult:
    start, champion_version = starting_checkpoint(artifacts)
    shard_dirs = latest_preference_shards(artifacts, config.window_days)
    lineage = context.run.root_run_id or context.run.run_id
    staging = artifacts.staging_path(ASSET, lineage)
    train_config = build_preference_config(config, start, shard_dirs, staging)
    artifacts.staging_dir(ASSET, lineage)
    leftovers = artifacts.clean_stale_temp_dirs(ASSET)
    leftovers += artifacts.clean_stale_staging_dirs(
        ASSET, lambda key: lineage_finished(context.instance, key), keep=frozenset({lineage})
    )
    result = trainer.launch(context, train_config, staging, entry_point="training.dpo")
    summary = result.summary
    start_lineage = read_lineage(start)
    # eval_report reads base_model and shards (the SFT held-out data) from here, as for an SFT checkpoint.
    (staging / "lineage.json").write_text(
        json.dumps(
            {
                "base_model": start_lineage["base_model"],
                "shards": start_lineage["shards"],
                "warehouse_snapshots": start_lineage.get("warehouse_snapshots", {}),
                "start_checkpoint": str(start),
                "start_champion": champion_version,
                "preference_shards": [str(p) for p in shard_dirs],
                "dagster_run_id": context.run.run_id,
                "root_run_id": lineage,
            },
            indent=2,
        )
    )
    plot = plot_loss_curve(staging / "loss_curve.png", summary.get("loss_curve", []))
    version, path = artifacts.publish(ASSET, staging)
    manifests = [read_manifest(p) for p in shard_dirs]
    reported = {k: v for k, v in result.reported_metadata.items() if k not in ("loss_curve", "preference_curve")}
    return dg.MaterializeResult(
        metadata={
            **reported,
            "path": dg.MetadataValue.path(str(path)),
            "version": version,
            "start_checkpoint": dg.MetadataValue.path(str(start)),
            "start_champion": champion_version,
            "shard_versions": dg.MetadataValue.json({p.parent.name: p.name for p in shard_dirs}),
            "train_pairs": sum(m["splits"]["train"]["pairs"] for m in manifests),
            "world_size": trainer.world_size,
            "config": dg.MetadataValue.json(train_config),
            "steps": summary.get("steps"),
            "final_loss": summary.get("final_loss"),
            "final_accuracy": summary.get("final_accuracy"),
            "final_reward_margin": summary.get("final_reward_margin"),
            "tokens_per_second": summary.get("tokens_per_second"),
            "reference_seconds": summary.get("reference_seconds"),
            "trainable_parameters": summary.get("trainable_parameters"),
            "loss_curve": dg.MetadataValue.md(loss_curve_markdown(summary.get("loss_curve", []))),
            "loss_curve_plot": dg.MetadataValue.md(image_markdown([path / plot.name])),
            "cleaned_up": leftovers_metadata(leftovers),
        },
        data_version=dg.DataVersion(version),
    )
