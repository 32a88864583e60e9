"""trained_checkpoint -> eval_report through Dagster, with the real torchrun launcher and champion gate."""

import json
from pathlib import Path

import dagster as dg
import pytest
from support.training_builders import NO_COMPILE_EXTRA_JSON, TINY_MODEL
from transformers import AutoModelForCausalLM

from core.champion import read_champions
from core.eval_report import validate_report_json

pytestmark = pytest.mark.slow

DAYS = ["2026-01-01", "2026-01-02"]
FAST_EVAL = {"generation_cases": 8, "max_new_tokens": 24, "batch_size": 8}


def _train_config(**overrides) -> dict:
    base = {
        "max_steps": 8,
        "seq_len": 256,
        "micro_batch_rows": 2,
        "grad_accum_steps": 1,
        "lr": 3e-3,
        "warmup_steps": 1,
        "checkpoint_every": 4,
        "log_every": 2,
    }
    return {**base, **overrides}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("PLATFORM_HOME", str(home))
    mp.setenv("SYNTHETIC_TITLES", "300")
    mp.setenv("SYNTHETIC_MEMBERS", "500")
    from core.settings import load_settings
    from dagster_project.definitions import ASSETS
    from dagster_project.resources import build_resources

    resources = build_resources(load_settings())
    instance = dg.DagsterInstance.ephemeral()

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
    for day in DAYS:
        assert run(["raw_interactions", "curated_conversations"], day).success
    assert run(["base_model"], config={"base_model": TINY_MODEL}).success
    for day in DAYS:
        assert run(["tokenized_shards"], day).success
    yield home, run
    mp.undo()


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
    return {k: getattr(v, "value", v) for k, v in events[-1].materialization.metadata.items()}


def test_train_evaluate_promote_then_block_a_regression(platform) -> None:
    home, run = platform
    first = run(
        ["trained_checkpoint", "eval_report"], config={"trained_checkpoint": _train_config(), "eval_report": FAST_EVAL}
    )
    assert first.success
    train = _meta(first, "trained_checkpoint")
    checkpoint = Path(train["path"])
    AutoModelForCausalLM.from_pretrained(checkpoint, local_files_only=True)
    summary = json.loads((checkpoint / "summary.json").read_text())
    assert summary["steps"] == 8 and train["world_size"] == 2
    assert set(train["shard_versions"]) == set(DAYS)
    assert train["final_loss"] < summary["loss_curve"][0]["loss"]
    lineage = json.loads((checkpoint / "lineage.json").read_text())
    assert lineage["base_model"] == train["base_model"]

    report_meta = _meta(first, "eval_report")
    report = json.loads((Path(report_meta["path"]) / "report.json").read_text())
    assert validate_report_json(report) == []
    assert report["promoted"] is True and report["champion"] is None
    assert report["splits"]["validation"]["loss"] < report_meta["base_model_validation_loss"]
    assert set(report["recommendation"]) == {"model", "base_model", "popularity", "cooccurrence"}
    # Every system ranked the same held-out cases; the headline numbers are the test split's.
    assert report["cases"]["n"] > 0
    assert {e["n"] for e in report["recommendation"].values()} == {report["cases"]["by_split"]["test"]}
    assert set(report["generation"]) == {"model", "base_model", "popularity"}
    for name in ("report.md", "loss_curve.png", "metrics_vs_champion.png"):
        assert (Path(report_meta["path"]) / name).is_file()
    assert _checks(first)["no_regression_vs_champion"] is True
    champions, problems = read_champions(home / "artifacts" / "champion")
    assert problems == [] and [c.checkpoint for c in champions] == [str(checkpoint)]

    # A run that barely trains is a regression: the blocking check fails and the champion stays.
    # (The first run kept the default, compiled layers on both ranks; this one need not pay for inductor again.)
    barely = _train_config(max_steps=1, lr=1e-7, warmup_steps=0, extra_json=NO_COMPILE_EXTRA_JSON)
    worse = run(["trained_checkpoint", "eval_report"], config={"trained_checkpoint": barely, "eval_report": FAST_EVAL})
    assert not worse.success
    assert _checks(worse)["no_regression_vs_champion"] is False
    worse_report = json.loads((Path(_meta(worse, "eval_report")["path"]) / "report.json").read_text())
    assert worse_report["promoted"] is False and worse_report["champion"] == champions[0].version
    after, _ = read_champions(home / "artifacts" / "champion")
    assert [c.checkpoint for c in after] == [str(checkpoint)]
