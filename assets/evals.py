"""Evaluation layer: held-out metrics, baselines, and the champion gate."""

import json
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from assets.champions import CHECKPOINT_ASSETS, champion_checkpoint_dir, champion_registry, read_lineage
from assets.metadata import image_markdown
from assets.preference_training import latest_preference_shards, preference_checkpoint
from assets.training import trained_checkpoint
from core.champion import (
    MAX_PROMOTION_ATTEMPTS,
    ChampionRecord,
    PromotionConflict,
    current_champion,
    promote_if_better,
    promotion_metrics,
)
from core.eval_report import PREFERENCE_KEYS, RANKING_KEYS, build_report_json, write_report
from core.fingerprints import files_fingerprint
from core.settings import load_signal_thresholds
from evaluation import SuiteInputs, SuiteSettings
from evaluation.settings import HEADLINE_SPLIT
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
    # Ranking: candidates per case (a catalog this small is ranked whole), how negatives are drawn
    # ("popularity" or "uniform"), the fewest cases a metric is reported on, bootstrap resamples.
    ranking_candidates: int = _SUITE_DEFAULTS.ranking_candidates
    ranking_negatives: str = _SUITE_DEFAULTS.ranking_negatives
    candidate_batch_size: int = _SUITE_DEFAULTS.candidate_batch_size
    history_size: int = _SUITE_DEFAULTS.history_size
    min_cases: int = _SUITE_DEFAULTS.min_cases
    bootstrap_resamples: int = _SUITE_DEFAULTS.bootstrap_resamples
    loss_margin: float = 0.02  # relative: candidate validation loss may be at most 2% worse than the champion's
    hit_margin: float = 0.02  # absolute: candidate hit@5 may be at most 0.02 lower
    # absolute: held-out pairs' likelihood accuracy may be at most 0.02 lower (when both have enough pairs)
    preference_margin: float = 0.02
    # A champion promoted by another eval while this one ran is evaluated too and compared again, at most this often.
    promotion_attempts: int = MAX_PROMOTION_ATTEMPTS


def suite_settings(config: EvalConfig) -> SuiteSettings:
    """The run config's suite fields as SuiteSettings, the signal thresholds from the platform settings; the rest
    (device, seed) keeps SuiteSettings' defaults. A bad value fails the step once, naming it."""
    try:
        shared = {f.name: getattr(config, f.name) for f in fields(SuiteSettings) if f.name in EvalConfig.model_fields}
        return SuiteSettings(
            **shared,
            signals=load_signal_thresholds(),
        )
    except ValueError as exc:
        raise dg.Failure(
            description=f"eval_report run config is invalid: {exc}. Fix it under ops.eval_report.config",
            allow_retries=False,
        ) from exc


EVAL_CACHE = "eval_cache"  # under the artifact root: evaluation/result_cache.py entries, one JSON file each


def suite_inputs(
    checkpoint: Path, warehouse: Warehouse, champion_dir: Path | None, cache_dir: Path | None = None
) -> SuiteInputs:
    lineage = read_lineage(checkpoint)
    shard_dirs = [Path(p) for p in lineage["shards"]]
    days = sorted({p.parent.name for p in shard_dirs})
    day_filter = pl.col("day").cast(pl.String).is_in(days)
    # The checkpoint's own data: each day as of the snapshot its shards read (DuckLake), even if re-curated since.
    conversations = conversations_as_trained(warehouse, lineage)
    # Every member's events of those days: the suite holds out members by split and teaches the baselines the rest.
    events = warehouse.read_table("raw.interactions").filter(day_filter)
    return SuiteInputs(
        checkpoint_dir=checkpoint,
        base_model_dir=Path(lineage["base_model"]),
        shard_dirs=shard_dirs,
        conversations=conversations,
        catalog=warehouse.read_table("raw.catalog"),
        events=events,
        champion_dir=champion_dir,
        cache_dir=cache_dir,
    )


def recommendation_metadata(report: dict) -> dict[str, Any]:
    """The headline (test split) ranking numbers per system with n and intervals, the model's paired comparisons,
    and the generation hit@k: one entry each, so the UI can plot them across materializations."""
    out: dict[str, Any] = {}
    for system, entry in report["recommendation"].items():
        out[f"{system}/n"] = entry["n"]
        for metric in RANKING_KEYS:
            low, high = entry["ci"][metric]
            if metric in entry["insufficient"]:
                out[f"{system}/{metric}"] = f"insufficient (n = {entry['n']})"
            else:
                out[f"{system}/{metric}"] = entry[metric]
                out[f"{system}/{metric}_ci"] = f"[{low:.3f}, {high:.3f}]" if low is not None else "—"
    for baseline, diffs in report.get("comparisons", {}).get(HEADLINE_SPLIT, {}).items():
        for metric in ("hit@5", "ndcg@10"):
            d = diffs[metric]
            out[f"model_beats/{baseline}/{metric}"] = "insufficient" if d["insufficient"] else bool(d["beats"])
    for system, entry in report.get("generation", {}).items():
        for key in ("hit@1", "hit@3"):
            out[f"generation/{system}/{key}"] = entry.get(key)
    if "seconds_per_1000" in report["recommendation"]["model"]:
        out["eval_seconds_per_1000_candidates"] = round(report["recommendation"]["model"]["seconds_per_1000"], 3)
    out["recommendation_cases"] = dg.MetadataValue.json(report.get("cases", {}))
    return out


def preference_metadata(report: dict) -> dict[str, Any]:
    """preference/<metric> (test pairs), with _ci and n, and the validation likelihood accuracy the gate uses."""
    pref = report.get("preference")
    if not pref:
        return {}
    meta: dict[str, Any] = {"preference/n": pref["n"], "preference/reference": pref["reference"]}
    for key in PREFERENCE_KEYS:
        if pref.get(key) is not None:
            meta[f"preference/{key}"] = float(pref[key])
            low, high = pref["ci"].get(key, [None, None])
            if low is not None:
                meta[f"preference/{key}_ci"] = f"[{low:.3f}, {high:.3f}]"
    return meta


def _ranking_extras(system: dict) -> dict:
    """What report.json keeps of a system's ranking run besides the metrics: skips and the scoring cost."""
    ranking = system["ranking"]
    return {k: ranking[k] for k in ("skipped_by_reason", "seconds_per_1000") if k in ranking}


def champion_metrics_of(results: dict, preference: dict | None = None) -> dict:
    """Promotion metrics of a champion evaluated by the suite on the candidate's cases (its eval_set is theirs),
    with its held-out pair results when the candidate has pairs."""
    return promotion_metrics(
        {
            "splits": results["systems"]["champion"]["loss"]["splits"],
            "recommendation": {"model": results["recommendation"]["champion"]},
            **({"preference": {"by_split": preference}} if preference else {}),
        }
    )


def latest_candidate(artifacts: ArtifactStore) -> Path:
    """The checkpoint to evaluate: the newest version of trained_checkpoint and preference_checkpoint (version
    names sort by creation time), so a run evaluates what it just trained, whichever kind."""
    found = [(p.name, p) for asset in CHECKPOINT_ASSETS if (p := artifacts.latest(asset)) is not None]
    if not found:
        return artifacts.require_latest("trained_checkpoint")  # fails naming what to materialize
    return max(found)[1]


def held_out_preferences(
    context: dg.AssetExecutionContext,
    artifacts: ArtifactStore,
    checkpoint: Path,
    champion_dir: Path | None,
    config: EvalConfig,
) -> tuple[dict | None, dict | None]:
    """(the candidate's report.json ``preference`` input, the champion's by-split results) on held-out pairs;
    (None, None) when no preference_shards exist."""
    from evaluation.preference import PreferenceSettings, evaluate_preference

    if not artifacts.partitions("preference_shards"):
        return None, None
    shard_dirs = latest_preference_shards(artifacts)
    lineage = read_lineage(checkpoint)
    reference = Path(lineage.get("start_checkpoint") or lineage["base_model"])
    summary = json.loads((checkpoint / "summary.json").read_text())
    settings = PreferenceSettings(
        beta=float(summary.get("beta", PreferenceSettings.beta)),
        min_n=config.min_cases,
        resamples=config.bootstrap_resamples,
        seed=_SUITE_DEFAULTS.seed,
    )
    by_split = evaluate_preference(checkpoint, reference, shard_dirs, settings)
    champion = None
    if champion_dir is not None:
        try:
            champion = evaluate_preference(champion_dir, champion_dir, shard_dirs, settings)
        except ValueError as exc:  # e.g. a champion with another tokenizer than the shards
            context.log.warning(f"champion not evaluated on preference pairs: {exc}")
    return {"by_split": by_split, "reference": str(reference), "beta": settings.beta}, champion


def champion_measurer(
    context: dg.AssetExecutionContext, inputs: SuiteInputs, settings: SuiteSettings
) -> Callable[[ChampionRecord], dict | None]:
    """Evaluates a champion promoted during this eval on the same held-out data, so the gate compares models."""

    def measure(champion: ChampionRecord) -> dict | None:
        from evaluation.suite import evaluate_champion

        champion_dir = Path(champion.checkpoint)
        context.log.warning(f"champion changed to {champion.version} during this evaluation; evaluating it too")
        if not champion_dir.is_dir():
            context.log.warning(f"champion {champion.version} points at missing {champion_dir}; comparing without it")
            return None
        return champion_metrics_of(evaluate_champion(inputs, settings, champion_dir))

    return measure


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch"},
    deps=[trained_checkpoint, preference_checkpoint],
    # A checkpoint materialized on its own (e.g. from the Launchpad) is evaluated and gated automatically. Not
    # eager(): that waits until every dependency exists, and a platform without preference training never
    # has a preference_checkpoint.
    automation_condition=(
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("a checkpoint was updated"),
    description=(
        "Held-out loss/perplexity (by split and kind); ranking hit@1/5/10, NDCG@10 and MRR with n and bootstrap "
        "intervals of the model, its base model, popularity and co-occurrence on the same held-out members and "
        "candidates; hit@k of generated answers; preference accuracy and reward margin on held-out pairs; the "
        "champion gate (artifacts/eval_report/<version>/). Evaluates the newest trained or preference checkpoint."
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

    checkpoint = latest_candidate(artifacts)
    registry = champion_registry(artifacts)
    champion = current_champion(registry)
    champion_dir = champion_checkpoint_dir(artifacts, champion.checkpoint) if champion else None
    if champion_dir is not None and not champion_dir.is_dir():
        context.log.warning(f"champion {champion.version} points at missing {champion_dir}; comparing without it")
        champion_dir = None
    # Results of the base model and the champion are reused while they and the held-out data are unchanged.
    inputs = suite_inputs(checkpoint, warehouse, champion_dir, artifacts.local_root / EVAL_CACHE)
    settings = suite_settings(config)
    results = run_suite(inputs, settings)
    systems = results["systems"]
    model, base = systems["model"], systems["base_model"]
    recommendation = {
        name: {**entry, **_ranking_extras(systems[name])}
        for name, entry in results["recommendation"].items()
        if name != "champion"
    }
    generation = {name: systems[name]["generation"] for name in ("model", "base_model", "popularity")}
    preference, champion_preference = held_out_preferences(context, artifacts, checkpoint, champion_dir, config)
    candidate = promotion_metrics(
        {
            "splits": model["loss"]["splits"],
            "recommendation": recommendation,
            **({"preference": preference} if preference else {}),
        }
    )
    champion_metrics = champion_metrics_of(results, champion_preference) if "champion" in systems else None
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
                preference_margin=config.preference_margin,
                max_attempts=config.promotion_attempts,
            )
        except PromotionConflict as exc:
            raise dg.Failure(description=f"eval_report of {checkpoint.name}: {exc}") from exc
        decision = outcome.decision
        report = build_report_json(
            checkpoint=str(checkpoint),
            splits=model["loss"]["splits"],
            recommendation=recommendation,
            generation=generation,
            comparisons=results["comparisons"],
            cases=results["cases"],
            champion=outcome.champion.version if outcome.champion_metrics is not None and outcome.champion else None,
            promoted=decision.promoted,
            by_kind=model["loss"]["by_kind"],
            decision=decision,
            champion_metrics=outcome.champion_metrics,
            base_model_splits=base["loss"]["splits"],
            eval_set=eval_set,
            samples=len(model["generation"]["samples"]),
            preference=preference,
        )
        files = write_report(
            tmp,
            report,
            loss_curve=summary.get("loss_curve"),
            champion_report=outcome.champion_metrics,
            samples=model["generation"]["samples"],
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
            **recommendation_metadata(report),
            **preference_metadata(report),
            "champion": report["champion"] or "none",
            "promoted": decision.promoted,
            "champion_changed_during_eval": dg.MetadataValue.json(list(outcome.superseded_by)),
            "results_reused": dg.MetadataValue.json(sorted(n for n, s in systems.items() if s.get("cached"))),
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
