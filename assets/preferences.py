"""Preference layer: daily pairs (chosen over rejected) from member behaviour and external JSONL, and their shards.

The pairs are curated by the conversation rules (core/preferences/curation.py) and split by member exactly as
conversations are; the shards hold the prompt's tokens once and each completion's with its exact loss mask.
"""

import json
from datetime import date

import dagster as dg
import duckdb
import polars as pl

from assets.catalog import raw_catalog, raw_interactions, schema_check
from assets.conversations import CurationRunConfig, read_jsonl_drop, run_configs
from assets.metadata import commit_metadata, counts_by, markdown_table, reason_metadata
from assets.models import base_model
from assets.partitions import daily_partitions
from core import schemas
from core.curation import CurationConfig
from core.fingerprints import frame_fingerprint
from core.landing_files import IgnoredFile, describe_ignored
from core.preferences import PairBuilderConfig, behaviour_pairs, curate_pairs, parse_preference_jsonl
from core.settings import load_signal_thresholds
from core.shards import read_manifest, verify_checksums, write_shard_directory
from core.tokenizer_training import tokenizer_fingerprint
from resources.artifacts import ArtifactStore
from resources.landing import LandingArea
from resources.warehouse import PAIRS_SEEN_ELSEWHERE_SQL, Warehouse, fetch, replace_in

_RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


class PreferencePairsConfig(CurationRunConfig):
    """Curation bounds (as curated_conversations') plus how behaviour pairs are built."""

    history_size: int = 5  # watches named in a pair's prompt
    max_pairs_per_member: int = 4  # pairs one member gives per day


def pairs_fingerprint(df: pl.DataFrame) -> str:
    """The partition's data version: which pairs, with which content and split."""
    return frame_fingerprint(df, ["pair_id", "content_hash", "split"])


def _builder(config: PreferencePairsConfig) -> tuple[PairBuilderConfig, CurationConfig]:
    _, curation = run_configs(config)  # the curation bounds, checked as curated_conversations checks them
    try:
        builder = PairBuilderConfig(
            seed=config.seed,
            history_size=config.history_size,
            max_pairs_per_member=config.max_pairs_per_member,
            signals=load_signal_thresholds(),
        )
    except ValueError as exc:
        raise dg.Failure(
            description=f"preference_pairs run config is invalid: {exc}. Fix it under ops.preference_pairs.config",
            allow_retries=False,
        ) from exc
    return builder, curation


def read_external_pairs(
    landing: LandingArea, day: date
) -> tuple[list[pl.DataFrame], list[pl.DataFrame], list[IgnoredFile]]:
    """(candidate frames, parse-reject frames, ignored entries) of the day's preference JSONL drop."""
    return read_jsonl_drop(landing.preference_listing(day), day, parse_preference_jsonl, landing.conversation_encoding)


@dg.asset(
    group_name="curated",
    kinds={"duckdb", "polars"},
    partitions_def=daily_partitions,
    deps=[raw_catalog, raw_interactions],
    retry_policy=_RETRY,
    description=(
        "Preference pairs: a prompt with the member's context, a chosen and a rejected completion, from liked vs "
        "abandoned or low-rated titles and from external prompt/chosen/rejected JSONL (curated.preference_pairs; "
        "rejects in curated.preference_quarantine)."
    ),
    check_specs=[
        dg.AssetCheckSpec("preference_pairs_schema", asset="preference_pairs"),
        dg.AssetCheckSpec(
            "member_split_matches_conversations",
            asset="preference_pairs",
            blocking=True,
            description="a member's pairs are in the split their conversations are in (across all days)",
        ),
        dg.AssetCheckSpec("quarantine_rate_bounded", asset="preference_pairs"),
    ],
)
def preference_pairs(
    context: dg.AssetExecutionContext,
    config: PreferencePairsConfig,
    warehouse: Warehouse,
    landing: LandingArea,
) -> dg.MaterializeResult:
    day = date.fromisoformat(context.partition_key)
    builder, curation = _builder(config)
    catalog = warehouse.read_table("raw.catalog")
    if catalog.height == 0:
        raise dg.Failure(
            description=f"raw.catalog in {warehouse.describe()} is empty: materialize raw_catalog first, then this day",
            allow_retries=False,
        )
    interactions = warehouse.read_table("raw.interactions", "day = ?", [day])
    built = behaviour_pairs(catalog, interactions, day, builder)
    external, parse_rejects, ignored = read_external_pairs(landing, day)
    if ignored:
        context.log.warning(
            f"not reading {len(ignored)} entries of the preferences drop for {day}: {describe_ignored(ignored)}"
        )
    candidates = pl.concat([built.pairs, *external], how="vertical_relaxed")

    def commit(con: duckdb.DuckDBPyConnection) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
        # Pairs are few next to conversations: curating inside the transaction keeps cross-day dedup exact
        # without the conversations' optimistic retry loop.
        seen = fetch(con, PAIRS_SEEN_ELSEWHERE_SQL, [day])["content_hash"]
        curated, rejected, stats = curate_pairs(candidates, day, curation, seen_hashes=seen)
        quarantine = pl.concat(
            [schemas.conform(q, schemas.CONVERSATION_QUARANTINE_SCHEMA) for q in [*parse_rejects, rejected]]
        )
        replace_in(con, "curated.preference_pairs", curated, "day = ?", [day])
        replace_in(con, "curated.preference_quarantine", quarantine, "day = ?", [day])
        return curated, quarantine, stats

    done = warehouse.run_transaction(commit, serialize="curated.preference_pairs", message=f"preference pairs {day}")
    stored, quarantine, stats = done.value
    mismatched = warehouse.query(
        "SELECT DISTINCT p.member_id FROM curated.preference_pairs p JOIN curated.conversations c "
        "ON p.member_id = c.member_id WHERE p.split <> c.split"
    )
    offered = stored.height + quarantine.height
    rate = quarantine.height / offered if offered else 0.0
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(stored.height),
            "by_kind": dg.MetadataValue.json(counts_by(stored, "kind")),
            "by_split": dg.MetadataValue.json(counts_by(stored, "split")),
            "behaviour_pairs": dg.MetadataValue.json(built.stats),
            "curation_stats": dg.MetadataValue.json(stats),
            "quarantine_rate": rate,
            "data_version": pairs_fingerprint(stored),
            **reason_metadata("quarantined", counts_by(quarantine, "reason")),
            "sample": dg.MetadataValue.md(
                "```json\n"
                + json.dumps(stored.head(1).select("prompt", "chosen", "rejected").to_dicts(), indent=1)[:3000]
                + "\n```"
            ),
            "quarantine_preview": markdown_table(quarantine.select("conversation_id", "reason", "detail")),
            "ignored_files": dg.MetadataValue.json([i.as_dict() for i in ignored]),
            **commit_metadata(done),
        },
        check_results=[
            schema_check("preference_pairs", "preference_pairs_schema", stored, schemas.PREFERENCE_PAIRS_SCHEMA),
            dg.AssetCheckResult(
                asset_key="preference_pairs",
                check_name="member_split_matches_conversations",
                passed=mismatched.height == 0,
                metadata={"members_in_another_split": mismatched.height},
            ),
            dg.AssetCheckResult(
                asset_key="preference_pairs",
                check_name="quarantine_rate_bounded",
                passed=rate <= config.quarantine_rate_max,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"rate": rate, "bound": config.quarantine_rate_max},
            ),
        ],
    )


class PreferenceTokenizeConfig(dg.Config):
    max_length: int = 2048  # tokens of one side (prompt + completion); a longer side quarantines the pair (too_long)
    rewrite_policy: str = "expand"  # as tokenized_shards: how a template that rewrites earlier turns is handled
    rows_per_file: int = 20_000
    serving_check_rows: int = 2_000  # pairs sampled for the train/serve check; 0 = every pair


def _shard_check(name: str, passed: bool, **metadata: object) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(asset_key="preference_shards", check_name=name, passed=passed, metadata=dict(metadata))


@dg.asset(
    group_name="tokens",
    kinds={"parquet", "huggingface"},
    partitions_def=daily_partitions,
    deps=[preference_pairs, base_model],
    retry_policy=_RETRY,
    description=(
        "Prompt ids once, then chosen and rejected completion ids with exact loss masks, per pair and split, "
        "rendered with the base model's chat template (artifacts/preference_shards/<day>/<version>/)."
    ),
    check_specs=[
        dg.AssetCheckSpec(
            "exact_masks",
            asset="preference_shards",
            blocking=True,
            description="each side's masked tokens decode to its completion + end-of-turn, and nothing else",
        ),
        dg.AssetCheckSpec(
            "train_serve_consistency",
            asset="preference_shards",
            blocking=True,
            description="the prompt ids == the served generation prompt of the pair's prompt",
        ),
        dg.AssetCheckSpec("manifest_checksums", asset="preference_shards", blocking=True),
        dg.AssetCheckSpec("tokenizer_fingerprint_recorded", asset="preference_shards", blocking=True),
    ],
)
def preference_shards(
    context: dg.AssetExecutionContext,
    config: PreferenceTokenizeConfig,
    warehouse: Warehouse,
    artifacts: ArtifactStore,
) -> dg.MaterializeResult:
    from transformers import AutoTokenizer

    from core.masking import REWRITE_POLICIES
    from core.preferences.tokenize import PAIR_LAYOUT, audit_pairs, tokenize_pairs

    if config.rewrite_policy not in REWRITE_POLICIES:
        raise dg.Failure(
            description=f"rewrite_policy={config.rewrite_policy!r} must be one of {REWRITE_POLICIES}",
            allow_retries=False,
        )
    day = date.fromisoformat(context.partition_key)
    model_dir = artifacts.require_latest("base_model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    fingerprint = tokenizer_fingerprint(model_dir)
    snapshot = warehouse.snapshot()
    pairs = warehouse.read_table("curated.preference_pairs", "day = ?", [day], snapshot=snapshot)
    if pairs.height == 0:
        context.log.warning(f"curated.preference_pairs has no rows for {day}; writing empty shards")
    result = tokenize_pairs(tokenizer, pairs, day, max_length=config.max_length, rewrite_policy=config.rewrite_policy)
    source_version = pairs_fingerprint(pairs)
    with artifacts.new_version("preference_shards", context.partition_key) as (version, tmp):
        write_shard_directory(
            tmp,
            result.rows,
            partition=context.partition_key,
            tokenizer_fingerprint=fingerprint,
            source_data_version=source_version,
            rows_per_file=config.rows_per_file,
            quarantine=result.quarantine,
            layout=PAIR_LAYOUT,
            extra={
                "base_model": str(model_dir),
                "max_length": config.max_length,
                "rewrite_policy": config.rewrite_policy,
                "quarantined": counts_by(result.quarantine, "reason"),
                "warehouse_snapshot": snapshot,
            },
        )
    out_dir = artifacts.version_path("preference_shards", version, context.partition_key)
    manifest = read_manifest(out_dir)
    checksum_problems = verify_checksums(out_dir, manifest)
    masks, serving, checked = audit_pairs(tokenizer, result.rows, pairs, sample=config.serving_check_rows)
    totals = manifest["totals"]
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out_dir)),
            "version": version,
            "dagster/row_count": dg.MetadataValue.int(totals["pairs"]),
            "tokens": dg.MetadataValue.int(totals["tokens"]),
            "loss_tokens": dg.MetadataValue.int(totals["loss_tokens"]),
            "splits": dg.MetadataValue.json(manifest["splits"]),
            "tokenize_seconds": result.seconds,
            "pairs_quarantined": result.quarantine.height,
            "tokenizer_fingerprint": fingerprint,
            "base_model": dg.MetadataValue.path(str(model_dir)),
            "source_data_version": source_version,
            **({"warehouse/snapshot_read": dg.MetadataValue.int(snapshot)} if snapshot is not None else {}),
            **reason_metadata("quarantined", counts_by(result.quarantine, "reason")),
        },
        check_results=[
            _shard_check(
                "exact_masks",
                not masks,
                rows_checked=checked,
                failures=len(masks),
                first_failures=dg.MetadataValue.json(masks[:5]),
            ),
            _shard_check(
                "train_serve_consistency",
                not serving,
                rows_checked=checked if not config.serving_check_rows else min(checked, config.serving_check_rows),
                failures=len(serving),
                first_failures=dg.MetadataValue.json(serving[:5]),
            ),
            _shard_check(
                "manifest_checksums", not checksum_problems, problems=dg.MetadataValue.json(checksum_problems)
            ),
            _shard_check(
                "tokenizer_fingerprint_recorded",
                manifest.get("tokenizer_fingerprint") == fingerprint and bool(fingerprint),
                fingerprint=fingerprint,
            ),
        ],
    )
