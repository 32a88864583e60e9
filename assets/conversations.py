"""Curated layer: grounded multi-turn conversations per day, plus external JSONL drops."""

import json
from datetime import date

import dagster as dg
import polars as pl

from assets.catalog import raw_catalog, raw_interactions, schema_check
from assets.metadata import counts_by, markdown_table, reason_metadata
from core import schemas
from core.conversation_builder import BuilderConfig, build_conversations
from core.curation import CurationConfig, curate, parse_external_jsonl
from core.fingerprints import frame_fingerprint
from dagster_project.partitions import daily_partitions
from resources.landing import LandingArea
from resources.warehouse import DuckDBWarehouse


class CurationRunConfig(dg.Config):
    """Curation bounds; defaults suit the demo data."""

    max_message_chars: int = 4000
    max_conversation_chars: int = 16000
    max_exchanges: int = 4
    quarantine_rate_max: float = 0.25
    seed: int = 7


def curated_fingerprint(df: pl.DataFrame) -> str:
    """The partition's data version: which conversations, with which content and split."""
    return frame_fingerprint(df, ["conversation_id", "content_hash", "split"])


@dg.asset(
    group_name="curated",
    kinds={"duckdb", "polars"},
    partitions_def=daily_partitions,
    deps=[raw_catalog, raw_interactions],
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
    description=(
        "Validated multi-turn chats in the messages format with a stable split (curated.conversations); "
        "rejects in curated.quarantine with a reason code."
    ),
    check_specs=[
        dg.AssetCheckSpec("conversations_schema", asset="curated_conversations"),
        dg.AssetCheckSpec(
            "no_member_in_two_splits",
            asset="curated_conversations",
            description="across all days",
            blocking=True,
        ),
        dg.AssetCheckSpec("quarantine_rate_bounded", asset="curated_conversations"),
        dg.AssetCheckSpec("assistant_turn_in_every_row", asset="curated_conversations", blocking=True),
    ],
)
def curated_conversations(
    context: dg.AssetExecutionContext,
    config: CurationRunConfig,
    warehouse: DuckDBWarehouse,
    landing: LandingArea,
) -> dg.MaterializeResult:
    day = date.fromisoformat(context.partition_key)
    catalog = warehouse.read_table("raw.catalog")
    interactions = warehouse.read_table("raw.interactions", "day = ?", [day])
    if catalog.height == 0:
        raise RuntimeError("raw.catalog is empty: materialize raw_catalog first")
    if interactions.height == 0:
        context.log.warning(f"raw.interactions has no rows for {day}; only external conversations will be curated")

    generated = build_conversations(
        catalog, interactions, day, BuilderConfig(seed=config.seed, max_exchanges=config.max_exchanges)
    )
    candidates = [generated]
    quarantines = []
    for path in landing.conversation_paths(day):
        with open(path, encoding="utf-8", errors="replace") as fh:
            external, rejected = parse_external_jsonl(fh, day, source=path.name)
        candidates.append(external)
        quarantines.append(rejected)
    seen = warehouse.query("SELECT DISTINCT content_hash FROM curated.conversations WHERE day < ?", [day])[
        "content_hash"
    ].to_list()
    cfg = CurationConfig(
        max_message_chars=config.max_message_chars, max_conversation_chars=config.max_conversation_chars
    )
    curated, rejected, stats = curate(pl.concat(candidates, how="vertical_relaxed"), day, cfg, seen_hashes=seen)
    quarantine = pl.concat(
        [schemas.conform(q, schemas.CONVERSATION_QUARANTINE_SCHEMA) for q in [*quarantines, rejected]]
    )
    warehouse.replace_partition("curated.conversations", curated, day)
    warehouse.replace_partition("curated.quarantine", quarantine, day)

    stored = warehouse.read_table("curated.conversations", "day = ?", [day])
    leaking = warehouse.query(
        "SELECT member_id FROM curated.conversations WHERE member_id IS NOT NULL "
        "GROUP BY member_id HAVING count(DISTINCT split) > 1"
    )
    offered = stored.height + quarantine.height
    rate = quarantine.height / offered if offered else 0.0
    no_assistant = stored.filter(
        ~pl.col("messages").list.eval(pl.element().struct.field("role") == "assistant").list.any()
    ).height
    turns = stored["messages"].list.len()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(stored.height),
            "by_kind": dg.MetadataValue.json(counts_by(stored, "kind")),
            "by_split": dg.MetadataValue.json(counts_by(stored, "split")),
            "messages_per_conversation_mean": float(turns.mean() or 0.0),
            "quarantine_rate": rate,
            "curation_stats": dg.MetadataValue.json(stats),
            "data_version": curated_fingerprint(stored),
            **reason_metadata("quarantined", counts_by(quarantine, "reason")),
            "sample": dg.MetadataValue.md(
                "```json\n" + json.dumps(stored.head(1)["messages"].to_list(), indent=1)[:3000] + "\n```"
            ),
            "quarantine_preview": markdown_table(quarantine.select("conversation_id", "reason", "detail")),
        },
        check_results=[
            schema_check("curated_conversations", "conversations_schema", stored, schemas.CONVERSATIONS_SCHEMA),
            dg.AssetCheckResult(
                asset_key="curated_conversations",
                check_name="no_member_in_two_splits",
                passed=leaking.height == 0,
                metadata={"members_in_two_splits": leaking.height},
            ),
            dg.AssetCheckResult(
                asset_key="curated_conversations",
                check_name="quarantine_rate_bounded",
                passed=rate <= config.quarantine_rate_max,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"rate": rate, "bound": config.quarantine_rate_max},
            ),
            dg.AssetCheckResult(
                asset_key="curated_conversations",
                check_name="assistant_turn_in_every_row",
                passed=no_assistant == 0,
                metadata={"rows_without_assistant": no_assistant},
            ),
        ],
    )
