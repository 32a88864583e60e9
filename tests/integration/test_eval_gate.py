"""eval_report's champion gate when another evaluation promotes while this one runs (the suite itself is faked:
the models are not the point here, the compare-and-swap wiring and what the report says are)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

import assets.evals as evals
import evaluation
import evaluation.suite
from core.atomic_io import new_version_id
from core.champion import current_champion, new_record, promote, read_champions
from evaluation import SuiteInputs, SuiteSettings
from resources.artifacts import ArtifactStore
from resources.warehouse import Warehouse


def _model_results(loss: float) -> dict[str, Any]:
    split = {"loss": loss, "perplexity": math.exp(loss), "loss_tokens": 100, "conversations": 10}
    return {
        "loss": {"splits": {"validation": split, "test": split}, "by_kind": {}},
        "ranking": {"ranks": [], "skipped_by_reason": {}, "seconds_per_1000": 1.0},
        "generation": {"hit@1": 0.1, "hit@3": 0.2, "n": 20, "samples": []},
    }


def _ranking(hit5: float) -> dict[str, Any]:
    """A system's ranking summary (both splits alike), as run_suite gives it."""
    values = {"hit@1": hit5 / 2, "hit@5": hit5, "hit@10": hit5, "ndcg@10": hit5 / 2, "mrr": hit5 / 2}
    entry = {**values, "n": 40, "insufficient": [], "ci": {k: [v, v] for k, v in values.items()}}
    return {**entry, "by_split": {"validation": dict(entry), "test": dict(entry)}}


def _checkpoint(root: Path, name: str) -> Path:
    path = root / "trained_checkpoint" / name
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"loss_curve": []}))
    return path


def _promote(registry: Path, name: str, checkpoint: Path, loss: float, hit5: float, previous: str | None) -> None:
    metrics = {"validation_loss": loss, "hit@5": hit5}
    promote(registry, new_record(checkpoint=checkpoint, eval_version=name, metrics=metrics, previous=previous))


def test_a_champion_promoted_during_the_eval_is_evaluated_and_compared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "artifacts"
    registry = root / "champion"
    c0_dir, better_dir = _checkpoint(root, new_version_id()), _checkpoint(root, new_version_id())
    _promote(registry, "c0", c0_dir, 2.0, 0.30, None)
    candidate = _checkpoint(root, new_version_id())  # the newest version: the one eval_report evaluates
    measured: list[Path] = []

    def fake_inputs(checkpoint: Path, warehouse: Any, champion_dir: Path | None, cache_dir: Any = None) -> SuiteInputs:
        empty, conversations = pl.DataFrame(), pl.DataFrame(schema={"split": pl.String})
        return SuiteInputs(checkpoint, tmp_path / "base", [], conversations, empty, empty, champion_dir)

    cases = {"n": 40, "by_split": {"validation": 40, "test": 40}, "skipped_by_reason": {}, "candidates": {}}

    def fake_suite(inputs: SuiteInputs, settings: Any) -> dict[str, Any]:
        assert inputs.champion_dir == c0_dir
        # While this suite ran, another eval promoted a better checkpoint over c0.
        _promote(registry, "b-better", better_dir, 1.70, 0.40, "c0")
        systems = {
            "model": _model_results(1.95),  # within the margins of c0, clearly worse than b-better
            "base_model": _model_results(3.0),
            "popularity": {"ranking": {"ranks": []}, "generation": {"hit@1": 0.05, "hit@3": 0.1, "n": 20}},
            "cooccurrence": {"ranking": {"ranks": []}},
            "champion": _model_results(2.0),
        }
        hits = {"model": 0.30, "base_model": 0.0, "popularity": 0.1, "cooccurrence": 0.2, "champion": 0.30}
        recommendation = {name: _ranking(h) for name, h in hits.items()}
        return {"cases": cases, "systems": systems, "recommendation": recommendation, "comparisons": {}}

    def fake_evaluate_champion(inputs: SuiteInputs, settings: Any, champion_dir: Path) -> dict[str, Any]:
        measured.append(Path(champion_dir))
        return {"systems": {"champion": _model_results(1.70)}, "recommendation": {"champion": _ranking(0.40)}}

    monkeypatch.setattr(evals, "suite_inputs", fake_inputs)
    # The asset imports these two from the evaluation package in its step (the package loads them lazily).
    monkeypatch.setattr(evaluation, "run_suite", fake_suite)
    monkeypatch.setattr(evaluation.suite, "evaluate_champion", fake_evaluate_champion)
    result = dg.materialize(
        [evals.eval_report],
        resources={
            "artifacts": ArtifactStore(root=str(root)),
            "warehouse": Warehouse(path=str(tmp_path / "warehouse.duckdb")),
        },
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    (event,) = [e for e in result.get_asset_materialization_events()]
    metadata = {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
    report = json.loads((Path(metadata["path"]) / "report.json").read_text())
    # Compared again with the champion of the moment (evaluated on the same data), not with the stale c0.
    assert measured == [better_dir]
    assert report["champion"] == "b-better" and report["promoted"] is False
    assert metadata["champion_changed_during_eval"] == ["b-better"]
    assert metadata["model/hit@5"] == 0.30 and metadata["cooccurrence/n"] == 40
    checks = [
        e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert [c.passed for c in checks] == [False]
    records, problems = read_champions(registry)
    assert problems == [] and [(r.version, r.previous) for r in records] == [("c0", None), ("b-better", "c0")]
    assert current_champion(registry).checkpoint == str(better_dir)  # type: ignore[union-attr]
    assert str(candidate) not in {r.checkpoint for r in records}


def test_the_run_config_takes_the_suite_defaults_from_suite_settings() -> None:
    # One source of truth per default: a run launched without config evaluates exactly as run_suite's defaults do.
    defaults = SuiteSettings()
    assert evals.suite_settings(evals.EvalConfig()) == defaults
    config_fields = evals.EvalConfig.model_fields
    shared = [name for name in SuiteSettings.__dataclass_fields__ if name in config_fields]
    assert {"generation_cases", "max_new_tokens", "batch_size", "batch_tokens"} <= set(shared)
    assert {"ranking_candidates", "ranking_negatives", "min_cases", "bootstrap_resamples"} <= set(shared)
    for name in shared:
        assert config_fields[name].default == getattr(defaults, name), name
        # Every suite field the run config has reaches the suite when a run changes it.
        other = "uniform" if name == "ranking_negatives" else getattr(defaults, name) + 1
        changed = evals.suite_settings(evals.EvalConfig(**{name: other}))
        assert getattr(changed, name) == other, name


def test_a_bad_ranking_setting_fails_the_step_naming_it() -> None:
    with pytest.raises(dg.Failure, match="ranking_negatives='random'"):
        evals.suite_settings(evals.EvalConfig(ranking_negatives="random"))
