"""Benchmark harness: alternating subprocess runs, medians, ratios, machine description, result files.

Every measured side runs in its own subprocess (`python -m benchmarks.worker ...`), so
its peak RSS is its own and imports/caches of one side never help the other. Sides of
one comparison alternate (A B, B A, A B, ...), so load from other users of the machine
falls on both; the reported figure is the median over the runs, and comparisons are
ratios of medians.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent


class BenchmarkError(RuntimeError):
    """A worker failed or produced unusable output; the message says which and how."""


# ------------------------------------------------------------------------------ maths


def median(values: Sequence[float]) -> float:
    """Median of the runs; refuses an empty list (a benchmark with no runs measured nothing)."""
    if not values:
        raise ValueError("median of no runs: the benchmark produced no measurements")
    return float(statistics.median(values))


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs for higher-is-better figures (throughput); inf when theirs is 0."""
    if theirs == 0:
        return float("inf") if ours > 0 else float("nan")
    return ours / theirs


def alternation_order(sides: Sequence[str], repeats: int) -> list[str]:
    """Run order: the sides alternate, and every other round runs them in reverse (A B, B A, A B...)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    order: list[str] = []
    for r in range(repeats):
        order.extend(sides if r % 2 == 0 else list(reversed(sides)))
    return order


def run_alternating(
    sides: dict[str, Callable[[int], dict[str, Any]]], repeats: int, log: Callable[[str], None] = print
) -> dict[str, list[dict[str, Any]]]:
    """Call each side `repeats` times in alternation order; returns the runs per side (in run order)."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for name in alternation_order(list(sides), repeats):
        index = len(runs[name])
        started = time.perf_counter()
        result = sides[name](index)
        log(f"    {name} run {index + 1}/{repeats}: {time.perf_counter() - started:.1f}s")
        runs[name].append(result)
    return runs


def medians(runs: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    return {key: median([float(r[key]) for r in runs]) for key in keys}


# ------------------------------------------------------------------------------ masks


def mask_mismatches(
    ours: dict[str, tuple[Sequence[int], Sequence[int]]],
    theirs: dict[str, tuple[Sequence[int], Sequence[int]]],
    limit: int = 5,
) -> tuple[int, list[str]]:
    """Compare (input_ids, loss_mask) per conversation id; returns (rows compared, first problems).

    Both sides must hold the same conversation ids; a row differs when its token ids or its
    mask differ (masks compared as 0/1 sequences).
    """
    problems: list[str] = []
    only_ours = sorted(set(ours) - set(theirs))
    only_theirs = sorted(set(theirs) - set(ours))
    if only_ours:
        problems.append(f"{len(only_ours)} conversations only in ours, e.g. {only_ours[:3]}")
    if only_theirs:
        problems.append(f"{len(only_theirs)} conversations only in TRL's, e.g. {only_theirs[:3]}")
    compared = 0
    for cid in sorted(set(ours) & set(theirs)):
        compared += 1
        ids_a, mask_a = ours[cid]
        ids_b, mask_b = theirs[cid]
        if list(ids_a) != list(ids_b):
            problems.append(f"{cid}: token ids differ ({len(ids_a)} vs {len(ids_b)} tokens)")
        elif [int(bool(m)) for m in mask_a] != [int(bool(m)) for m in mask_b]:
            at = next(k for k, (a, b) in enumerate(zip(mask_a, mask_b, strict=True)) if bool(a) != bool(b))
            problems.append(f"{cid}: loss masks differ first at token {at}")
        if len(problems) >= limit:
            break
    return compared, problems


def labels_to_mask(labels: Sequence[int]) -> list[int]:
    """TRL's unshifted labels (-100 = no loss) as a 0/1 loss mask."""
    return [0 if label == -100 else 1 for label in labels]


# ------------------------------------------------------------------------------ workers


def run_worker(args: Sequence[str], *, timeout: float = 3600, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python -m benchmarks.worker ARGS`; the last stdout line is its JSON result."""
    cmd = [sys.executable, "-m", "benchmarks.worker", *args]
    return run_json_command(cmd, timeout=timeout, env=env)


def run_json_command(cmd: Sequence[str], *, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "true", **(env or {})}
    full_env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    proc = subprocess.run(
        list(cmd), cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise BenchmarkError(
            f"worker {' '.join(cmd[2:5])} failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchmarkError(f"worker {' '.join(cmd)} printed no JSON result; stdout ends {proc.stdout[-2000:]!r}")
    return json.loads(lines[-1])


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ------------------------------------------------------------------------------ machine


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def machine_description() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(_mem_total_gib(), 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            name: _version(name)
            for name in ("torch", "transformers", "trl", "accelerate", "datasets", "tokenizers", "polars", "numpy")
        },
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ------------------------------------------------------------------------------ matmul peak


def matmul_peak_flops(
    device: str = "cpu", dtype: str = "fp32", seconds: float = 2.0, threads: int = 0
) -> dict[str, Any]:
    """Best sustained FLOP/s of square matmuls (several sizes), the denominator of MFU.

    Taking the best size makes the peak as high as this machine reaches, so MFU is not flattered.
    `threads` (CPU) pins torch's intra-op threads to what the measured runs use.
    """
    import torch

    from training.flops import matmul_flops

    if threads:
        torch.set_num_threads(threads)

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    sizes = [512, 1024, 2048] if device == "cpu" else [4096, 8192]
    best: dict[str, Any] = {"flops": 0.0}
    for n in sizes:
        flops = matmul_flops(n, n, n, device, torch_dtype, seconds=seconds / len(sizes))
        if flops > best["flops"]:
            best = {"flops": flops, "size": n, "dtype": dtype, "device": device, "threads": torch.get_num_threads()}
    return best


def gemm_flops(m: int, k: int, n: int, device: str = "cpu", seconds: float = 1.0, threads: int = 0) -> float:
    """FLOP/s of one (m x k) @ (k x n) fp32 matmul shape: what a model's own GEMM shapes can reach."""
    import torch

    from training.flops import matmul_flops

    if threads:
        torch.set_num_threads(threads)

    return matmul_flops(m, k, n, device, torch.float32, seconds=seconds, warmup=1)


# ------------------------------------------------------------------------------ results


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(out_dir: Path, name: str, payload: dict[str, Any], markdown: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=1, sort_keys=True, default=_json_default))
    (out_dir / f"{name}.md").write_text(markdown.rstrip() + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
