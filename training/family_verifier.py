"""Does our training forward compute what Hugging Face computes for this model? `python -m training.family_verifier
--model-dir D [--compile]` prints a JSON report.

Our step differs from a model's reference forward in every place a new family can break it: conversations
packed into rows and attended by packed_sdpa (training/attention.py: the C kernel, ATen's flash kernel or the
windowed fallback), decoder layers compiled by inductor when on, the loss on labelled positions only through
our cross-entropy kernel. The verifier runs that step on packed rows of random conversations and, on a second
copy of the weights, transformers' eager forward on each conversation alone, both in fp32, and compares the
logits of every conversation and the parameter gradients of the summed token loss. Conversations are longer
than a sliding window where the model has one, so a trainer that ignored the window would fail here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.attention_layers import sliding_window
from training.attention import PACKED_SDPA, attention_notes, head_dim
from training.data import IGNORE_INDEX
from training.loss import LossSettings, forward_logits, loss_settings, micro_batch_loss_sum

# fp32 sums in a different order (packed vs one conversation, kernel vs eager): differences are rounding only.
LOGIT_TOLERANCE = 1e-4
GRAD_TOLERANCE = 1e-4  # max abs gradient difference over the largest abs gradient of the model
# Two packed rows: conversations of several lengths, from shorter than any window to several windows long.
ROWS: tuple[tuple[int, ...], ...] = ((70, 40, 12), (50, 33, 9, 20))
SEQ_LEN = 128


def sample_conversations(vocab_size: int, seed: int) -> list[list[torch.Tensor]]:
    """Random token conversations, grouped by the packed row they go to (`ROWS` lengths)."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randint(0, vocab_size, (length,), generator=generator) for length in row] for row in ROWS]


def next_token_labels(ids: torch.Tensor) -> torch.Tensor:
    """labels[t] = ids[t + 1] within one conversation; its last position has no target."""
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:-1] = ids[1:]
    return labels


def pack_rows(rows: list[list[torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """The packed batch the trainer's loader would build (training/data.py PackedLoader._build_row's layout)."""
    input_ids = torch.full((len(rows), SEQ_LEN), pad_id, dtype=torch.int64)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    position_ids = torch.zeros_like(input_ids)
    tokens = torch.tensor([sum(len(ids) for ids in conversations) for conversations in rows])
    for r, conversations in enumerate(rows):
        cursor = 0
        for ids in conversations:
            span = slice(cursor, cursor + len(ids))
            input_ids[r, span], labels[r, span] = ids, next_token_labels(ids)
            position_ids[r, span] = torch.arange(len(ids))
            cursor += len(ids)
        position_ids[r, cursor:] = torch.arange(SEQ_LEN - cursor)  # padding is its own sequence
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "tokens": tokens}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def ours(
    model: torch.nn.Module, rows: list[list[torch.Tensor]], pad_id: int, settings: LossSettings
) -> tuple[list[torch.Tensor], dict]:
    """Per-conversation logits of the packed forward, and the gradients of the trainer's summed token loss
    (the MoE router's auxiliary loss left out: transformers' per-conversation forward has no packed equivalent)."""
    batch = pack_rows(rows, pad_id)
    # In grad mode, as the loss below: compiled layers then trace one graph each, not one per grad mode.
    logits = forward_logits(model, batch).detach()
    pieces = []
    for r, conversations in enumerate(rows):
        cursor = 0
        for ids in conversations:
            pieces.append(logits[r, cursor : cursor + len(ids)])
            cursor += len(ids)
    model.zero_grad(set_to_none=True)
    micro_batch_loss_sum(model, batch, settings).backward()
    return pieces, _grads(model)


def reference(model: torch.nn.Module, rows: list[list[torch.Tensor]]) -> tuple[list[torch.Tensor], dict]:
    """transformers' own forward on each conversation alone: logits, and gradients of the same summed loss."""
    model.zero_grad(set_to_none=True)
    pieces = []
    for conversations in rows:
        for ids in conversations:
            logits = model(input_ids=ids[None], use_cache=False).logits[0]
            loss = F.cross_entropy(logits.float(), next_token_labels(ids), ignore_index=IGNORE_INDEX, reduction="sum")
            loss.backward()
            pieces.append(logits.detach())
    return pieces, _grads(model)


def load(model_dir: Path, attn_implementation: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=attn_implementation, local_files_only=True
    )
    model.config.use_cache = False
    return model.train()  # as in training; the families' dropout is 0, so train and eval compute the same


def verify(model_dir: Path, compile_layers: bool = False, loss_chunking: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Compare our packed training step with transformers' eager forward; returns the report."""
    from training.cpu import compile_decoder_layers, kernels_in_use

    torch.manual_seed(seed)
    trained = load(model_dir, PACKED_SDPA)
    if compile_layers:
        compile_decoder_layers(trained)
    config = trained.config
    rows = sample_conversations(config.vocab_size, seed)
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    settings = loss_settings(loss_chunking, config, None)
    our_logits, our_grads = ours(trained, rows, pad_id, settings)
    ref_logits, ref_grads = reference(load(model_dir, "eager"), rows)

    logit_diff = max(float((a - b).abs().max()) for a, b in zip(our_logits, ref_logits, strict=True))
    if our_grads.keys() != ref_grads.keys():
        raise RuntimeError(f"different parameters got gradients: {sorted(our_grads.keys() ^ ref_grads.keys())}")
    grad_diff = max(float((our_grads[n] - ref_grads[n]).abs().max()) for n in ref_grads)
    grad_scale = max(float(g.abs().max()) for g in ref_grads.values())
    grad_rel = grad_diff / grad_scale if grad_scale > 0 else grad_diff
    window = sliding_window(config)
    lengths = [length for row in ROWS for length in row]
    return {
        "model_dir": str(model_dir),
        "architecture": (config.architectures or [type(trained).__name__])[0],
        "model_type": config.model_type,
        "attention": PACKED_SDPA,
        "attention_notes": attention_notes(config, PACKED_SDPA),
        "compiled": compile_layers,
        "loss_chunked": settings.chunked,
        "cpu_kernels": kernels_in_use(head_dim(config)),
        "conversations": len(lengths),
        "conversation_lengths": lengths,
        "sliding_window": window,
        "window_exceeded": window is not None and max(lengths) > window,
        "logits_max_abs_diff": logit_diff,
        "logits_tolerance": LOGIT_TOLERANCE,
        "grads_max_abs_diff": grad_diff,
        "grads_max_abs": grad_scale,
        "grads_max_rel_diff": grad_rel,
        "grads_tolerance": GRAD_TOLERANCE,
        "parameters_compared": len(ref_grads),
        "passed": logit_diff <= LOGIT_TOLERANCE and grad_rel <= GRAD_TOLERANCE,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, type=Path, help="a Hugging Face model directory")
    parser.add_argument("--compile", action="store_true", help="compile the decoder layers as training does")
    parser.add_argument("--loss-chunking", choices=("auto", "on", "off"), default="auto", help="as in TrainConfig")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stdout is the JSON report
    report = verify(args.model_dir, compile_layers=args.compile, loss_chunking=args.loss_chunking, seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
