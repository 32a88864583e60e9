"""One measured side per process: `python -m benchmarks.worker <command> ...` prints one JSON line.

Commands
- prep-ours / prep-trl: data preparation of the same conversations (benchmark 1).
- train-ours / train-trl: training throughput on the same tokens (benchmark 2).
- peak: the matmul FLOP/s peak of this machine (MFU denominator).
- scale: the data half (curation + tokenization) over many daily partitions (benchmark 3).

Only this module and benchmarks/ import trl; the platform never does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

from benchmarks.harness import current_rss_mib, gemm_flops, matmul_peak_flops, peak_rss_mib

DAY = date(2026, 1, 1)


def _emit(result: dict[str, Any]) -> None:
    result.setdefault("peak_rss_mib", peak_rss_mib())
    print(json.dumps(result), flush=True)


def _quiet_hf() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass


# ------------------------------------------------------------------------ 1. data preparation


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

    This is TRL's tokenization work (one call per conversation). Ours is no longer bound by it:
    core.masking tokenizes each distinct text piece between control tokens once.
    """
    from core.masking import render_conversations, text_tokenizer

    texts = render_conversations(tokenizer, conversations)
    plain = text_tokenizer(tokenizer)
    start = time.perf_counter()
    plain.encode_batch(texts, add_special_tokens=False)
    return time.perf_counter() - start


def prep_trl(inputs: Path, out: Path, num_proc: int | None) -> dict[str, Any]:
    """TRL SFTTrainer's dataset preparation with assistant_only_loss=True (the trainer's own _prepare_dataset)."""
    _quiet_hf()
    import polars as pl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(inputs / "model", local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(inputs / "model", local_files_only=True)
    args = SFTConfig(
        output_dir=str(out / "trl"),
        assistant_only_loss=True,
        max_length=2048,
        report_to=[],
        use_cpu=True,
        dataset_num_proc=num_proc,
        disable_tqdm=True,
    )
    # A trainer on a tiny dataset gives us TRL's configured preparation; then we time it on the real one.
    probe = pl.read_parquet(inputs / "conversations.parquet", n_rows=4).select("conversation_id", "messages")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_polars(probe), processing_class=tokenizer)
    rss_before = current_rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    curated = pl.read_parquet(inputs / "conversations.parquet").select("conversation_id", "messages")
    dataset = Dataset.from_polars(curated)
    prepared = trainer._prepare_dataset(dataset, tokenizer, args, False, None, "train")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    table = prepared.data.table.select(["conversation_id", "input_ids", "labels"])
    lengths = pl.from_arrow(table.column("input_ids")).list.len()
    labels = pl.from_arrow(table.column("labels"))
    loss_tokens = int((labels.list.eval(pl.element() != -100).list.sum()).sum())
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "trl_prepared.parquet")  # for the row-by-row mask comparison; not timed
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "conversations": curated.height,
        "rows": prepared.num_rows,
        "tokens": int(lengths.sum()),
        "loss_tokens": loss_tokens,
        "rss_before_mib": rss_before,
        "num_proc": num_proc or 1,
    }


# ------------------------------------------------------------------------ 2. training throughput


def _model_overrides(spec: str | None) -> dict[str, Any]:
    return json.loads(spec) if spec else {}


def _prepare_model_dir(model_dir: Path, overrides: dict[str, Any], work: Path) -> Path:
    """The tiny model, or (for the GPU run) a bigger Llama built from `overrides` with the same tokenizer."""
    if not overrides:
        return model_dir
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:10]
    target = work / f"model_override_{digest}"
    if (target / "config.json").is_file():
        return target
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(target)
    for item in model_dir.iterdir():
        if item.is_file() and not item.name.endswith(".safetensors") and item.name != "config.json":
            shutil.copy2(item, target / item.name)
    return target


def train_ours(args: argparse.Namespace) -> dict[str, Any]:
    """training.sft's own pieces, in its own order: model, packed loader, AdamW, _optimizer_step per step."""
    import torch

    from training.compilation import maybe_compile
    from training.config import TrainConfig
    from training.distributed import init_distributed, unwrap, wrap_model
    from training.sft import (
        _compute_dtype,
        _cpu_kernels_used,
        _load_data,
        _load_model,
        _optimizer_step,
        _setup_runtime,
        build_optimizer,
        lr_factor,
    )

    model_dir = _prepare_model_dir(Path(args.model), _model_overrides(args.model_overrides), Path(args.work))
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
    _setup_runtime(cfg, ctx)
    model = _load_model(cfg, ctx)
    n_params = sum(p.numel() for p in model.parameters())
    loader, _ = _load_data(cfg, ctx, model.config)
    dtype = _compute_dtype(cfg, ctx)
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
        loss, _, _ = _optimizer_step(model, optimizer, scheduler, micro, ctx, autocast, cfg)
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
        "cpu_kernels": _cpu_kernels_used(model, cfg, ctx, dtype),
        "started": started,
    }
    if profiler is not None:
        profiler.__exit__(None, None, None)
        sort = "self_cuda_time_total" if ctx.device.type == "cuda" else "self_cpu_time_total"
        result["profile"] = profiler.key_averages().table(sort_by=sort, row_limit=15)
    return result


def flop_parameters(model: Any) -> dict[str, int]:
    """What the model-FLOPs accounting needs: body / LM-head parameters, layers, attention width.

    The input embedding is a lookup (no FLOPs); the LM head is a matmul over the vocabulary
    (with tied weights the same matrix, counted once, as the head).
    """
    from training.attention import head_dim
    from training.distributed import unwrap

    inner = unwrap(model)
    head = inner.get_output_embeddings().weight
    embed = inner.get_input_embeddings().weight
    skip = {id(head), id(embed)}
    config = inner.config
    width = head_dim(config)
    return {
        "body": sum(p.numel() for p in inner.parameters() if id(p) not in skip),
        "head": head.numel(),
        "layers": config.num_hidden_layers,
        "attention_width": config.num_attention_heads * width,
        "hidden": config.hidden_size,
        "heads": config.num_attention_heads,
        "head_dim": width,
        "intermediate": config.intermediate_size,
    }


def _trl_dataset(shards: str):
    """The shards' train split as TRL input: input_ids + labels (unshifted, -100 = no loss)."""
    import polars as pl
    from datasets import Dataset

    from core.shards import read_split

    frame = read_split(Path(shards), "train")
    ids = frame["input_ids"].cast(pl.List(pl.Int64)).to_list()
    labels = [
        [tok if m else -100 for tok, m in zip(row, mask, strict=True)]
        for row, mask in zip(ids, frame["loss_mask"].to_list(), strict=True)
    ]
    return Dataset.from_dict({"input_ids": ids, "labels": labels})


def train_trl(args: argparse.Namespace) -> dict[str, Any]:
    _quiet_hf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = _prepare_model_dir(Path(args.model), _model_overrides(args.model_overrides), Path(args.work))
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    cuda = args.device == "cuda"
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, attn_implementation=args.attn or "sdpa", dtype=torch.float32
    )
    n_params = sum(p.numel() for p in model.parameters())
    flop_params = flop_parameters(model)
    packed = args.mode == "packed"
    config = SFTConfig(
        output_dir=str(Path(args.work) / f"trl-{args.mode}"),
        max_steps=args.steps,
        per_device_train_batch_size=args.rows if packed else args.batch,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=args.warmup,
        weight_decay=0.01,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        max_length=args.seq_len if packed else 2048,
        packing=packed,
        packing_strategy="bfd",
        padding_free=packed,
        bf16=cuda,
        use_cpu=not cuda,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=args.seed,
        dataloader_num_workers=0,
    )
    steps: list[dict[str, Any]] = []

    class Counter(SFTTrainer):
        """Counts what each optimizer step processed (non-pad tokens, loss tokens, token slots)."""

        pending: ClassVar[dict[str, int]] = {"tokens": 0, "loss_tokens": 0, "slots": 0}

        def training_step(self, model, inputs, num_items_in_batch=None):
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask")
            self.pending["tokens"] += int(mask.sum()) if mask is not None else int(ids.numel())
            self.pending["slots"] += int(ids.numel())
            self.pending["loss_tokens"] += int((inputs["labels"][..., 1:] != -100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            steps.append({"t": time.perf_counter(), **Counter.pending, "loss": None})
            Counter.pending = {"tokens": 0, "loss_tokens": 0, "slots": 0}

        def on_log(self, _args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and steps:
                steps[-1]["loss"] = float(logs["loss"])

    trainer = Counter(
        model=model,
        args=config,
        train_dataset=_trl_dataset(args.shards),
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    started = time.perf_counter()
    trainer.train()
    return {
        "parameters": n_params,
        "flop_parameters": flop_params,
        "steps": steps,
        "mode": args.mode,
        "attn_implementation": model.config._attn_implementation,
        "compiled": False,
        "started": started,
    }


def summarize_steps(result: dict[str, Any], warmup_steps: int) -> dict[str, Any]:
    """Throughput over the steps after the first `warmup_steps` (lazy init and first-touch costs excluded)."""
    steps = result["steps"]
    if len(steps) <= warmup_steps:
        raise ValueError(f"{len(steps)} steps recorded; need more than the {warmup_steps} warm-up steps")
    window = steps[warmup_steps:]
    seconds = window[-1]["t"] - steps[warmup_steps - 1]["t"] if warmup_steps else float("nan")
    tokens = sum(s["tokens"] for s in window)
    losses = [s["loss"] for s in steps if s["loss"] is not None]
    tail = losses[-5:]
    return {
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "loss_tokens_per_second": sum(s["loss_tokens"] for s in window) / seconds,
        "slots_per_second": sum(s["slots"] for s in window) / seconds,
        "non_pad_fraction": tokens / max(1, sum(s["slots"] for s in window)),
        "final_loss": sum(tail) / len(tail) if tail else float("nan"),
        "first_loss": losses[0] if losses else float("nan"),
        "tokens_total": sum(s["tokens"] for s in steps),
        "loss_tokens_total": sum(s["loss_tokens"] for s in steps),
        "steps": len(steps),
        "parameters": result["parameters"],
        "flop_parameters": result["flop_parameters"],
        "attn_implementation": result["attn_implementation"],
        "compiled": result["compiled"],
        "cpu_kernels": result.get("cpu_kernels", []),
        "warmup_seconds": steps[warmup_steps - 1]["t"] - result["started"] if warmup_steps else float("nan"),
        "peak_rss_mib": result.get("peak_rss_mib", float("nan")),
    }


# ------------------------------------------------------------------------ 3. scale


def scale(n: int, per_day: int, out: Path, seed: int, model: Path) -> dict[str, Any]:
    """Curation + tokenization of `n` generated conversations, one daily partition at a time.

    Each day is what the curated_conversations and tokenized_shards assets do for one
    partition: curate (dedupe against the hashes of earlier days), tokenize + mask, write
    the shard directory. Nothing of a finished day is kept but its content hashes.
    """
    import polars as pl
    from transformers import AutoTokenizer

    from benchmarks.workload import _CONVERSATIONS_PER_MEMBER_DAY, iter_candidate_days
    from core.curation import CurationConfig, curate
    from core.shards import write_shard_directory
    from core.tokenize_partition import tokenize_conversations

    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    members = int(per_day / _CONVERSATIONS_PER_MEMBER_DAY)
    seen = pl.Series("content_hash", [], dtype=pl.String)
    totals = {"conversations": 0, "tokens": 0, "rejected": 0, "days": 0}
    timing = {"generate": 0.0, "curate": 0.0, "tokenize": 0.0, "write": 0.0}
    rss_by_day = []
    days = iter_candidate_days(members, seed)
    started = time.perf_counter()
    while totals["conversations"] < n:
        t0 = time.perf_counter()
        item = next(days)
        candidates = item.candidates.head(math.ceil((n - totals["conversations"]) * 1.02))
        t1 = time.perf_counter()
        curated, quarantine, _ = curate(candidates, item.day, CurationConfig(), seen_hashes=seen)
        curated = curated.head(n - totals["conversations"])
        seen = pl.concat([seen, curated["content_hash"]])
        t2 = time.perf_counter()
        tokenized = tokenize_conversations(tokenizer, curated, item.day, max_length=2048)
        t3 = time.perf_counter()
        day_dir = out / f"day={item.day.isoformat()}"
        day_dir.mkdir(parents=True, exist_ok=True)
        manifest = write_shard_directory(
            day_dir,
            tokenized.rows,
            partition=item.day.isoformat(),
            tokenizer_fingerprint="benchmark",
            source_data_version="benchmark",
            quarantine=tokenized.quarantine,
        )
        t4 = time.perf_counter()
        timing["generate"] += t1 - t0
        timing["curate"] += t2 - t1
        timing["tokenize"] += t3 - t2
        timing["write"] += t4 - t3
        totals["conversations"] += curated.height
        totals["tokens"] += manifest["totals"]["tokens"]
        totals["rejected"] += quarantine.height + tokenized.quarantine.height
        totals["days"] += 1
        rss_by_day.append(round(current_rss_mib(), 1))
        del curated, tokenized, candidates, item
    wall = time.perf_counter() - started
    data_half = timing["curate"] + timing["tokenize"] + timing["write"]
    return {
        **totals,
        **{f"{k}_seconds": v for k, v in timing.items()},
        "data_half_seconds": data_half,
        "wall_seconds": wall,
        "conversations_per_second": totals["conversations"] / data_half,
        "rss_after_each_day_mib": rss_by_day,
    }


# ------------------------------------------------------------------------ CLI


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
    elif args.command == "peak":
        _emit(matmul_peak_flops(args.device, args.dtype, threads=args.threads))
    elif args.command == "gemm":
        m, k, n = (int(x) for x in args.shape.split(","))
        flops = gemm_flops(m, k, n, threads=args.threads)
        _emit({"flops": flops, "peak_flops": matmul_peak_flops("cpu", "fp32", threads=args.threads)["flops"]})
    elif args.command == "scale":
        _emit(scale(args.n, args.per_day, args.out, args.seed, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
