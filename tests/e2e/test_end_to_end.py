"""The data half end to end, through real Dagster runs on a temporary PLATFORM_HOME."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from core.shards import read_manifest, read_split, verify_checksums
from core.tokenizer_training import tokenizer_fingerprint
from resources.warehouse import Warehouse

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SMALL = {
    "SYNTHETIC_TITLES": "300",
    "SYNTHETIC_MEMBERS": "400",
    "SYNTHETIC_DAYS": "2",
    "PLATFORM_PARTITION_START": "2026-01-01",
}


def run_demo(home: Path, extra_env: dict[str, str], days: int = 2) -> str:
    env = {**os.environ, **extra_env, "PLATFORM_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    proc = subprocess.run(
        [sys.executable, "-m", "dagster_project.demo", "--days", str(days), "--skip-training"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def check_evaluations(home: Path) -> dict[str, bool]:
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    results: dict[str, bool] = {}
    for run in instance.get_runs():
        for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            data = record.dagster_event.asset_check_evaluation_data
            key = f"{data.asset_key.to_user_string()}:{data.check_name}"
            results[key] = results.get(key, True) and data.passed
    return results


def test_synthetic_demo_materializes_the_data_half(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = run_demo(home, SMALL)
    assert "rows per layer" in out

    wh = Warehouse(path=str(home / "warehouse.duckdb"))
    assert wh.query("SELECT count(*) AS n FROM raw.catalog")["n"][0] > 250
    per_day = wh.query("SELECT day, count(*) AS n FROM raw.interactions GROUP BY day ORDER BY day")
    assert per_day.height == 2
    raw_reasons = set(wh.query("SELECT DISTINCT reason FROM raw.quarantine")["reason"].to_list())
    assert raw_reasons, "the synthetic source injects broken rows; they must be quarantined"
    kinds = set(wh.query("SELECT DISTINCT kind FROM curated.conversations")["kind"].to_list())
    assert {"recommendation", "title_qa", "search", "external"} <= kinds
    assert wh.query("SELECT count(*) AS n FROM curated.quarantine")["n"][0] > 0

    model_dir = sorted((home / "artifacts" / "base_model").iterdir())[-1]
    fingerprint = tokenizer_fingerprint(model_dir)
    total_rows = 0
    for day in ("2026-01-01", "2026-01-02"):
        shard_dir = sorted((home / "artifacts" / "tokenized_shards" / day).iterdir())[-1]
        manifest = read_manifest(shard_dir)
        assert verify_checksums(shard_dir, manifest) == []
        assert manifest["tokenizer_fingerprint"] == fingerprint
        assert manifest["partition"] == day
        train = read_split(shard_dir, "train", manifest)
        assert train.height == manifest["splits"]["train"]["conversations"] > 0
        total_rows += manifest["totals"]["conversations"]
    curated = wh.query("SELECT count(*) AS n FROM curated.conversations")["n"][0]
    assert total_rows > 0.95 * curated

    checks = check_evaluations(home)
    expected = {
        "tokenized_shards:exact_masks",
        "tokenized_shards:train_serve_consistency",
        "tokenized_shards:manifest_checksums",
        "tokenized_shards:tokenizer_fingerprint_recorded",
        "curated_conversations:no_member_in_two_splits",
        "curated_conversations:assistant_turn_in_every_row",
        "curated_conversations:conversations_schema",
        "raw_catalog:catalog_schema",
        "raw_interactions:known_titles_only",
    }
    assert expected <= set(checks)
    assert all(checks[k] for k in expected), {k: checks[k] for k in expected}

    # Re-materializing a day replaces it: same rows, no duplicates, and the old shard version stays intact.
    before = wh.query("SELECT count(*) AS n FROM curated.conversations WHERE day = DATE '2026-01-01'")["n"][0]
    first_version = sorted((home / "artifacts" / "tokenized_shards" / "2026-01-01").iterdir())[0]
    first_manifest = json.loads((first_version / "manifest.json").read_text())
    run_demo(home, SMALL, days=1)
    after = wh.query("SELECT count(*) AS n FROM curated.conversations WHERE day = DATE '2026-01-01'")["n"][0]
    assert before == after
    assert json.loads((first_version / "manifest.json").read_text()) == first_manifest
    assert verify_checksums(first_version) == []
    assert len(list((home / "artifacts" / "tokenized_shards" / "2026-01-01").iterdir())) == 2


def test_bring_your_own_files_through_the_assets(tmp_path: Path) -> None:
    """A MovieLens-shaped drop (one ratings file for all days) ingested via column mappings."""
    data = tmp_path / "mydata"
    data.mkdir()
    genres = ["Comedy", "Drama|Romance", "Action|Thriller", "Animation|Children", "Sci-Fi"]
    lines = ["movieId,title,genres"]
    for i in range(1, 121):
        lines.append(f'{i},"Film Number {i} ({1960 + i % 60})",{genres[i % len(genres)]}')
    (data / "movies.csv").write_text("\n".join(lines) + "\n")
    ratings = ["userId,movieId,rating,timestamp"]
    day0 = 1767225600  # 2026-01-01T00:00:00Z
    for user in range(1, 81):
        for k in range(6):
            movie = (user * 7 + k * 13) % 120 + 1
            ts = day0 + (k % 2) * 86400 + user * 60 + k * 600
            ratings.append(f"{user},{movie},{1 + (user + k) % 5}.0,{ts}")
    ratings.append("81,999,4.0,1767225700")  # unknown title
    ratings.append("82,5,3.5,not-a-time")  # bad timestamp
    (data / "ratings.csv").write_text("\n".join(ratings) + "\n")
    env = {
        **SMALL,
        "PLATFORM_DATA_SOURCE": "files",
        "CATALOG_FILES": str(data / "movies.csv"),
        "CATALOG_MAPPING": json.dumps(
            {
                "title_id": "movieId",
                "title": "title",
                "genres": "genres",
                "year": None,
                "synopsis": None,
                "kind": None,
                "language": None,
                "maturity": None,
            }
        ),
        "INTERACTION_FILES": str(data / "ratings.csv"),
        "INTERACTION_MAPPING": json.dumps(
            {
                "member_id": "userId",
                "title_id": "movieId",
                "timestamp": "timestamp",
                "rating": "rating",
                "event": None,
                "value": None,
            }
        ),
    }
    home = tmp_path / "home"
    run_demo(home, env)
    wh = Warehouse(path=str(home / "warehouse.duckdb"))
    catalog = wh.read_table("raw.catalog")
    assert catalog.height == 120
    row = catalog.filter(catalog["title_id"] == "7").row(0, named=True)
    assert row["title"] == "Film Number 7" and row["year"] == 1967
    per_day = dict(wh.query("SELECT day::VARCHAR, count(*) FROM raw.interactions GROUP BY 1").rows())
    assert per_day == {"2026-01-01": 240, "2026-01-02": 240}
    reasons = wh.query("SELECT reason, day FROM raw.quarantine ORDER BY reason").rows()
    assert ("unknown_title", __import__("datetime").date(2026, 1, 1)) in reasons
    assert ("bad_timestamp", None) in reasons
    assert sum(1 for r in reasons if r[0] == "bad_timestamp") == 1  # replaced, not duplicated per day
    kinds = set(wh.query("SELECT DISTINCT kind FROM curated.conversations")["kind"].to_list())
    assert {"recommendation", "title_qa"} <= kinds
    for day in ("2026-01-01", "2026-01-02"):
        shard_dir = sorted((home / "artifacts" / "tokenized_shards" / day).iterdir())[-1]
        assert verify_checksums(shard_dir) == []
        assert read_manifest(shard_dir)["totals"]["conversations"] > 0
