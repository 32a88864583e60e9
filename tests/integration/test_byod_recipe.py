"""The bring-your-own-data recipe exactly as docs/bring-your-own-data.md writes it, on a small MovieLens-shaped set.

The settings come from the worked example's own `export` lines (run by bash, with DATA pointed at the test's
files), and the command is the one the page documents, so the page cannot drift from what works.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from core.shards import read_manifest, verify_checksums
from resources.warehouse import Warehouse

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "bring-your-own-data.md"
FIRST_DAY = date(2025, 3, 1)
DAYS = [FIRST_DAY + timedelta(days=i) for i in range(3)]
TITLES = 36
MEMBERS = 50
RATINGS_PER_MEMBER = 6  # two on each day


def write_movielens(folder: Path) -> dict[str, int]:
    """movies.csv + ratings.csv shaped like MovieLens; returns the number of ratings per day."""
    folder.mkdir(parents=True)
    genres = ["Comedy", "Drama|Romance", "Action|Thriller", "Animation|Children", "Sci-Fi", "(no genres listed)"]
    movies = ["movieId,title,genres"]
    movies += [f'{i},"Movie {i}, The ({1970 + i})",{genres[i % len(genres)]}' for i in range(1, TITLES + 1)]
    (folder / "movies.csv").write_text("\n".join(movies) + "\n")
    midnight = int(datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day, tzinfo=UTC).timestamp())
    ratings = ["userId,movieId,rating,timestamp"]
    per_day = dict.fromkeys((d.isoformat() for d in DAYS), 0)
    for user in range(1, MEMBERS + 1):
        for k in range(RATINGS_PER_MEMBER):
            day = k % len(DAYS)
            movie = (user * 7 + k * 5) % TITLES + 1
            ts = midnight + day * 86400 + (user * 997 + k * 3571) % 86000
            ratings.append(f"{user},{movie},{1 + (user + k) % 9 / 2},{ts}")
            per_day[DAYS[day].isoformat()] += 1
    (folder / "ratings.csv").write_text("\n".join(ratings) + "\n")
    return per_day


def documented_block(heading: str) -> str:
    """The first ```bash block after `heading` in the page."""
    text = DOC.read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"no bash block after {heading!r} in {DOC}"
    return match.group(1)


def documented_env(data: Path, home: Path, partition_start: date) -> dict[str, str]:
    """The environment after the worked example's exports, with DATA and PLATFORM_PARTITION_START set for this
    data and PLATFORM_HOME/DAGSTER_HOME in the test's folder."""
    exports = [line for line in documented_block("## Worked example").splitlines() if line.startswith("export ")]
    names = [line.split("=", 1)[0].removeprefix("export ") for line in exports]
    assert {"PLATFORM_DATA_SOURCE", "CATALOG_FILES", "INTERACTION_FILES", "PLATFORM_PARTITION_START"} <= set(names)
    overrides = {"DATA": str(data), "PLATFORM_PARTITION_START": partition_start.isoformat()}
    script = [
        f"export {name}={json.dumps(overrides[name])}" if name in overrides else line
        for name, line in zip(names, exports, strict=True)
    ]
    script.append(f'{sys.executable} -c "import json, os; print(json.dumps(dict(os.environ)))"')
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PLATFORM_", "CATALOG_", "INTERACTION_"))}
    proc = subprocess.run(["bash", "-c", "\n".join(script)], env=base, capture_output=True, text=True, check=True)
    env = json.loads(proc.stdout)
    env.update(PLATFORM_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    return env


def documented_command(first: date, last: date) -> list[str]:
    """The page's `python -m dagster_project.ingest` line (what `make ingest` runs) with this test's days."""
    line = next(x for x in documented_block("## make ingest").splitlines() if "-m dagster_project.ingest" in x)
    words = shlex.split(line, comments=True)
    args = words[words.index("-m") :]
    assert args[:2] == ["-m", "dagster_project.ingest"] and args[2::2] == ["--from", "--to"], line
    return [sys.executable, "-m", "dagster_project.ingest", "--from", first.isoformat(), "--to", last.isoformat()]


def run_documented_command(env: dict[str, str], first: date, last: date) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        documented_command(first, last),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_documented_recipe_ingests_movielens_shaped_files(tmp_path: Path) -> None:
    per_day = write_movielens(tmp_path / "ml")
    home = tmp_path / "home"
    env = documented_env(tmp_path / "ml", home, FIRST_DAY)
    proc = run_documented_command(env, DAYS[0], DAYS[-1])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert f"your interaction data covers {DAYS[0]}..{DAYS[-1]}" in out

    wh = Warehouse(path=str(home / "warehouse.duckdb"))
    assert wh.query("SELECT count(*) AS n FROM raw.catalog")["n"][0] == TITLES
    stored = dict(wh.query("SELECT day::VARCHAR, count(*) FROM raw.interactions GROUP BY 1").rows())
    assert stored == per_day
    for day in per_day:
        shard_dirs = sorted((home / "artifacts" / "tokenized_shards" / day).iterdir())
        assert len(shard_dirs) == 1
        manifest = read_manifest(shard_dirs[0])
        assert verify_checksums(shard_dirs[0], manifest) == []
        assert manifest["partition"] == day
        totals = manifest["totals"]
        assert totals["conversations"] > 0 and totals["loss_tokens"] > 0
        line = (
            f"  {day}  {totals['conversations']:,} conversations, {totals['tokens']:,} tokens, "
            f"{totals['loss_tokens']:,} loss tokens  {shard_dirs[0]}"
        )
        assert line in out.splitlines(), f"{line!r} not printed:\n{out}"

    # The runs are in the instance the UI reads, one partition each.
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    for asset in ("raw_interactions", "curated_conversations", "tokenized_shards"):
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(per_day), asset
    assert instance.get_latest_materialization_event(dg.AssetKey("base_model")) is not None


def test_partition_start_after_the_data_names_the_variable_and_the_first_day(tmp_path: Path) -> None:
    write_movielens(tmp_path / "ml")
    home = tmp_path / "home"
    env = documented_env(tmp_path / "ml", home, DAYS[1])
    proc = run_documented_command(env, DAYS[1], DAYS[-1])
    assert proc.returncode == 2, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"set PLATFORM_PARTITION_START={FIRST_DAY.isoformat()}" in proc.stderr
    assert f"starts on {FIRST_DAY.isoformat()}" in proc.stderr
    # Nothing ran: no warehouse, no run in the instance.
    assert not (home / "warehouse.duckdb").exists()
    assert dg.DagsterInstance.from_config(str(home / "dagster")).get_runs() == []


def test_range_before_the_partition_start_fails_before_running(tmp_path: Path) -> None:
    write_movielens(tmp_path / "ml")
    home = tmp_path / "home"
    env = documented_env(tmp_path / "ml", home, FIRST_DAY)
    proc = run_documented_command(env, FIRST_DAY - timedelta(days=2), DAYS[-1])
    assert proc.returncode == 2, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"set PLATFORM_PARTITION_START={(FIRST_DAY - timedelta(days=2)).isoformat()}" in proc.stderr
    assert not (home / "warehouse.duckdb").exists()


@pytest.mark.slow
def test_a_bad_day_is_reported_and_the_other_days_get_shards(tmp_path: Path) -> None:
    """Per-day folders (`{day}` in INTERACTION_FILES), the middle day's file empty: exit 1 naming that day."""
    write_movielens(tmp_path / "ml")
    header, *rows = (tmp_path / "ml" / "ratings.csv").read_text().splitlines()
    for day in DAYS:
        folder = tmp_path / "exports" / day.isoformat()
        folder.mkdir(parents=True)
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        mine = [r for r in rows if 0 <= int(r.rsplit(",", 1)[1]) - midnight < 86400]
        (folder / "ratings.csv").write_text("" if day == DAYS[1] else "\n".join([header, *mine]) + "\n")
    home = tmp_path / "home"
    env = documented_env(tmp_path / "ml", home, FIRST_DAY)
    env["INTERACTION_FILES"] = str(tmp_path / "exports" / "{day}" / "*.csv")
    proc = run_documented_command(env, DAYS[0], DAYS[-1])
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "1 of 3 days failed" in proc.stderr
    failed = rf"^  {DAYS[1]}: step events\+conversations\+pairs \({DAYS[1]}\) failed in run .*empty"
    assert re.search(failed, proc.stderr, re.M), proc.stderr[-4000:]
    done = {DAYS[0].isoformat(), DAYS[2].isoformat()}
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    assert instance.get_materialized_partitions(dg.AssetKey("tokenized_shards")) == done
    assert {p.name for p in (home / "artifacts" / "tokenized_shards").iterdir()} == done
