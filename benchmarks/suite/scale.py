"""Benchmark 3, scale: curation + tokenization of many generated conversations, partition by partition."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import markdown_table, run_worker
from benchmarks.suite.sizes import Sizes, status


def bench_scale(sizes: Sizes, model: Path, work: Path) -> tuple[dict[str, Any], str]:
    results = {}
    for n in (sizes.scale_small, sizes.scale_large):
        out = work / f"scale-{n}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        results[n] = run_worker(
            ["scale", "--n", str(n), "--per-day", str(sizes.scale_per_day), "--out", str(out), "--model", str(model)],
            timeout=3 * 3600,
        )
        print(f"    scale {n:,}: {time.perf_counter() - started:.0f}s")
        shutil.rmtree(out, ignore_errors=True)
    small, large = results[sizes.scale_small], results[sizes.scale_large]
    gib = large["peak_rss_mib"] / 1024
    minutes = large["data_half_seconds"] / 60
    payload = {
        "runs": {str(k): v for k, v in results.items()},
        "conversations_per_partition": sizes.scale_per_day,
        "targets": {
            "minutes": {"target": 15, "value": minutes, "status": status(15, minutes, higher_is_better=False)},
            "peak_rss_gib": {"target": 4, "value": gib, "status": status(4, gib, higher_is_better=False)},
            "rss_growth_large_vs_small": large["peak_rss_mib"] / small["peak_rss_mib"],
        },
    }
    table = markdown_table(
        [
            "conversations",
            "partitions",
            "curation s",
            "tokenize s",
            "write s",
            "data half s",
            "conv/s",
            "peak RSS MiB",
            "(generator s)",
        ],
        [
            [
                f"{r['conversations']:,}",
                r["days"],
                r["curate_seconds"],
                r["tokenize_seconds"],
                r["write_seconds"],
                r["data_half_seconds"],
                r["conversations_per_second"],
                r["peak_rss_mib"],
                r["generate_seconds"],
            ]
            for r in (small, large)
        ],
    )
    md = (
        f"## 3. Scale: curation + tokenization, {sizes.scale_per_day:,} conversations per daily partition\n\n"
        f"{table}\n\n"
        f"- **{large['conversations']:,} conversations: {minutes:.1f} min, peak RSS {gib:.2f} GiB** "
        f"(targets < 15 min: {payload['targets']['minutes']['status']}, < 4 GiB: "
        f"{payload['targets']['peak_rss_gib']['status']}).\n"
        f"- Memory is flat in the input size: peak RSS {small['peak_rss_mib']:,.0f} MiB at "
        f"{small['conversations']:,} vs {large['peak_rss_mib']:,.0f} MiB at {large['conversations']:,} "
        f"({payload['targets']['rss_growth_large_vs_small']:.2f}x for "
        f"{large['conversations'] / small['conversations']:.0f}x the data): each partition is curated "
        f"(deduplicated against earlier days' content hashes), tokenized and written before the next is read, "
        f"as the daily assets do.\n"
        f"- The synthetic generator's own time (events -> candidate conversations) is shown apart; it is not part of "
        f"the data half.\n"
    )
    return payload, md
