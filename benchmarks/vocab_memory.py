"""Peak memory of one training step at Qwen3's and Gemma 3's vocabulary sizes, chunked loss vs full logits.

`python -m benchmarks.vocab_memory [--rows 2] [--seq-len 1024] [--out benchmarks/results]`

A small Llama-style model (2 layers, hidden 64, tied embeddings: the output projection is the
biggest matrix, as in the small Qwen3 and Gemma 3 models) takes one optimizer step, through
training.sft's own `optimizer_step`, on packed rows whose positions are half labelled. The two
sides differ only in TrainConfig.loss_chunking ("off": the labelled positions' logits, one
[labelled x vocabulary] fp32 tensor plus its gradient; "on": chunks of CHUNK_LOGITS elements).

Each side runs in its own subprocess, so one side's freed memory cannot hide the other's peak.
Memory is the process's peak resident set size from `resource.getrusage` (ru_maxrss: the whole
process, Python and torch together), read after the step; "step peak" subtracts the resident
size measured just before the step (model, optimizer and batch already built), so it is what
the step itself added at its highest point. The losses of the two sides are printed to show
they computed the same thing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, current_rss_mib, machine_description, markdown_table, peak_rss_mib, write_result

NAME = "vocab_memory"
VOCABS = {"Qwen3 (151,936)": 151_936, "Gemma 3 (262,144)": 262_144}
SIDES = ("off", "on")  # TrainConfig.loss_chunking


def worker(vocab: int, chunking: str, rows: int, seq_len: int, threads: int) -> dict[str, Any]:
    """One optimizer step in this process; what it measured, as a JSON-able dict."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.config import TrainConfig
    from training.data import IGNORE_INDEX
    from training.distributed import DistContext
    from training.loss import loss_settings
    from training.sft import build_optimizer, optimizer_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=seq_len, attn_implementation="sdpa",
    )  # fmt: skip
    model = LlamaForCausalLM(config).train()
    cfg = TrainConfig.from_dict(
        {"base_model_dir": "-", "shard_dirs": ["-"], "output_dir": "-", "loss_chunking": chunking, "compile": "off"}
    )
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), initialized=False)
    settings = loss_settings(chunking, config, vocab)
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (rows, seq_len), generator=g)
    labels = torch.where(torch.rand(rows, seq_len, generator=g) < 0.5, input_ids.roll(-1, 1), IGNORE_INDEX)
    half = seq_len // 2  # two conversations per row
    position_ids = torch.cat([torch.arange(half), torch.arange(seq_len - half)]).repeat(rows, 1)
    batch = {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "tokens": torch.full((rows,), seq_len),
    }
    before = current_rss_mib()
    started = time.perf_counter()
    loss, _, _ = optimizer_step(model, optimizer, scheduler, [batch], ctx, None, cfg, settings)
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    labelled = int((labels != IGNORE_INDEX).sum())
    return {
        "vocab": vocab,
        "loss_chunking": chunking,
        "chunked": settings.chunked,
        "labelled_positions": labelled,
        "logits_mib": labelled * vocab * 4 / 2**20,
        "rss_before_step_mib": before,
        "peak_rss_mib": peak,
        "step_peak_mib": peak - before,
        "step_seconds": seconds,
        "loss": loss.mean_loss,
    }


def measure(rows: int, seq_len: int, threads: int) -> list[dict[str, Any]]:
    from benchmarks.harness import run_json_command

    results = []
    for label, vocab in VOCABS.items():
        for side in SIDES:
            print(f"{label}: loss_chunking={side} ...", flush=True)
            cmd = [sys.executable, "-m", "benchmarks.vocab_memory", "--worker", str(vocab), side]
            cmd += ["--rows", str(rows), "--seq-len", str(seq_len), "--threads", str(threads)]
            results.append({"model": label, **run_json_command(cmd, timeout=1800)})
    return results


def report(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    header = ["vocabulary", "loss", "labelled positions", "their logits (MiB)", "peak RSS (MiB)"]
    header += ["step peak over pre-step RSS (MiB)", "step (s)", "mean loss"]
    table = markdown_table(
        header,
        [
            [
                r["model"], "chunked" if r["chunked"] else "full logits", r["labelled_positions"], r["logits_mib"],
                r["peak_rss_mib"], r["step_peak_mib"], r["step_seconds"], f"{r['loss']:.6f}",
            ]
            for r in results
        ],
    )  # fmt: skip
    return "\n\n".join(
        [
            "# Vocabulary memory: one training step, chunked loss vs full logits",
            f"`{meta['command']}` at {meta['commit']}{' (dirty)' if meta['dirty'] else ''}: a 2-layer, hidden-64 "
            f"Llama-style model with tied embeddings, {meta['rows']} packed rows x {meta['seq_len']} tokens "
            f"(half of the positions labelled), one AdamW step, {meta['threads']} torch threads, fp32, CPU.",
            "Memory is the peak resident set size of the side's own process (`resource.getrusage` ru_maxrss); "
            "the step peak subtracts the resident size just before the step. The two sides' losses agree.",
            table,
            f"Machine: {meta['machine']['cpu_model']}, {meta['machine']['ram_gib']} GiB, load average at start "
            f"{meta['machine']['load_average_at_start']} (other work shared the machine).",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("VOCAB", "CHUNKING"), help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if args.worker:
        vocab, chunking = args.worker
        print(json.dumps(worker(int(vocab), chunking, args.rows, args.seq_len, args.threads)))
        return
    results = measure(args.rows, args.seq_len, args.threads)
    import subprocess

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    meta = {
        "command": "python -m benchmarks.vocab_memory " + " ".join(sys.argv[1:]),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "training/loss.py", "benchmarks/vocab_memory.py")),
        "rows": args.rows,
        "seq_len": args.seq_len,
        "threads": args.threads,
        "memory_source": "resource.getrusage(RUSAGE_SELF).ru_maxrss of each side's subprocess",
        "machine": machine_description(),
    }
    write_result(args.out, NAME, {"meta": meta, "results": results}, report(results, meta))
    print(f"wrote {args.out / (NAME + '.md')} and .json")


if __name__ == "__main__":
    main()
