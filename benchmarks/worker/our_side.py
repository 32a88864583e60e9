"""Our side of benchmarks 1 and 2: the tokenized_shards path and training.sft's own training step."""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.harness import current_rss_mib, peak_rss_mib
from benchmarks.worker.models import flop_parameters, model_overrides, prepare_model_dir

DAY = date(2026, 1, 1)


def prep_ours(inputs: Path, out: Path) -> dict[str, Any]:
    """The tokenized_shards path: tokenize_conversations (render, tokenize, mask) + write_shard_directory."""
    import polars as pl
    from transformers import AutoTokenizer

    from core.shards import write_shard_directory
    from core.tokenize_partition import tokenize_conversations
    from core.tokenizer_training import tokenizer_fingerprint

    tokenizer = AutoTokenizer.from_pretrained(inputs / "model", local_files_only=True)
    fingerprint = tokenizer_fingerprint(inputs / "model")
    rss_before = current_rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    curated = pl.read_parquet(inputs / "conversations.parquet")
    result = tokenize_conversations(tokenizer, curated, DAY, max_length=2048)
    out.mkdir(parents=True, exist_ok=True)
    manifest = write_shard_directory(
        out,
        result.rows,
        partition=DAY.isoformat(),
        tokenizer_fingerprint=fingerprint,
        source_data_version="benchmark",
        quarantine=result.quarantine,
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = peak_rss_mib()  # before the tokenizer-only measurement below, which holds all encodings at once
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mib": peak,
        "tokenizer_seconds": _tokenizer_floor(tokenizer, curated["messages"].to_list()),
        "conversations": curated.height,
        "rows": manifest["totals"]["conversations"],
        "tokens": manifest["totals"]["tokens"],
        "loss_tokens": manifest["totals"]["loss_tokens"],
        "rejected": result.quarantine.height,
        "rss_before_mib": rss_before,
    }


def _tokenizer_floor(tokenizer: Any, conversations: list[Any]) -> float:
    """Seconds the Rust tokenizer takes for the whole renderings (after the timed run, not part of it).

    This is TRL's tokenization work (one call per conversation). Ours is not bound by it:
    core.masking tokenizes each distinct text piece between control tokens once.
    """
    from core.masking import render_conversations, text_tokenizer

    texts = render_conversations(tokenizer, conversations)
    plain = text_tokenizer(tokenizer)
    start = time.perf_counter()
    plain.encode_batch(texts, add_special_tokens=False)
    return time.perf_counter() - start


def train_ours(args: argparse.Namespace) -> dict[str, Any]:
    """training.sft's own pieces, in its own order: model, packed loader, AdamW, optimizer_step per step."""
    import torch

    from training.config import TrainConfig
    from training.cpu import maybe_compile
    from training.distributed import init_distributed, unwrap, wrap_model
    from training.sft import (
        build_optimizer,
        compute_dtype,
        load_data,
        load_model,
        lr_factor,
        optimizer_step,
        setup_runtime,
    )
    from training.summary import cpu_kernels_used

    model_dir = prepare_model_dir(Path(args.model), model_overrides(args.model_overrides), Path(args.work))
    cfg = TrainConfig(
        base_model_dir=str(model_dir),
        shard_dirs=[args.shards],
        output_dir=str(Path(args.work) / "ours"),
        seq_len=args.seq_len,
        micro_batch_rows=args.rows,
        grad_accum_steps=args.grad_accum,
        max_steps=args.steps,
        lr=args.lr,
        warmup_steps=args.warmup,
        check_tokenizer_fingerprint=False,
        device=args.device,
        attn_implementation=args.attn or "auto",
        seed=args.seed,
        cpu_threads=args.threads,
    )
    ctx = init_distributed(cfg.device)
    setup_runtime(cfg, ctx)
    model = load_model(cfg, ctx)
    n_params = sum(p.numel() for p in model.parameters())
    loader, _ = load_data(cfg, ctx, model.config)
    dtype = compute_dtype(cfg, ctx)
    model = wrap_model(model, ctx, cfg.distributed)
    compiled = maybe_compile(model, cfg, ctx)[0]
    autocast = torch.autocast(ctx.device.type, dtype=dtype) if dtype != torch.float32 else None
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    steps = []
    profiler = None
    started = time.perf_counter()
    for index in range(cfg.max_steps):
        if args.profile and index == 2:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if ctx.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            profiler = torch.profiler.profile(activities=activities)
            profiler.__enter__()
        micro = [loader.next_batch() for _ in range(cfg.grad_accum_steps)]
        loss, _, _ = optimizer_step(model, optimizer, scheduler, micro, ctx, autocast, cfg)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        steps.append(
            {
                "t": time.perf_counter(),
                "tokens": loss.tokens,
                "loss_tokens": loss.loss_tokens,
                "slots": sum(int(b["input_ids"].numel()) for b in micro),
                "loss": loss.mean_loss,
            }
        )
    result = {
        "parameters": n_params,
        "flop_parameters": flop_parameters(model),
        "steps": steps,
        "packing_efficiency": loader.packing_efficiency,
        "attn_implementation": unwrap(model).config._attn_implementation,
        "compiled": compiled,
        "cpu_kernels": cpu_kernels_used(model, cfg, ctx, dtype),
        "started": started,
    }
    if profiler is not None:
        profiler.__exit__(None, None, None)
        sort = "self_cuda_time_total" if ctx.device.type == "cuda" else "self_cpu_time_total"
        result["profile"] = profiler.key_averages().table(sort_by=sort, row_limit=15)
    return result
