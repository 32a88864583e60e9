"""The worker's command line: parse one command, run it, print its result as one JSON line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.harness import gemm_flops, matmul_peak_flops, peak_rss_mib
from benchmarks.worker.dpo_ours import dpo_ours
from benchmarks.worker.dpo_trl import check_tokenization, dpo_trl
from benchmarks.worker.our_side import prep_ours, train_ours
from benchmarks.worker.scale import scale
from benchmarks.worker.steps import summarize_dpo_steps, summarize_steps
from benchmarks.worker.trl_side import prep_trl, train_trl
from benchmarks.worker.warehouse import warehouse_days


def _emit(result: dict[str, Any]) -> None:
    result.setdefault("peak_rss_mib", peak_rss_mib())
    print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prep-ours")
    p.add_argument("--inputs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("prep-trl")
    p.add_argument("--inputs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num-proc", type=int, default=None)
    for name in ("train-ours", "train-trl"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--shards", required=True)
        p.add_argument("--work", required=True)
        p.add_argument("--steps", type=int, required=True)
        p.add_argument("--seq-len", type=int, default=1024)
        p.add_argument("--rows", type=int, default=8, help="packed rows per micro-batch")
        p.add_argument("--batch", type=int, default=0, help="conversations per micro-batch (TRL padded)")
        p.add_argument("--grad-accum", type=int, default=1)
        p.add_argument("--lr", type=float, default=1e-3)
        p.add_argument("--warmup", type=int, default=5)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=0)
        p.add_argument("--device", default="cpu")
        p.add_argument("--attn", default="", help="default: ours 'auto' (training's own default), TRL 'sdpa'")
        p.add_argument("--model-overrides", default="")
        p.add_argument("--mode", choices=["padded", "packed"], default="padded")
        p.add_argument("--warmup-steps", type=int, default=2, help="steps excluded from throughput")
        p.add_argument("--profile", action="store_true", help="torch-profile steps 3.. (train-ours)")
    for name in ("dpo-ours", "dpo-trl"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--shards", required=True)
        p.add_argument("--work", required=True)
        p.add_argument("--steps", type=int, required=True)
        p.add_argument("--reference", choices=["precomputed", "on_the_fly"], required=True)
        p.add_argument("--seq-len", type=int, default=512, help="ours: packed row length")
        p.add_argument("--rows", type=int, default=4, help="ours: packed rows per step")
        p.add_argument("--pairs", type=int, default=16, help="TRL: pairs per step")
        p.add_argument("--lr", type=float, default=1e-4)
        p.add_argument("--beta", type=float, default=0.1)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--warmup-steps", type=int, default=2, help="steps excluded from throughput")
        p.add_argument("--lora", action="store_true", help="train a LoRA adapter (our config's defaults) instead")
        p.add_argument("--profile", action="store_true", help="torch-profile steps 3.. (dpo-ours)")
    p = sub.add_parser("dpo-trl-tokenize")
    p.add_argument("--pairs-parquet", type=Path, required=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--model", required=True)
    p = sub.add_parser("peak")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--threads", type=int, default=0)
    p = sub.add_parser("gemm")
    p.add_argument("--shape", required=True, help="M,K,N")
    p.add_argument("--threads", type=int, default=0)
    p = sub.add_parser("scale")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--per-day", type=int, default=50_000)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--seed", type=int, default=7)
    p = sub.add_parser("warehouse-days")
    p.add_argument("--warehouse", required=True, help="the Warehouse resource as JSON")
    p.add_argument("--days", type=Path, nargs="+", required=True, help="candidate parquet files, one per day")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "prep-ours":
        _emit(prep_ours(args.inputs, args.out))
    elif args.command == "prep-trl":
        _emit(prep_trl(args.inputs, args.out, args.num_proc))
    elif args.command in ("train-ours", "train-trl"):
        # This process's own matmul peak, just before and after its steps, at its thread count: MFU then
        # compares like with like even when other load on a shared machine drifts between runs.
        dtype = "bf16" if args.device == "cuda" else "fp32"
        before = matmul_peak_flops(args.device, dtype, threads=args.threads)["flops"]
        raw = train_ours(args) if args.command == "train-ours" else train_trl(args)
        raw["peak_rss_mib"] = peak_rss_mib()
        after = matmul_peak_flops(args.device, dtype, threads=args.threads)["flops"]
        summary = {**summarize_steps(raw, args.warmup_steps), "losses": [s["loss"] for s in raw["steps"]]}
        summary["peak_flops"] = max(before, after)
        if "profile" in raw:
            summary["profile"] = raw["profile"]
        _emit(summary)
    elif args.command in ("dpo-ours", "dpo-trl"):
        raw = dpo_ours(args) if args.command == "dpo-ours" else dpo_trl(args)
        raw["peak_rss_mib"] = peak_rss_mib()
        _emit(summarize_dpo_steps(raw, args.warmup_steps))
    elif args.command == "dpo-trl-tokenize":
        _emit(check_tokenization(args.pairs_parquet, args.shards, args.model))
    elif args.command == "peak":
        _emit(matmul_peak_flops(args.device, args.dtype, threads=args.threads))
    elif args.command == "gemm":
        m, k, n = (int(x) for x in args.shape.split(","))
        flops = gemm_flops(m, k, n, threads=args.threads)
        _emit({"flops": flops, "peak_flops": matmul_peak_flops("cpu", "fp32", threads=args.threads)["flops"]})
    elif args.command == "scale":
        _emit(scale(args.n, args.per_day, args.out, args.seed, args.model))
    elif args.command == "warehouse-days":
        _emit(warehouse_days(args.warehouse, args.days, args.out, args.model))
    return 0
