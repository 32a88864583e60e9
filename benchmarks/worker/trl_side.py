"""TRL's side of benchmarks 1 and 2: SFTTrainer's dataset preparation and training on the same inputs.

Only benchmarks/ imports trl (here); the platform never does.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, ClassVar

from benchmarks.harness import current_rss_mib
from benchmarks.worker.models import flop_parameters, model_overrides, prepare_model_dir


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
    model_dir = prepare_model_dir(Path(args.model), model_overrides(args.model_overrides), Path(args.work))
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
