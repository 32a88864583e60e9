"""SFT -> champion -> preference_checkpoint -> eval_report through Dagster: lineage end to end."""

import json
from pathlib import Path

import dagster as dg
import pytest
from support.training_builders import TINY_MODEL

from core.champion import current_champion
from core.eval_report import validate_report_json

pytestmark = pytest.mark.slow

DAY = "2026-01-02"
FAST_EVAL = {"generation_cases": 4, "max_new_tokens": 16, "batch_size": 8, "min_cases": 5, "bootstrap_resamples": 50}
SFT = {"max_steps": 6, "seq_len": 256, "micro_batch_rows": 2, "warmup_steps": 1, "extra_json": '{"compile": "off"}'}
DPO = {"max_steps": 4, "seq_len": 256, "micro_batch_rows": 2, "warmup_steps": 1, "lr": 1e-3, "checkpoint_every": 2}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("PLATFORM_HOME", str(home))
    mp.setenv("SYNTHETIC_TITLES", "300")
    mp.setenv("SYNTHETIC_MEMBERS", "1500")
    from core.settings import load_settings
    from dagster_project.definitions import defs
    from dagster_project.resources import build_resources

    resources = build_resources(load_settings())
    instance = dg.DagsterInstance.ephemeral()
    from dagster_project.definitions import ASSETS

    def run(selection: list[str], partition: str | None = None, config: dict | None = None):
        return dg.materialize(
            ASSETS,
            selection=selection,
            partition_key=partition,
            resources=resources,
            instance=instance,
            run_config={"ops": {k: {"config": v} for k, v in (config or {}).items()}},
            raise_on_error=False,
        )

    assert run(["raw_catalog"]).success
    assert run(["raw_interactions", "curated_conversations", "preference_pairs"], DAY).success
    assert run(["base_model"], config={"base_model": TINY_MODEL}).success
    assert run(["tokenized_shards", "preference_shards"], DAY).success
    sft = run(["trained_checkpoint", "eval_report"], config={"trained_checkpoint": SFT, "eval_report": FAST_EVAL})
    assert sft.success
    dpo = run(["preference_checkpoint", "eval_report"], config={"preference_checkpoint": DPO, "eval_report": FAST_EVAL})
    yield home, defs, sft, dpo
    mp.undo()


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
    return {k: getattr(v, "value", v) for k, v in events[-1].materialization.metadata.items()}


def test_the_preference_checkpoint_starts_from_the_champion_and_records_its_lineage(platform) -> None:
    _home, _, sft, dpo = platform
    assert dpo.success
    meta = _meta(dpo, "preference_checkpoint")
    sft_path = Path(_meta(sft, "trained_checkpoint")["path"])
    assert Path(meta["start_checkpoint"]) == sft_path
    lineage = json.loads((Path(meta["path"]) / "lineage.json").read_text())
    assert lineage["start_checkpoint"] == str(sft_path) and lineage["preference_shards"]
    assert lineage["base_model"] == json.loads((sft_path / "lineage.json").read_text())["base_model"]
    assert meta["steps"] == 4 and meta["trainable_parameters"] > 0
    assert json.loads((Path(meta["path"]) / "train_config.json").read_text())["base_model_dir"] == str(sft_path)


def test_eval_report_evaluates_the_preference_checkpoint_on_held_out_pairs(platform) -> None:
    home, _, sft, dpo = platform
    checkpoint = Path(_meta(dpo, "preference_checkpoint")["path"])
    meta = _meta(dpo, "eval_report")
    assert Path(meta["checkpoint"]) == checkpoint
    report = json.loads((Path(meta["path"]) / "report.json").read_text())
    assert validate_report_json(report) == []
    pref = report["preference"]
    assert (
        set(pref["by_split"]) == {"validation", "test"}
        and pref["reference"] == _meta(sft, "trained_checkpoint")["path"]
    )
    assert "preference/n" in meta and "Preference pairs" in (Path(meta["path"]) / "report.md").read_text()
    # The SFT evaluation had pairs too, judged against its base model.
    assert "preference" in json.loads((Path(_meta(sft, "eval_report")["path"]) / "report.json").read_text())
    decision = report["decision"]["reasons"]
    assert any("preference_likelihood_accuracy" in r for r in decision), decision
    champion = current_champion(home / "artifacts" / "champion")
    assert champion is not None
    assert champion.checkpoint in (str(checkpoint), _meta(sft, "trained_checkpoint")["path"])
    assert (champion.checkpoint == str(checkpoint)) == report["promoted"]
