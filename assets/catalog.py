"""Raw layer: the catalog snapshot and daily member interactions, with quarantine.

A bad record never fails a load: it becomes a raw.quarantine row with a reason code and its file and
line. What no record can survive (an empty file, an undecodable header, a mapping naming a column the
file lacks, an empty raw.catalog) fails the step with a ``dg.Failure(allow_retries=False)``: retrying
cannot fix it, and the retry policy would only repeat the same error twice after a delay.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl

from assets.metadata import commit_metadata, counts_by, markdown_table, reason_metadata
from assets.partitions import daily_partitions
from core import ingest, schemas
from core.fingerprints import files_fingerprint
from core.landing_files import IgnoredFile, glob_ignored, list_day_folder
from resources.landing import LandingArea
from resources.warehouse import Warehouse


@contextmanager
def permanent_input_errors(what: str) -> Iterator[None]:
    """Turn the ValueErrors that reading/mapping raise for bad input into a non-retried Failure.

    FileNotFoundError and OS errors pass through: a drop that is not there yet may be there on retry.
    """
    try:
        yield
    except ValueError as exc:
        raise dg.Failure(
            description=f"{what}: {exc}",
            metadata={"error": str(exc)[:2000]},
            allow_retries=False,
        ) from exc


def interaction_ignored(landing: LandingArea, day: date) -> list[IgnoredFile]:
    """The entries of the day's interactions input that the landing rules leave out, for the asset's metadata.

    The resource logs them while resolving the files; listing again here (cheap: one directory or one glob) puts
    them where an operator looks after a run, next to `files`, in the shape curated_conversations uses.
    """
    if landing.is_synthetic:
        return list(list_day_folder(Path(landing.root), "interactions", day.isoformat()).ignored)
    pattern = landing.interaction_files.replace("{day}", day.isoformat())
    return glob_ignored(Path(landing.root), pattern, ingest.SUPPORTED_SUFFIXES)


def schema_check(asset: str, name: str, df: pl.DataFrame, contract: dict[str, pl.DataType]) -> dg.AssetCheckResult:
    """Column names and dtypes equal the contract, in order."""
    actual = dict(df.schema)
    mismatched = {c: str(actual.get(c)) for c, t in contract.items() if actual.get(c) != t}
    extra = [c for c in actual if c not in contract]
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=name,
        passed=not mismatched and not extra,
        metadata={
            "mismatched": dg.MetadataValue.json(mismatched),
            "extra_columns": dg.MetadataValue.json(extra),
        },
    )


@dg.asset(
    group_name="raw",
    kinds={"duckdb", "polars"},
    description="Latest catalog snapshot (raw.catalog); rows that break the schema go to raw.quarantine.",
    check_specs=[
        dg.AssetCheckSpec("catalog_schema", asset="raw_catalog", description="raw.catalog matches the contract"),
        dg.AssetCheckSpec("unique_title_ids", asset="raw_catalog", description="title_id is a key"),
    ],
)
def raw_catalog(context: dg.AssetExecutionContext, warehouse: Warehouse, landing: LandingArea) -> dg.MaterializeResult:
    with permanent_input_errors("raw_catalog cannot read its input"):
        paths = landing.catalog_paths(context.log)
        frame, rejects = ingest.read_tables_with_rejects(
            paths, landing.catalog_encoding, source="catalog", landing_root=landing.root
        )
        catalog, quarantine = ingest.ingest_catalog(frame, landing.catalog_mapping_obj(), read_rejects=rejects)
    # One transaction: a reader never sees the new catalog with the old quarantine, or the reverse.
    commit = warehouse.replace_tables(
        [
            ("raw.catalog", catalog, "TRUE", []),
            ("raw.quarantine", quarantine, "source = 'catalog'", []),
        ],
        message="raw_catalog",
    )
    stored = warehouse.read_table("raw.catalog")
    duplicates = stored.height - stored["title_id"].n_unique()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(stored.height),
            "source": landing.source,
            "files": dg.MetadataValue.json([str(p) for p in paths]),
            "encoding": landing.catalog_encoding,
            "records_read": frame.height + rejects.height,
            "unreadable_records": rejects.height,
            "input_fingerprint": files_fingerprint(paths),
            "with_synopsis": int(stored["synopsis"].is_not_null().sum()),
            "with_year": int(stored["year"].is_not_null().sum()),
            "kinds": dg.MetadataValue.json(counts_by(stored, "kind")),
            **reason_metadata("quarantined", counts_by(quarantine, "reason")),
            "preview": markdown_table(stored.select("title_id", "title", "kind", "year", "genres")),
            **commit_metadata(commit),
        },
        check_results=[
            schema_check("raw_catalog", "catalog_schema", stored, schemas.CATALOG_SCHEMA),
            dg.AssetCheckResult(
                asset_key="raw_catalog",
                check_name="unique_title_ids",
                passed=duplicates == 0,
                metadata={"duplicate_ids": duplicates},
            ),
        ],
    )


@dg.asset(
    group_name="raw",
    kinds={"duckdb", "polars"},
    partitions_def=daily_partitions,
    deps=[raw_catalog],
    # Transient failures (a drop still being copied, a slow shared disk) succeed on a later attempt.
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
    description="One day of member events (raw.interactions); loading a day twice replaces it.",
    check_specs=[
        dg.AssetCheckSpec("interactions_schema", asset="raw_interactions"),
        dg.AssetCheckSpec(
            "known_titles_only", asset="raw_interactions", description="every title_id exists in raw.catalog"
        ),
    ],
)
def raw_interactions(
    context: dg.AssetExecutionContext, warehouse: Warehouse, landing: LandingArea
) -> dg.MaterializeResult:
    day = date.fromisoformat(context.partition_key)
    with permanent_input_errors(f"raw_interactions {day} has no input it can read"):
        paths, per_day = landing.interaction_paths(day, context.log)
    known = warehouse.query("SELECT title_id FROM raw.catalog")["title_id"]
    if known.len() == 0:
        raise dg.Failure(
            description="raw.catalog is empty: materialize raw_catalog before raw_interactions",
            allow_retries=False,
        )
    with permanent_input_errors(f"raw_interactions {day} cannot read its input"):
        # One file holding many days is parsed once; later days read their rows from the per-day index.
        load = ingest.ingest_interaction_files(
            paths,
            landing.interaction_encoding,
            landing.interaction_mapping_obj(),
            day,
            known,
            per_day_files=per_day,
            landing_root=landing.root,
            index_dir=Path(landing.root).parent / "interaction-index",
        )
    events, quarantine, stats = load.rows, load.quarantine, load.stats
    dated = quarantine.filter(pl.col("day").is_not_null())
    writes: list[tuple[str, pl.DataFrame, str, list[object]]] = [
        ("raw.interactions", events, "day = ?", [day]),
        ("raw.quarantine", dated, "source = 'interactions' AND day = ?", [day]),
    ]
    if not per_day:
        # Rows with unparsable timestamps belong to no day; every partition sees the same ones, so replace them.
        undated = quarantine.filter(pl.col("day").is_null())
        writes.append(("raw.quarantine", undated, "source = 'interactions' AND day IS NULL", []))
    # All in one transaction: the day's events never appear without their quarantine rows, or the reverse.
    commit = warehouse.replace_tables(writes, message=f"raw_interactions {day}")
    ignored = interaction_ignored(landing, day)
    stored = warehouse.read_table("raw.interactions", "day = ?", [day])
    unknown = warehouse.query(
        "SELECT count(*) AS n FROM raw.interactions i ANTI JOIN raw.catalog c USING (title_id) WHERE i.day = ?",
        [day],
    )["n"][0]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(stored.height),
            "members": stored["member_id"].n_unique(),
            "titles": stored["title_id"].n_unique(),
            "events": dg.MetadataValue.json(counts_by(stored, "event")),
            "files": dg.MetadataValue.json([str(p) for p in paths]),
            "encoding": landing.interaction_encoding,
            "unreadable_records": load.unreadable_records,
            "input_fingerprint": files_fingerprint(paths),
            "interaction_index": load.index,
            **{f"ingest/{k}": v for k, v in stats.items()},
            **reason_metadata("quarantined", counts_by(quarantine, "reason")),
            "ignored_files": dg.MetadataValue.json([i.as_dict() for i in ignored]),
            **commit_metadata(commit),
        },
        check_results=[
            schema_check("raw_interactions", "interactions_schema", stored, schemas.INTERACTIONS_SCHEMA),
            dg.AssetCheckResult(
                asset_key="raw_interactions",
                check_name="known_titles_only",
                passed=int(unknown) == 0,
                metadata={"unknown_title_rows": int(unknown)},
            ),
        ],
    )
