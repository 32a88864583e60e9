"""Curated layer: grounded multi-turn conversations per day, plus external JSONL drops.

Cross-day dedup: a text (content_hash) is kept on one day only, the first day to commit it, however days are
launched (sensor runs, a UI backfill, several `dagster asset materialize`, parallel pods): see
resources/curation_commit.py.
"""

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl

from assets.catalog import raw_catalog, raw_interactions, schema_check
from assets.metadata import commit_metadata, counts_by, markdown_table, reason_metadata
from assets.partitions import daily_partitions
from core import schemas
from core.conversation_builder import BuilderConfig, build_conversations
from core.curation import CurationConfig, parse_external_jsonl
from core.fingerprints import frame_fingerprint
from core.landing_files import IgnoredFile, LandingFileRefused, Listing, describe_ignored, open_landing_file
from core.settings import load_signal_thresholds
from resources.curation_commit import curate_and_commit
from resources.landing import LandingArea
from resources.warehouse import Warehouse

# A landing JSONL parser: (lines, day, source=..., encoding=...) -> (candidates, quarantine rows).
JsonlParser = Callable[..., tuple[pl.DataFrame, pl.DataFrame]]


class CurationRunConfig(dg.Config):
    """Curation bounds; defaults suit the demo data."""

    max_message_chars: int = 4000
    max_conversation_chars: int = 16000
    # Messages per conversation (system included); more is quarantined as too_many_turns.
    max_turns: int = 64
    max_exchanges: int = 4
    quarantine_rate_max: float = 0.25
    seed: int = 7


def run_configs(config: CurationRunConfig) -> tuple[BuilderConfig, CurationConfig]:
    """The builder and curation settings of a run, checked before any data is read.

    A bad value (e.g. max_turns=1) stays bad however often the step runs, so it fails the step once with a
    ``dg.Failure(allow_retries=False)`` naming the field, instead of the retry policy repeating it twice.
    """
    try:
        if not 0.0 <= config.quarantine_rate_max <= 1.0:
            raise ValueError(f"quarantine_rate_max={config.quarantine_rate_max} must be between 0 and 1 (a fraction)")
        builder = BuilderConfig(seed=config.seed, max_exchanges=config.max_exchanges, signals=load_signal_thresholds())
        curation = CurationConfig(
            max_message_chars=config.max_message_chars,
            max_conversation_chars=config.max_conversation_chars,
            max_turns=config.max_turns,
        )
    except ValueError as exc:
        raise dg.Failure(
            description=(
                f"curated_conversations run config is invalid: {exc}. Fix that field under "
                "ops.curated_conversations.config and launch the run again"
            ),
            metadata={"error": str(exc)},
            allow_retries=False,
        ) from exc
    return builder, curation


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
    warehouse: Warehouse,
    landing: LandingArea,
) -> dg.MaterializeResult:
    day = date.fromisoformat(context.partition_key)
    builder_cfg, cfg = run_configs(config)
    catalog = warehouse.read_table("raw.catalog")
    interactions = warehouse.read_table("raw.interactions", "day = ?", [day])
    if catalog.height == 0:
        # Permanent until someone materializes raw_catalog: retrying would only fail the same way twice more.
        raise dg.Failure(
            description=f"raw.catalog in {warehouse.describe()} is empty: materialize raw_catalog first, then this day",
            allow_retries=False,
        )
    if interactions.height == 0:
        context.log.warning(f"raw.interactions has no rows for {day}; only external conversations will be curated")

    generated = build_conversations(catalog, interactions, day, builder_cfg)
    external, parse_rejects, ignored = read_external_conversations(landing, day)
    if ignored:
        context.log.warning(
            f"not reading {len(ignored)} entries of the conversations drop for {day}: {describe_ignored(ignored)} "
            "(README 'Landing area' lists the reasons)"
        )
    candidates = pl.concat([generated, *external], how="vertical_relaxed")
    done = curate_and_commit(warehouse, day, candidates, cfg, parse_rejects, log=context.log.info)
    quarantine, final_stats, raced, commit = done.quarantine, done.stats, done.raced, done.commit

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
            "curation_stats": dg.MetadataValue.json(final_stats),
            "data_version": curated_fingerprint(stored),
            **reason_metadata("quarantined", counts_by(quarantine, "reason")),
            "sample": dg.MetadataValue.md(
                "```json\n" + json.dumps(stored.head(1)["messages"].to_list(), indent=1)[:3000] + "\n```"
            ),
            "quarantine_preview": markdown_table(quarantine.select("conversation_id", "reason", "detail")),
            "ignored_files": dg.MetadataValue.json([i.as_dict() for i in ignored]),
            "cross_day_race_rows": raced,
            **commit_metadata(commit),
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


def read_external_conversations(
    landing: LandingArea, day: date
) -> tuple[list[pl.DataFrame], list[pl.DataFrame], list[IgnoredFile]]:
    """(candidate frames, parse-reject frames, ignored entries) of the day's external conversations drop."""
    return read_jsonl_drop(landing.conversation_listing(day), day, parse_external_jsonl, landing.conversation_encoding)


def read_jsonl_drop(
    listing: Listing, day: date, parse: JsonlParser, encoding: str
) -> tuple[list[pl.DataFrame], list[pl.DataFrame], list[IgnoredFile]]:
    """(candidate frames, parse-reject frames, ignored entries) of one day's JSONL drop, parsed by ``parse``.

    Reads exactly the files the landing sensor counts (`core.landing_files`), in binary, decoded strictly with
    ``encoding``; a file that turned into a symlink or FIFO since the listing, or cannot be opened, is reported
    as ignored instead of failing the day.
    """
    ignored = list(listing.ignored)
    candidates: list[pl.DataFrame] = []
    rejects: list[pl.DataFrame] = []
    for entry in listing.accepted:
        try:
            fh = open_landing_file(entry.path)
        except LandingFileRefused as exc:
            ignored.append(IgnoredFile(entry.rel, exc.reason))
            continue
        with fh:
            parsed, rejected = parse(fh, day, source=Path(entry.path).name, encoding=encoding)
        candidates.append(parsed)
        rejects.append(rejected)
    return candidates, rejects, sorted(ignored, key=lambda i: i.rel)
