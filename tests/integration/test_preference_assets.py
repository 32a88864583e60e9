"""preference_pairs -> preference_shards through Dagster on the synthetic source, with an external JSONL drop."""

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from support.training_builders import TINY_MODEL

from core.preferences.tokenize import PAIR_LAYOUT
from core.shards import read_manifest, read_split

DAY = "2026-01-02"
GOOD = {
    "prompt": [{"role": "user", "content": "Something tense like Heat?"}],
    "chosen": [{"role": "assistant", "content": "Try a heist thriller."}],
    "rejected": [{"role": "assistant", "content": "Try a cartoon about cars."}],
    "member_id": "partner-7",
}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("home")
    drop = home / "landing" / "preferences" / f"day={DAY}"
    drop.mkdir(parents=True)
    (drop / "partner.jsonl").write_text(json.dumps(GOOD) + "\n{not json\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("PLATFORM_HOME", str(home))
    mp.setenv("SYNTHETIC_TITLES", "300")
    mp.setenv("SYNTHETIC_MEMBERS", "1500")
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
    pairs_run = run(["raw_interactions", "curated_conversations", "preference_pairs"], DAY)
    assert pairs_run.success
    assert run(["base_model"], config={"base_model": TINY_MODEL}).success
    shards_run = run(["preference_shards"], DAY)
    assert shards_run.success
    yield home, run, pairs_run, shards_run
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


def _query(home: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(sql).fetchall()


def test_pairs_come_from_behaviour_and_the_drop_with_bad_lines_quarantined(platform) -> None:
    home, _, pairs_run, _ = platform
    checks = _checks(pairs_run)
    assert checks["member_split_matches_conversations"] and checks["preference_pairs_schema"]
    kinds = dict(_query(home, "SELECT kind, count(*) FROM curated.preference_pairs GROUP BY kind"))
    assert kinds["behaviour"] > 0 and kinds["external"] == 1
    assert _query(home, "SELECT reason, detail FROM curated.preference_quarantine")[0][0] == "invalid_json"
    assert "partner.jsonl:2" in _query(home, "SELECT detail FROM curated.preference_quarantine")[0][0]
    meta = _meta(pairs_run, "preference_pairs")
    assert meta["dagster/row_count"] == sum(kinds.values())
    assert meta["behaviour_pairs"]["pairs"] == kinds["behaviour"]
    # A member's pairs and conversations share one split.
    assert _query(
        home,
        "SELECT count(*) FROM curated.preference_pairs p JOIN curated.conversations c USING (member_id) "
        "WHERE p.split <> c.split",
    ) == [(0,)]


def test_rerunning_a_day_replaces_its_pairs(platform) -> None:
    home, run, _, _ = platform
    before = _query(home, "SELECT pair_id, split FROM curated.preference_pairs ORDER BY pair_id")
    assert run(["preference_pairs"], DAY).success
    assert _query(home, "SELECT pair_id, split FROM curated.preference_pairs ORDER BY pair_id") == before


def test_shards_hold_every_pair_with_exact_masks(platform) -> None:
    home, _, _, shards_run = platform
    checks = _checks(shards_run)
    assert all(checks[name] for name in ("exact_masks", "train_serve_consistency", "manifest_checksums"))
    shard_dir = Path(_meta(shards_run, "preference_shards")["path"])
    manifest = read_manifest(shard_dir)
    assert manifest["layout"] == "preference_pairs"
    total = _query(home, "SELECT count(*) FROM curated.preference_pairs")[0][0]
    assert manifest["totals"]["pairs"] == total
    train = read_split(shard_dir, "train", manifest, layout=PAIR_LAYOUT)
    assert train.height == manifest["splits"]["train"]["pairs"] > 0
    row = train.row(0, named=True)
    assert sum(row["chosen_mask"]) > 0 and sum(row["rejected_mask"]) > 0
