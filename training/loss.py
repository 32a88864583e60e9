"""Loss over the whole global batch, not a mean of per-micro-batch means.

With packing, micro-batches hold very different numbers of loss tokens. Averaging
per micro-batch (or per rank) would weight a token in a sparse micro-batch more
than one in a dense micro-batch. Instead every micro-step backpropagates
`sum of token losses * world_size / N_global`, where N_global is the loss-token
count of the global batch (all ranks, all accumulation steps), all-reduced once
*before* the first backward. DDP and FSDP2 average gradients over ranks (divide
by world_size), so the accumulated gradient is exactly d(mean token loss)/dθ.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from training.cpu import kernels
from training.data import IGNORE_INDEX
from training.distributed import DistContext, gradient_sync, unwrap


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum (not mean) of cross-entropy over positions whose label is not IGNORE_INDEX, in fp32.

    Labels are already next-token aligned by the data loader (labels[t] is the target
    for logits[t]); no shift here. On CPU the loss and its gradient run in our C kernel
    (training/kernels/cross_entropy.c) where it is available, else in ATen.
    """
    logits = logits.float().reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    kernel = kernels.cross_entropy_kernel(logits, labels)
    if kernel is not None:
        return _KernelCrossEntropySum.apply(logits, labels, kernel)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


class _KernelCrossEntropySum(torch.autograd.Function):
    """token_loss_sum through cross_entropy.c: two reads of the logits forward, one read and one write backward."""

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, labels: torch.Tensor, kernel: kernels.CrossEntropyKernel
    ) -> torch.Tensor:
        total, lse = kernel.forward(logits, labels)
        ctx.save_for_backward(logits, labels, lse)
        ctx.kernel = kernel
        return torch.tensor(total, dtype=torch.float32)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, labels, lse = ctx.saved_tensors
        return ctx.kernel.backward(logits, labels, lse, float(grad)), None, None


def forward_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Packed forward pass: position_ids restart per conversation, no attention mask, no KV cache."""
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits


def micro_batch_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of token losses of one packed micro-batch, projecting to the vocabulary only where a label is.

    About half the positions of a chat row (system, user turns, padding) carry no label;
    their logits would be computed and thrown away. transformers' `logits_to_keep` (a
    boolean rows x seq_len mask) runs the LM head and the cross-entropy on the labelled
    positions only, which saves that share of the head's matmuls and of the loss's
    softmax passes. Models whose forward has no `logits_to_keep` take the full-logits path.
    """
    if not _accepts_logits_to_keep(model):
        return token_loss_sum(forward_logits(model, batch), batch["labels"])
    keep = batch["labels"] != IGNORE_INDEX
    logits = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, logits_to_keep=keep
    ).logits
    return token_loss_sum(logits, batch["labels"][keep])


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return _forward_takes_logits_to_keep(type(unwrap(model)))


@functools.cache
def _forward_takes_logits_to_keep(model_class: type) -> bool:
    """Once per model class, not per micro-batch: signature inspection is slow next to a step's Python work."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


@dataclass
class StepLoss:
    mean_loss: float  # global mean token loss of this optimizer step
    loss_tokens: int  # global loss tokens of this step
    tokens: int  # global non-pad tokens of this step


def accumulate_gradients(
    model: torch.nn.Module,
    micro_batches: list[dict[str, torch.Tensor]],
    ctx: DistContext,
    autocast: AbstractContextManager | None = None,
) -> StepLoss:
    """Forward/backward every micro-batch of one optimizer step; gradients end up globally normalized."""
    local_loss_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro_batches)
    local_tokens = sum(int(b["tokens"].sum()) for b in micro_batches)
    global_loss_tokens, global_tokens = ctx.all_reduce_sum([local_loss_tokens, local_tokens])
    if global_loss_tokens == 0:
        raise RuntimeError("the global batch has no loss tokens; check the shards' loss masks")
    scale = ctx.world_size / global_loss_tokens
    local_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for index, batch in enumerate(micro_batches):
        batch = {k: batch[k].to(ctx.device, non_blocking=True) for k in ("input_ids", "position_ids", "labels")}
        # Forward and backward both inside: DDP decides in forward whether backward all-reduces.
        with gradient_sync(model, enabled=index == len(micro_batches) - 1):
            with autocast or nullcontext():
                loss_sum = micro_batch_loss_sum(model, batch)
            (loss_sum * scale).backward()
        local_sum += loss_sum.detach().double()
    (global_sum,) = ctx.all_reduce_sum([float(local_sum)])
    return StepLoss(global_sum / global_loss_tokens, int(global_loss_tokens), int(global_tokens))
