"""Evaluation layer: held-out metrics, baselines, and the champion gate."""

import json
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import polars as pl

from assets.metadata import image_markdown
from assets.training import trained_checkpoint
from core.champion import (
    MAX_PROMOTION_ATTEMPTS,
    ChampionRecord,
    PromotionConflict,
    current_champion,
    promote_if_better,
    promotion_metrics,
)
from core.eval_report import build_report_json, write_report
from core.fingerprints import files_fingerprint
from evaluation import SuiteInputs, SuiteSettings, TitleMatcher, heldout_rows, hits, recommendation_prompts
from resources.artifacts import ArtifactStore, leftovers_metadata
from resources.warehouse import Warehouse
from resources.warehouse_history import conversations_as_trained

# The suite's defaults are SuiteSettings' own, so the run config and a suite run outside Dagster cannot disagree.
_SUITE_DEFAULTS = SuiteSettings()


class EvalConfig(dg.Config):
    generation_cases: int = _SUITE_DEFAULTS.generation_cases
    max_new_tokens: int = _SUITE_DEFAULTS.max_new_tokens
    batch_size: int = _SUITE_DEFAULTS.batch_size
    batch_tokens: int = _SUITE_DEFAULTS.batch_tokens
    loss_margin: float = 0.02  # relative: candidate validation loss may be at most 2% worse than the champion's
    hit_margin: float = 0.02  # absolute: candidate hit@5 may be at most 0.02 lower
    # A champion promoted by another eval while this one ran is evaluated too and compared again, at most this often.
    promotion_attempts: int = MAX_PROMOTION_ATTEMPTS


def suite_settings(config: EvalConfig) -> SuiteSettings:
    """The run config's suite fields as SuiteSettings; the rest (device) keeps SuiteSettings' defaults."""
    return SuiteSettings(
        generation_cases=config.generation_cases,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        batch_tokens=config.batch_tokens,
    )


def champion_registry(artifacts: ArtifactStore) -> Path | str:
    """The champion registry beside the artifacts: a directory, or a prefix of the artifacts' object store."""
    if artifacts.remote is not None:
        return f"{artifacts.root.rstrip('/')}/champion"
    return Path(artifacts.root) / "champion"


def champion_checkpoint_dir(artifacts: ArtifactStore, recorded: str) -> Path:
    """The champion's checkpoint directory here: as recorded, or, on an object store, fetched by its version name
    (the recorded path is the promoting machine's cache)."""
    path = Path(recorded)
    if artifacts.remote is not None and not path.is_dir() and path.name in artifacts.version_ids("trained_checkpoint"):
        return artifacts.fetch("trained_checkpoint", path.name)
    return path


def read_lineage(checkpoint: Path) -> dict:
    path = checkpoint / "lineage.json"
    if not path.is_file():
        raise dg.Failure(f"{checkpoint} has no lineage.json; re-materialize trained_checkpoint")
    return json.loads(path.read_text())


def suite_inputs(checkpoint: Path, warehouse: Warehouse, champion_dir: Path | None) -> SuiteInputs:
    lineage = read_lineage(checkpoint)
    shard_dirs = [Path(p) for p in lineage["shards"]]
    days = sorted({p.parent.name for p in shard_dirs})
    day_filter = pl.col("day").cast(pl.String).is_in(days)
    # The checkpoint's own data: each day as of the snapshot its shards read (DuckLake), even if re-curated since.
    conversations = conversations_as_trained(warehouse, lineage)
    heldout_members = conversations.filter(pl.col("split") != "train")["member_id"].drop_nulls().unique()
    # Popularity is learned from the same days, without the held-out members' own events.
    events = warehouse.read_table("raw.interactions").filter(
        day_filter & ~pl.col("member_id").is_in(heldout_members.implode())
    )
    return SuiteInputs(
        checkpoint_dir=checkpoint,
        base_model_dir=Path(lineage["base_model"]),
        shard_dirs=shard_dirs,
        conversations=conversations,
        catalog=warehouse.read_table("raw.catalog"),
        train_events=events,
        champion_dir=champion_dir,
    )


def champion_metrics_of(results: dict) -> dict:
    """Promotion metrics of a champion evaluated by the suite (its own eval_set is the candidate's data)."""
    return promotion_metrics(
        {"splits": results["loss"]["splits"], "recommendation": {"model": hits(results["recommendation"])}}
    )


def champion_measurer(
    context: dg.AssetExecutionContext, inputs: SuiteInputs, settings: SuiteSettings
) -> Callable[[ChampionRecord], dict | None]:
    """Evaluates a champion promoted during this eval on the same held-out data, so the gate compares models."""

    def measure(champion: ChampionRecord) -> dict | None:
        from evaluation import evaluate_model

        champion_dir = Path(champion.checkpoint)
        context.log.warning(f"champion changed to {champion.version} during this evaluation; evaluating it too")
        if not champion_dir.is_dir():
            context.log.warning(f"champion {champion.version} points at missing {champion_dir}; comparing without it")
            return None
        matcher = TitleMatcher(inputs.catalog)
        heldout = inputs.conversations.filter(pl.col("split").is_in(["validation", "test"]))
        cases, _ = recommendation_prompts(heldout, matcher)
        rows = heldout_rows(inputs.shard_dirs, inputs.conversations)
        return champion_metrics_of(evaluate_model(champion_dir, rows, cases, matcher, settings))

    return measure


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch"},
    deps=[trained_checkpoint],
    # A checkpoint materialized on its own (e.g. from the Launchpad) is evaluated and gated automatically.
    automation_condition=dg.AutomationCondition.eager(),
    description=(
        "Held-out loss/perplexity (by split and kind), hit@1/hit@5 of generated recommendations vs the base model "
        "and a popularity baseline, and the champion gate (artifacts/eval_report/<version>/)."
    ),
    check_specs=[
        dg.AssetCheckSpec(
            "no_regression_vs_champion",
            asset="eval_report",
            blocking=True,
            description="the checkpoint is not worse than the current champion by more than the configured margins",
        )
    ],
)
def eval_report(
    context: dg.AssetExecutionContext, config: EvalConfig, artifacts: ArtifactStore, warehouse: Warehouse
) -> dg.MaterializeResult:
    # run_suite and evaluate_model load torch and transformers: imported by the step, not with the code location.
    from evaluation import run_suite

    checkpoint = artifacts.require_latest("trained_checkpoint")
    registry = champion_registry(artifacts)
    champion = current_champion(registry)
    champion_dir = champion_checkpoint_dir(artifacts, champion.checkpoint) if champion else None
    if champion_dir is not None and not champion_dir.is_dir():
        context.log.warning(f"champion {champion.version} points at missing {champion_dir}; comparing without it")
        champion_dir = None
    inputs = suite_inputs(checkpoint, warehouse, champion_dir)
    settings = suite_settings(config)
    results = run_suite(inputs, settings)
    model, base = results["model"], results["base_model"]
    recommendation = {
        "model": hits(model["recommendation"]),
        "base_model": hits(base["recommendation"]),
        "popularity": hits(results["popularity"]),
    }
    candidate = promotion_metrics({"splits": model["loss"]["splits"], "recommendation": recommendation})
    champion_metrics = champion_metrics_of(results["champion"]) if "champion" in results else None
    summary = json.loads((checkpoint / "summary.json").read_text())
    eval_set = files_fingerprint([p / "manifest.json" for p in inputs.shard_dirs])
    leftovers = artifacts.clean_stale_temp_dirs("champion")  # promotions that died before their claim
    with artifacts.new_version("eval_report", leftovers=leftovers) as (version, tmp):
        # Compare-and-swap: recorded only if the champion compared with is still the champion; otherwise the new
        # champion is evaluated and compared. Done before the report is written, so the report tells what happened.
        try:
            outcome = promote_if_better(
                registry,
                candidate={**candidate, "eval_set": eval_set},
                checkpoint=str(checkpoint),
                eval_version=version,
                champion=champion,
                champion_metrics=champion_metrics,
                measure=champion_measurer(context, inputs, settings),
                loss_margin=config.loss_margin,
                hit_margin=config.hit_margin,
                max_attempts=config.promotion_attempts,
            )
        except PromotionConflict as exc:
            raise dg.Failure(description=f"eval_report of {checkpoint.name}: {exc}") from exc
        decision = outcome.decision
        report = build_report_json(
            checkpoint=str(checkpoint),
            splits=model["loss"]["splits"],
            recommendation=recommendation,
            champion=outcome.champion.version if outcome.champion_metrics is not None and outcome.champion else None,
            promoted=decision.promoted,
            by_kind=model["loss"]["by_kind"],
            decision=decision,
            champion_metrics=outcome.champion_metrics,
            base_model_splits=base["loss"]["splits"],
            eval_set=eval_set,
            samples=len(model["recommendation"]["samples"]),
        )
        files = write_report(
            tmp,
            report,
            loss_curve=summary.get("loss_curve"),
            champion_report=outcome.champion_metrics,
            samples=model["recommendation"]["samples"],
        )
    out_dir = artifacts.version_path("eval_report", version)
    if decision.promoted:
        context.log.info(f"promoted {checkpoint.name} to champion: {'; '.join(decision.reasons)}")
    else:
        context.log.warning(f"not promoted, champion unchanged: {'; '.join(decision.reasons)}")
    val, test = report["splits"]["validation"], report["splits"]["test"]
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out_dir)),
            "version": version,
            "checkpoint": dg.MetadataValue.path(str(checkpoint)),
            "validation_loss": val["loss"],
            "validation_perplexity": val["perplexity"],
            "test_loss": test["loss"],
            "test_perplexity": test["perplexity"],
            "base_model_validation_loss": base["loss"]["splits"]["validation"]["loss"],
            **{f"{system}/{k}": v for system, m in recommendation.items() for k, v in m.items()},
            "champion": report["champion"] or "none",
            "promoted": decision.promoted,
            "champion_changed_during_eval": dg.MetadataValue.json(list(outcome.superseded_by)),
            "cleaned_up": leftovers_metadata(leftovers),
            "decision": dg.MetadataValue.json({"reasons": decision.reasons, "deltas": decision.deltas}),
            "report": dg.MetadataValue.md((out_dir / "report.md").read_text()),
            "plots": dg.MetadataValue.md(image_markdown([out_dir / f.name for f in files])),
        },
        check_results=[
            dg.AssetCheckResult(
                asset_key="eval_report",
                check_name="no_regression_vs_champion",
                passed=decision.promoted,
                metadata={
                    "reasons": dg.MetadataValue.json(decision.reasons),
                    "deltas": dg.MetadataValue.json(decision.deltas),
                    "champion": report["champion"] or "none",
                },
            )
        ],
    )
