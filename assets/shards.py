"""Token layer: per-day shard directories of input_ids + assistant-only loss masks."""

from datetime import date
from typing import Literal

import dagster as dg

from assets.conversations import curated_conversations, curated_fingerprint
from assets.metadata import counts_by, reason_metadata
from assets.models import base_model
from assets.partitions import daily_partitions
from core.shards import read_manifest, verify_checksums, write_shard_directory
from core.tokenizer_training import tokenizer_fingerprint
from resources.artifacts import ArtifactStore
from resources.warehouse import Warehouse


class TokenizeConfig(dg.Config):
    max_length: int = 2048
    overlong: Literal["quarantine", "truncate"] = "quarantine"
    # For conversations the chat template rewrites (e.g. strips earlier reasoning); templates that
    # never do (ChatML) are unaffected. expand: one example per assistant turn, as written;
    # as_rendered: masked as the full rendering shows it; quarantine: rejected (turn_rewritten).
    rewrite_policy: Literal["expand", "as_rendered", "quarantine"] = "expand"
    rows_per_file: int = 20_000
    serving_check_rows: int = 2_000  # rows sampled for the train/serve check; 0 = every row
    serving_check_turns: int = 16  # assistant turns checked per sampled row (first, last, evenly spaced); 0 = all


def _check(name: str, passed: bool, **metadata: object) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(asset_key="tokenized_shards", check_name=name, passed=passed, metadata=dict(metadata))


@dg.asset(
    group_name="tokens",
    kinds={"parquet", "huggingface"},
    partitions_def=daily_partitions,
    deps=[curated_conversations, base_model],
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
    description=(
        "Token ids + assistant-only loss masks per conversation and split, rendered with the base model's "
        "chat template (artifacts/tokenized_shards/<day>/<version>/)."
    ),
    check_specs=[
        dg.AssetCheckSpec(
            "exact_masks",
            asset="tokenized_shards",
            blocking=True,
            description="masked tokens decode to the assistant contents + end-of-turn, in order (expand: the "
            "example's one turn; as_rendered: the turn as the full rendering shows it)",
        ),
        dg.AssetCheckSpec(
            "train_serve_consistency",
            asset="tokenized_shards",
            blocking=True,
            description="tokens before each assistant turn == the serving prompt (expand: before the example's turn)",
        ),
        dg.AssetCheckSpec("manifest_checksums", asset="tokenized_shards", blocking=True),
        dg.AssetCheckSpec("tokenizer_fingerprint_recorded", asset="tokenized_shards", blocking=True),
    ],
)
def tokenized_shards(
    context: dg.AssetExecutionContext,
    config: TokenizeConfig,
    warehouse: Warehouse,
    artifacts: ArtifactStore,
) -> dg.MaterializeResult:
    # Imported in the step, not at load: the code location and the ingestion runs never need transformers.
    from transformers import AutoTokenizer

    from core.tokenize_partition import audit_masks, audit_serving, length_stats, tokenize_conversations

    day = date.fromisoformat(context.partition_key)
    model_dir = artifacts.require_latest("base_model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    fingerprint = tokenizer_fingerprint(model_dir)
    # Read as of one snapshot and record it: a checkpoint trained on these shards can read its data back as it
    # was (DuckLake time travel) after the day is curated again. The DuckDB file keeps no history (None).
    snapshot = warehouse.snapshot()
    curated = warehouse.read_table("curated.conversations", "day = ?", [day], snapshot=snapshot)
    if curated.height == 0:
        context.log.warning(f"curated.conversations has no rows for {day}; writing empty shards")
    result = tokenize_conversations(
        tokenizer,
        curated,
        day,
        max_length=config.max_length,
        overlong=config.overlong,
        rewrite_policy=config.rewrite_policy,
    )
    source_version = curated_fingerprint(curated)
    with artifacts.new_version("tokenized_shards", context.partition_key) as (version, tmp):
        write_shard_directory(
            tmp,
            result.rows,
            partition=context.partition_key,
            tokenizer_fingerprint=fingerprint,
            source_data_version=source_version,
            rows_per_file=config.rows_per_file,
            quarantine=result.quarantine,
            extra={
                "base_model": str(model_dir),
                "max_length": config.max_length,
                "overlong": config.overlong,
                "rewrite_policy": config.rewrite_policy,
                "conversations_by_outcome": result.counts,
                "quarantined": counts_by(result.quarantine, "reason"),
                "truncated": result.truncated,
                "warehouse_snapshot": snapshot,
            },
        )
    out_dir = artifacts.version_path("tokenized_shards", version, context.partition_key)
    manifest = read_manifest(out_dir)
    checksum_problems = verify_checksums(out_dir, manifest)
    masks = audit_masks(tokenizer, result.rows, curated, config.max_length)
    serving = audit_serving(
        tokenizer,
        result.rows,
        curated,
        config.serving_check_rows,
        config.max_length,
        turns=config.serving_check_turns,
    )

    totals = manifest["totals"]
    seconds = max(result.seconds, 1e-9)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out_dir)),
            "version": version,
            "dagster/row_count": dg.MetadataValue.int(totals["conversations"]),
            "tokens": dg.MetadataValue.int(totals["tokens"]),
            "loss_tokens": dg.MetadataValue.int(totals["loss_tokens"]),
            "loss_token_fraction": totals["loss_tokens"] / max(totals["tokens"], 1),
            "splits": dg.MetadataValue.json(manifest["splits"]),
            "tokens_per_second": totals["tokens"] / seconds,
            "conversations_per_second": curated.height / seconds,
            "tokenize_seconds": result.seconds,
            "truncated": result.truncated,
            "rewrite_policy": config.rewrite_policy,
            "conversations_kept": result.counts["kept"],
            "conversations_expanded": result.counts["expanded"],
            "expanded_examples": result.counts["expanded_examples"],
            "conversations_as_rendered": result.counts["as_rendered"],
            "conversations_quarantined": result.counts["quarantined"],
            "tokenizer_fingerprint": fingerprint,
            "base_model": dg.MetadataValue.path(str(model_dir)),
            "source_data_version": source_version,
            **({"warehouse/snapshot_read": dg.MetadataValue.int(snapshot)} if snapshot is not None else {}),
            **length_stats(result.rows),
            **reason_metadata("quarantined", counts_by(result.quarantine, "reason")),
        },
        check_results=[
            _check(
                "exact_masks",
                not masks.failures,
                rows_checked=masks.rows_checked,
                rewrite_policy=config.rewrite_policy,
                failures=len(masks.failures),
                first_failures=dg.MetadataValue.json(masks.failures[:5]),
            ),
            _check(
                "train_serve_consistency",
                not serving.failures,
                rows_checked=serving.rows_checked,
                turns_checked_per_row=config.serving_check_turns,  # 0 = every turn
                rewrite_policy=config.rewrite_policy,
                failures=len(serving.failures),
                rows_with_special_token_lookalikes=serving.lookalike_rows,
                first_failures=dg.MetadataValue.json(serving.failures[:5]),
            ),
            _check("manifest_checksums", not checksum_problems, problems=dg.MetadataValue.json(checksum_problems)),
            _check(
                "tokenizer_fingerprint_recorded",
                manifest.get("tokenizer_fingerprint") == fingerprint and bool(fingerprint),
                fingerprint=fingerprint,
            ),
        ],
    )
