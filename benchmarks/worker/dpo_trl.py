"""TRL's side of the DPO benchmark: DPOTrainer on the same pairs, model, loss and optimizer as ours.

The pairs reach TRL already tokenized (prompt_ids / chosen_ids / rejected_ids, the very ids our trainer reads
from the shards): DPOTrainer 1.16 always tokenizes text itself, so the benchmark's subclass passes the
pre-tokenized dataset through its dataset preparation unchanged. `check_tokenization` runs TRL's own
preparation on the text of the same pairs, to show what it would have produced.

Only benchmarks/ imports trl; the platform never does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import current_rss_mib
from benchmarks.worker.dpo_ours import lora_settings
from benchmarks.worker.trl_side import _quiet_hf


def _pairs(shards: str) -> tuple[list[str], dict[str, list[list[int]]]]:
    """The train pairs of the shards, read and verified by training.pair_data (what our trainer reads)."""
    from training.pair_data import load_pairs

    corpus, _ = load_pairs([shards], "train")
    parts = {
        f"{part}_ids": [corpus.part(part, i).tolist() for i in range(len(corpus))]
        for part in ("prompt", "chosen", "rejected")
    }
    for side in ("chosen", "rejected"):
        if not all(corpus.mask(side, i).all() for i in range(len(corpus))):
            raise ValueError(f"a {side} completion has unscored tokens; TRL would score them (see write_pair_inputs)")
    return corpus.pair_ids, parts


def dpo_trl(args: argparse.Namespace) -> dict[str, Any]:
    _quiet_hf()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(args.threads or torch.get_num_threads())
    precompute = args.reference == "precomputed"
    pair_ids, parts = _pairs(args.shards)
    rss_before = current_rss_mib()
    setup_started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, local_files_only=True, attn_implementation="sdpa", dtype=torch.float32
    )
    config = DPOConfig(
        output_dir=str(Path(args.work) / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=args.pairs,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=0,
        weight_decay=0.01,
        adam_beta1=0.9,
        adam_beta2=0.95,
        optim="adamw_torch_fused",
        max_grad_norm=1.0,
        beta=args.beta,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=precompute,
        max_length=None,  # no truncation: every pair is whole, as in our rows
        gradient_checkpointing=False,  # TRL's default is on; ours is off
        bf16=False,
        use_cpu=True,
        disable_dropout=True,
        logging_steps=args.steps,  # the losses are taken from compute_loss, unrounded
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=args.seed,
        dataloader_num_workers=0,
    )
    steps: list[dict[str, Any]] = []
    pending: dict[str, Any] = {}
    timing: dict[str, float] = {}

    class Measured(DPOTrainer):
        """DPOTrainer on pre-tokenized pairs, counting what each step processes and timing the reference pass."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already tokenized: the ids of our shards

        def _precompute_ref_logps(self, dataset, name, batch_size):
            t0 = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            timing["reference_seconds"] = time.perf_counter() - t0
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            attention, completion = inputs["attention_mask"], inputs["completion_mask"]
            half = attention.shape[0] // 2  # rows [chosen..., rejected...]
            pending["pairs"] = pending.get("pairs", 0) + half
            # prompt + chosen (a chosen row) + rejected (a rejected row's completion): each pair's tokens once
            tokens = int(attention[:half].sum() + completion[half:].sum())
            pending["pair_tokens"] = pending.get("pair_tokens", 0) + tokens
            pending["model_tokens"] = pending.get("model_tokens", 0) + int(attention.sum())
            pending["slots"] = pending.get("slots", 0) + int(inputs["input_ids"].numel())
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            pending["loss"] = float((loss[0] if isinstance(loss, tuple) else loss).detach())
            return loss

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            steps.append({"t": time.perf_counter(), **pending})
            pending.clear()

    dataset = Dataset.from_dict(parts)
    peft_config = None
    if args.lora:  # the same adapter as ours (our config's LoRA defaults), through peft as TRL documents it
        from peft import LoraConfig

        lora = lora_settings()
        peft_config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=list(lora["target_modules"]),
            bias="none",
            task_type="CAUSAL_LM",
        )
    trainer = Measured(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
        peft_config=peft_config,
    )
    setup_seconds = time.perf_counter() - setup_started
    started = time.perf_counter()
    trainer.train()
    result: dict[str, Any] = {
        "side": "trl",
        "reference": args.reference,
        "steps": steps,
        "started": started,
        "setup_seconds": setup_seconds,
        "reference_seconds": timing.get("reference_seconds"),
        "rss_before_mib": rss_before,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "adapter": lora_settings() if args.lora else None,
        "attn_implementation": model.config._attn_implementation,
        "trl_optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,
        "trl_optimizer_fused": bool(getattr(trainer.optimizer, "optimizer", trainer.optimizer).defaults.get("fused")),
        "reference_model_kept": trainer.ref_model is not None,
    }
    if precompute:
        columns = ("ref_chosen_logps", "ref_rejected_logps")
        values = np.stack([np.asarray(trainer.train_dataset[c], dtype=np.float64) for c in columns], axis=1)
        path = Path(args.work) / "trl-reference.npz"
        np.savez(path, pair_ids=np.asarray(pair_ids), values=values)
        result["reference_logps"] = str(path)
    return result


def check_tokenization(pairs_parquet: Path, shards: str, model: str) -> dict[str, Any]:
    """TRL's own dataset preparation on the text of the same pairs, compared with our ids (not timed).

    Per train pair: does TRL's prompt equal ours, does each of its completions start with ours, and what does it
    add after ours (the template's end of turn, which our shards leave out of a behaviour pair's loss).
    """
    _quiet_hf()
    import polars as pl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    pair_ids, parts = _pairs(shards)
    frame = pl.read_parquet(pairs_parquet).filter(pl.col("pair_id").is_in(pair_ids))
    order = {pid: i for i, pid in enumerate(frame["pair_id"].to_list())}
    text = frame.select("prompt", "chosen", "rejected")
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    probe = AutoModelForCausalLM.from_pretrained(model, local_files_only=True)
    with tempfile.TemporaryDirectory() as scratch:  # the trainer's output_dir; nothing is trained or saved
        config = DPOConfig(output_dir=scratch, use_cpu=True, report_to=[], bf16=False, max_length=None)
        trainer = DPOTrainer(
            model=probe, args=config, train_dataset=Dataset.from_polars(text.head(2)), processing_class=tokenizer
        )
        started = time.perf_counter()
        prepared = trainer._prepare_dataset(Dataset.from_polars(text), tokenizer, config, "check")
        seconds = time.perf_counter() - started
    same_prompt = starts = 0
    extra: dict[str, int] = {}
    for k, pid in enumerate(pair_ids):
        row = prepared[order[pid]]
        same_prompt += row["prompt_ids"] == parts["prompt_ids"][k]
        for side in ("chosen", "rejected"):
            ours, theirs = parts[f"{side}_ids"][k], row[f"{side}_ids"]
            if theirs[: len(ours)] == ours:
                starts += 1
                tail = tokenizer.decode(theirs[len(ours) :])
                extra[repr(tail)] = extra.get(repr(tail), 0) + 1
    return {
        "pairs": len(pair_ids),
        "same_prompt_ids": same_prompt,
        "completions_starting_with_ours": starts,
        "completions": 2 * len(pair_ids),
        "trl_tail_after_ours": extra,
        "trl_prepare_seconds": seconds,
    }
