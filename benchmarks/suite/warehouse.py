"""Benchmark 5, the warehouse: the data half with the warehouse in the loop, on the DuckDB file and on DuckLake,
and 1, 2 and 4 concurrent day writers on DuckLake.

The same generated candidate days feed every side. Each writer is its own process (what a day run is); the
DuckLake sides share one PostgreSQL catalog started here from Debian's binaries, each side on a fresh database.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.harness import machine_description, markdown_table, run_worker
from benchmarks.suite.sizes import Sizes
from core.local_postgres import LocalPostgres, free_port

WRITERS = (1, 2, 4)


def write_candidate_days(n: int, per_day: int, out: Path, seed: int = 7) -> list[Path]:
    """Candidate conversations (before curation) of as many generated days as `n` needs, one parquet per day."""
    from benchmarks.workload import _CONVERSATIONS_PER_MEMBER_DAY, iter_candidate_days

    out.mkdir(parents=True, exist_ok=True)
    files, total = [], 0
    for item in iter_candidate_days(int(per_day / _CONVERSATIONS_PER_MEMBER_DAY), seed):
        frame = item.candidates.head(n - total)
        path = out / f"day={item.day.isoformat()}.parquet"
        frame.write_parquet(path)
        files.append(path)
        total += frame.height
        if total >= n:
            return files
    raise AssertionError("unreachable")


def _side(warehouse: dict[str, Any], writers: int, days: list[Path], model: Path, out: Path) -> dict[str, Any]:
    """`writers` processes at once, days dealt round-robin; wall time from the first start to the last end."""
    shutil.rmtree(out, ignore_errors=True)
    groups = [group for group in (days[i::writers] for i in range(writers)) if group]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        runs = list(
            pool.map(
                lambda group: run_worker(
                    ["warehouse-days", "--warehouse", json.dumps(warehouse), "--out", str(out), "--model", str(model),
                     "--days", *map(str, group)],
                    timeout=3 * 3600,
                ),
                groups,
            )
        )  # fmt: skip
    wall = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    conversations = sum(r["conversations"] for r in runs)
    keys = [k for k in runs[0] if k.endswith("_seconds") and k != "wall_seconds"]
    return {
        "writers": writers,
        "wall_seconds": wall,
        "conversations": conversations,
        "tokens": sum(r["tokens"] for r in runs),
        "conversations_per_second": conversations / wall,
        "commit_retries": sum(r["commit_retries"] for r in runs),
        "recurations": sum(r["recurations"] for r in runs),
        "commits": sum(r["days"] for r in runs),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        # The machine is shared: the 1-minute load average around the side says how much else ran.
        "load_average": [round(load_before, 2), round(load_after, 2)],
        **{k: sum(r[k] for r in runs) for k in keys},
    }


def bench_warehouse(sizes: Sizes, model: Path, work: Path) -> tuple[dict[str, Any], str]:
    n = sizes.scale_large
    days = write_candidate_days(n, sizes.scale_per_day, work / "candidates")
    sides: dict[str, dict[str, Any]] = {}
    pg_dir = Path(tempfile.mkdtemp(prefix="bench-postgres-"))  # as root, `postgres` must be able to enter it
    server = LocalPostgres(pg_dir, free_port()).start()
    try:
        file_db = work / "warehouse.duckdb"
        file_db.unlink(missing_ok=True)
        sides["duckdb file, 1 writer"] = _side({"path": str(file_db)}, 1, days, model, work / "shards-file")
        for writers in WRITERS:
            lake_dir = work / f"lake-{writers}"
            shutil.rmtree(lake_dir, ignore_errors=True)
            catalog = server.create_database(f"bench_lake_{writers}")
            warehouse = {"backend": "ducklake", "ducklake_catalog": catalog, "ducklake_data_path": str(lake_dir)}
            sides[f"DuckLake, {writers} writer{'s' if writers > 1 else ''}"] = _side(
                warehouse, writers, days, model, work / f"shards-lake-{writers}"
            )
            print(f"    {writers} writer(s): {sides[list(sides)[-1]]['wall_seconds']:.0f}s")
    finally:
        server.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
    file_side, lake1 = sides["duckdb file, 1 writer"], sides["DuckLake, 1 writer"]
    lake2 = sides["DuckLake, 2 writers"]
    payload = {
        "candidate_conversations": n,
        "days": len(days),
        "sides": sides,
        "ducklake_over_file_wall": lake1["wall_seconds"] / file_side["wall_seconds"],
        "two_writers_speedup": lake1["wall_seconds"] / lake2["wall_seconds"],
    }
    machine = machine_description()
    payload["machine"] = {k: machine[k] for k in ("cpu_model", "usable_cpus")}
    return payload, warehouse_markdown(payload)


def warehouse_markdown(payload: dict[str, Any]) -> str:
    """Section 5 of RESULTS.md from the benchmark's payload."""
    sides = payload["sides"]
    rows = [
        [
            name,
            f"{s['conversations']:,}",
            s["wall_seconds"],
            s["conversations_per_second"],
            s["curate_seconds"],
            s["commit_seconds"],
            s["read_day_seconds"],
            s["tokenize_seconds"] + s["write_seconds"],
            f"{s['commit_retries']} / {s.get('recurations', '-')} / {s['commits']}",
            s["peak_rss_mib"],
            f"{s['load_average'][0]:.1f} -> {s['load_average'][1]:.1f}",
        ]
        for name, s in sides.items()
    ]
    table = markdown_table(
        ["side", "conversations", "wall s", "conv/s", "curate s", "commit s", "read day s", "tokenize+write s",
         "commit retries / re-curations / commits", "peak RSS MiB (one writer)", "load avg"],
        rows,
    )  # fmt: skip
    curated = sides["duckdb file, 1 writer"]["conversations"]
    machine = payload["machine"]
    return (
        f"## 5. The warehouse: the data half of {payload['candidate_conversations']:,} candidate conversations "
        f"({curated:,} kept by curation, {payload['days']} days) on the DuckDB file and on DuckLake\n\n{table}\n\n"
        f"- **DuckLake / DuckDB file, 1 writer, wall time: {payload['ducklake_over_file_wall']:.2f}x** (same days, "
        "same work; DuckLake's catalog is a local PostgreSQL 15, its data path a local directory).\n"
        f"- **DuckLake, 2 concurrent writers vs 1: {payload['two_writers_speedup']:.2f}x faster** in wall time on "
        "this 2-core machine (days dealt round-robin to writer processes; tokenization is CPU-bound, so more "
        "writers than cores cannot help).\n"
        f"- One run per side, the sides one after another (a side takes minutes), unlike benchmarks 1-4. Machine: "
        f"{machine['cpu_model']}, {machine['usable_cpus']} usable CPUs, shared: the load average column (1 minute, "
        "before -> after each side) says how much else ran.\n"
        "- Seconds per phase are summed over writers (time in each process, not wall); curate s includes reading "
        "the hashes other days hold, commit s the time inside transactions. Commit retries: transactions run again "
        "after a DuckLake commit conflict (curation's serialize key makes concurrent days conflict on purpose); "
        "re-curations: a day whose snapshot of other days' hashes went stale curates again outside its "
        "transaction (resources/curation_commit.py).\n"
    )
