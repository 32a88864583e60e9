"""Benchmark 4, multi-process: `torchrun` 2 processes vs 1 process on the same training work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, BenchmarkError, markdown_table, medians, ratio, run_alternating
from benchmarks.suite.sizes import Sizes


def _multi_config(sizes: Sizes, model: Path, shards: Path, out: Path, procs: int) -> Path:
    rows_total = sizes.train_rows
    config = {
        "base_model_dir": str(model),
        "shard_dirs": [str(shards)],
        "output_dir": str(out),
        "seq_len": sizes.seq_len,
        "micro_batch_rows": rows_total // procs,
        "grad_accum_steps": 1,
        "max_steps": sizes.multi_steps,
        "lr": 1e-3,
        "warmup_steps": 5,
        "checkpoint_every": 10_000,
        "log_every": 10_000,
        "device": "cpu",
        "cpu_threads": 2 // procs,
        "peak_flops": 1.0,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(config))
    return path


def bench_multiprocess(sizes: Sizes, model: Path, shards: Path, work: Path) -> tuple[dict[str, Any], str]:
    def side(procs: int) -> Any:
        def call(index: int) -> dict[str, Any]:
            out = work / f"multi-{procs}-{index}"
            shutil.rmtree(out, ignore_errors=True)
            config = _multi_config(sizes, model, shards, out, procs)
            if procs == 1:
                cmd = [sys.executable, "-m", "training.sft", "--config", str(config)]
            else:
                cmd = [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc-per-node={procs}",
                    "-m",
                    "training.sft",
                    "--config",
                    str(config),
                ]
            started = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600, check=False)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise BenchmarkError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            summary = json.loads((out / "summary.json").read_text())
            shutil.rmtree(out, ignore_errors=True)
            return {
                "tokens_per_second": summary["tokens_per_second"],
                "final_loss": summary["final_loss"],
                "tokens_seen": summary["tokens_seen"],
                "wall_seconds": wall,
                "world_size": summary["world_size"],
            }

        return call

    runs = run_alternating({"1_process": side(1), "2_processes": side(2)}, sizes.repeats)
    med = {name: medians(r, ("tokens_per_second", "final_loss", "wall_seconds")) for name, r in runs.items()}
    speedup = ratio(med["2_processes"]["tokens_per_second"], med["1_process"]["tokens_per_second"])
    payload = {"runs": runs, "median": med, "ratio_2_vs_1": speedup, "steps": sizes.multi_steps}
    table = markdown_table(
        ["run", "tokens/s (steps only)", "final loss", "wall s (incl. start-up, checkpoint)"],
        [
            [
                "1 process x 2 threads (python -m training.sft)",
                med["1_process"]["tokens_per_second"],
                med["1_process"]["final_loss"],
                med["1_process"]["wall_seconds"],
            ],
            [
                "2 processes x 1 thread (torchrun, DDP gloo)",
                med["2_processes"]["tokens_per_second"],
                med["2_processes"]["final_loss"],
                med["2_processes"]["wall_seconds"],
            ],
        ],
    )
    if speedup >= 1.1:
        why = (
            "The two processes win although one process already uses both cores through torch's intra-op threads: "
            "at this model width the per-op threading overhead (and, on a busy machine, OpenMP threads waiting on "
            "each other) costs more than the gradient all-reduce of data parallelism."
        )
    elif speedup <= 0.9:
        why = (
            "One process with 2 intra-op threads already uses both cores; two DDP processes add a gradient "
            "all-reduce (gloo) per step and lose the shared-memory threading, so they are slower here."
        )
    else:
        why = (
            "About even: one process already uses both cores through intra-op threads, so two DDP processes only "
            "trade thread parallelism for process parallelism plus a gradient all-reduce per step."
        )
    md = (
        f"## 4. Multi-process: 2 processes vs 1 on the same work ({sizes.multi_steps} steps, same global batch)\n\n"
        f"{table}\n\n**2 processes / 1 process: {speedup:.2f}x** on this 2-core machine. {why} This is no "
        f"scaling result: there are no more cores to scale to.\n"
    )
    return payload, md
