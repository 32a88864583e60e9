"""base_model (family) -> tokenized_shards -> trained_checkpoint -> eval_report through Dagster, per family."""

import json
from pathlib import Path

import dagster as dg
import pytest
from support.training_builders import NO_COMPILE_EXTRA_JSON, TINY_MODEL
from transformers import AutoModelForCausalLM

from core.eval_report import validate_report_json
from core.model_families import FAMILIES

pytestmark = pytest.mark.slow

DAY = "2026-01-01"
FAST_EVAL = {"generation_cases": 4, "max_new_tokens": 8, "batch_size": 4}
# Compiled layers of each family are checked against transformers by tests/unit/test_family_verifier.py.
TRAIN = {
    "max_steps": 3, "seq_len": 128, "micro_batch_rows": 2, "grad_accum_steps": 1, "warmup_steps": 1,
    "extra_json": NO_COMPILE_EXTRA_JSON,
}  # fmt: skip


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
    return {k: getattr(v, "value", v) for k, v in events[-1].materialization.metadata.items()}


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"llama"}))  # llama: test_training_assets.py
def test_family_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("PLATFORM_HOME", str(tmp_path))
    monkeypatch.setenv("SYNTHETIC_TITLES", "200")
    monkeypatch.setenv("SYNTHETIC_MEMBERS", "300")
    from core.settings import load_settings
    from dagster_project.definitions import ASSETS
    from dagster_project.resources import build_resources

    resources, instance = build_resources(load_settings()), dg.DagsterInstance.ephemeral()

    def run(selection: list[str], partition: str | None = None, config: dict | None = None):
        return dg.materialize(
            ASSETS, selection=selection, partition_key=partition, resources=resources, instance=instance,
            run_config={"ops": {k: {"config": v} for k, v in (config or {}).items()}}, raise_on_error=False,
        )  # fmt: skip

    assert run(["raw_catalog"]).success
    assert run(["raw_interactions", "curated_conversations"], DAY).success
    base = run(["base_model"], config={"base_model": {**TINY_MODEL, "local_path": "", "family": name}})
    assert base.success and _meta(base, "base_model")["family"] == name
    assert _meta(base, "base_model")["architecture"] == FAMILIES[name].model_class.__name__
    assert run(["tokenized_shards"], DAY).success

    result = run(["trained_checkpoint", "eval_report"], config={"trained_checkpoint": TRAIN, "eval_report": FAST_EVAL})
    assert result.success
    checkpoint = Path(_meta(result, "trained_checkpoint")["path"])
    assert type(AutoModelForCausalLM.from_pretrained(checkpoint)) is FAMILIES[name].model_class
    assert json.loads((checkpoint / "summary.json").read_text())["steps"] == 3
    report = json.loads((Path(_meta(result, "eval_report")["path"]) / "report.json").read_text())
    assert validate_report_json(report) == []
