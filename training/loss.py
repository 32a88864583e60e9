"""Loss over the whole global batch, not a mean of per-micro-batch means.

With packing, micro-batches hold very different numbers of loss tokens. Averaging
per micro-batch (or per rank) would weight a token in a sparse micro-batch more
than one in a dense micro-batch. Instead every micro-step backpropagates
`sum of token losses * world_size / N_global`, where N_global is the loss-token
count of the global batch (all ranks, all accumulation steps), all-reduced once
*before* the first backward. DDP and FSDP2 average gradients over ranks (divide
by world_size), so the accumulated gradient is exactly d(mean token loss)/dθ.

Large vocabularies (Qwen3's 151,936 ids, Gemma 3's 262,144) make the logits of a batch the
biggest tensor of the step. With chunking on (TrainConfig.loss_chunking) the model returns
the final hidden states of the labelled positions instead, and `_ChunkedHeadCrossEntropy`
projects them to the vocabulary a chunk of rows at a time, computing each chunk's loss and
gradient before the next chunk's logits exist; backward then only scales those gradients.
Vocabulary rows past the tokenizer's length (embeddings padded to a multiple of 64) are cut
from the head before the softmax, so they never receive probability nor gradient.

MoE models (Qwen3-MoE, Mixtral) add the router's load-balancing loss where their config asks
for it (output_router_logits and router_aux_loss_coef > 0), over the micro-batch's non-pad
tokens: see `router_statistics`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from training.cpu import kernels
from training.data import IGNORE_INDEX
from training.distributed import DistContext, causal_lm, gradient_sync

CHUNK_VOCAB_THRESHOLD = 65_536  # loss_chunking "auto": chunk vocabularies at least this large
CHUNK_LOGITS = 1 << 24  # logits elements per chunk (64 MiB in fp32): rows per chunk = CHUNK_LOGITS // vocabulary


@dataclass(frozen=True)
class LossSettings:
    """How a run's loss is computed, beyond the plain token cross-entropy.

    chunked: project labelled positions to the vocabulary a chunk at a time (module docstring).
    real_vocab_size: ids at or past it are padding rows of the embeddings, cut from the softmax;
      None where the vocabulary has no padding.
    router_aux_coef: weight of the MoE load-balancing loss; 0 leaves it out.
    router_top_k: experts per token of an MoE model (router logits are requested, expert counts
      reported); 0 for a dense model.
    """

    chunked: bool = False
    real_vocab_size: int | None = None
    router_aux_coef: float = 0.0
    router_top_k: int = 0


def loss_settings(chunking: str, model_config: Any, tokenizer_length: int | None, fsdp: bool = False) -> LossSettings:
    """The settings of a run from TrainConfig.loss_chunking, the model's config and len(tokenizer).

    Chunking needs the unsharded output weight outside the model's forward, so FSDP2 runs keep
    the full-logits path, as do models whose final logits are soft-capped (the cap is applied
    by the model's forward to what it believes are logits).
    """
    config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    vocab = int(config.vocab_size)
    wanted = chunking == "on" or (chunking == "auto" and vocab >= CHUNK_VOCAB_THRESHOLD)
    capped = getattr(config, "final_logit_softcapping", None) is not None
    real = tokenizer_length if tokenizer_length is not None and tokenizer_length < vocab else None
    top_k = int(getattr(config, "num_experts_per_tok", 0) or 0) if _expert_count(config) is not None else 0
    asks_aux = top_k > 0 and bool(getattr(config, "output_router_logits", False))
    coef = float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0) if asks_aux else 0.0
    chunked = wanted and not fsdp and not capped
    return LossSettings(chunked=chunked, real_vocab_size=real, router_aux_coef=coef, router_top_k=top_k)


def _expert_count(config: Any) -> int | None:
    """Experts per MoE layer (Qwen3-MoE: num_experts, Mixtral: num_local_experts); None for a dense model."""
    for name in ("num_experts", "num_local_experts"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor, real_vocab_size: int | None = None) -> torch.Tensor:
    """Sum (not mean) of cross-entropy over positions whose label is not IGNORE_INDEX, in fp32.

    Labels are already next-token aligned by the data loader (labels[t] is the target
    for logits[t]); no shift here. On CPU the loss and its gradient run in our C kernel
    (training/kernels/cross_entropy.c) where it is available, else in ATen. With
    `real_vocab_size`, the columns past it (padding rows of the vocabulary) are left out of the softmax.
    """
    if real_vocab_size is not None:
        logits = logits[..., :real_vocab_size]
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


def chunked_head_loss_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    real_vocab_size: int | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """token_loss_sum(hidden @ weight.T + bias, labels) without a [rows x vocabulary] tensor, in fp32.

    hidden [rows, H] and labels [rows] are the labelled positions (IGNORE_INDEX rows add nothing).
    """
    if real_vocab_size is not None:
        weight = weight[:real_vocab_size]
        bias = bias[:real_vocab_size] if bias is not None else None
    rows = chunk_rows or max(1, CHUNK_LOGITS // weight.shape[0])
    hidden = hidden.reshape(-1, hidden.shape[-1])
    return _ChunkedHeadCrossEntropy.apply(hidden, weight, bias, labels.reshape(-1).contiguous(), rows)


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    """LM head + cross-entropy sum, one chunk of rows at a time; the gradients are computed in forward.

    Keeping each chunk's logits for backward would hold the whole [rows x vocabulary] tensor again,
    and recomputing them would cost a second head matmul; computing d(loss)/d(logits) while a chunk's
    logits exist and folding it into the hidden and weight gradients at once costs neither. Backward
    only multiplies them by the incoming scalar.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        chunk_rows: int,
    ) -> torch.Tensor:
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        h32, w32 = hidden.float(), weight.float()
        b32 = bias.float() if bias is not None else None
        grad_hidden = torch.empty_like(h32) if need_hidden else None
        grad_weight = torch.zeros_like(w32) if need_weight else None
        grad_bias = torch.zeros_like(b32) if need_bias and b32 is not None else None
        need_grad = any(g is not None for g in (grad_hidden, grad_weight, grad_bias))
        total = 0.0
        # fp32 throughout, also inside a bf16 autocast region (the loss is always computed in fp32).
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, h32.shape[0], chunk_rows):
                h = h32[start : start + chunk_rows]
                logits = torch.addmm(b32, h, w32.T) if b32 is not None else h @ w32.T
                loss, grad = _chunk_loss_and_grad(logits, labels[start : start + chunk_rows], need_grad)
                total += loss
                del logits
                if grad_hidden is not None:
                    torch.mm(grad, w32, out=grad_hidden[start : start + chunk_rows])
                if grad_weight is not None:
                    grad_weight.addmm_(grad.T, h)
                if grad_bias is not None:
                    grad_bias += grad.sum(0)
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return torch.tensor(total, dtype=torch.float32, device=hidden.device)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scale = float(grad)
        out = []
        for saved, dtype in zip(ctx.grads, ctx.dtypes, strict=True):
            out.append(saved.mul_(scale).to(dtype) if saved is not None else None)
        ctx.grads = (None, None, None)
        return (*out, None, None)


def _chunk_loss_and_grad(
    logits: torch.Tensor, labels: torch.Tensor, need_grad: bool
) -> tuple[float, torch.Tensor | None]:
    """Summed cross-entropy of one chunk and d(sum)/d(logits): the C kernel on CPU where it applies, else ATen."""
    kernel = kernels.cross_entropy_kernel(logits, labels)
    if kernel is not None:
        total, lse = kernel.forward(logits, labels)
        return total, kernel.backward(logits, labels, lse, 1.0) if need_grad else None
    valid = labels != IGNORE_INDEX
    safe = torch.where(valid, labels, 0)
    total = float(F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum").double())
    if not need_grad:
        return total, None
    grad = torch.softmax(logits, dim=-1)
    grad[torch.arange(len(labels), device=labels.device), safe] -= 1.0
    grad *= valid.unsqueeze(1)
    return total, grad


def forward_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Packed forward pass: position_ids restart per conversation, no attention mask, no KV cache."""
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits


def micro_batch_loss_sum(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], settings: LossSettings | None = None
) -> torch.Tensor:
    """Sum of token losses of one packed micro-batch (the router's auxiliary loss is not in it)."""
    return micro_batch_losses(model, batch, settings or LossSettings()).token_loss_sum


@dataclass
class MicroBatchLosses:
    token_loss_sum: torch.Tensor  # summed token cross-entropy, fp32 scalar
    router_aux: torch.Tensor | None = None  # MoE load-balancing loss over the non-pad tokens (unweighted)
    expert_tokens: torch.Tensor | None = None  # [layers, experts] top-k assignments of non-pad tokens


def micro_batch_losses(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], settings: LossSettings
) -> MicroBatchLosses:
    """Forward one packed micro-batch, projecting to the vocabulary only where a label is.

    About half the positions of a chat row (system, user turns, padding) carry no label;
    their logits would be computed and thrown away. transformers' `logits_to_keep` (a
    boolean rows x seq_len mask) runs the LM head and the cross-entropy on the labelled
    positions only, which saves that share of the head's matmuls and of the loss's
    softmax passes. Models whose forward has no `logits_to_keep` take the full-logits path.
    """
    extra = {"output_router_logits": True} if settings.router_top_k else {}
    if not _accepts_logits_to_keep(model):
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, **extra)
        loss = token_loss_sum(out.logits, batch["labels"], settings.real_vocab_size)
        return _with_router(MicroBatchLosses(loss), out, batch, settings)
    keep = batch["labels"] != IGNORE_INDEX
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if settings.chunked:
        head = causal_lm(model).get_output_embeddings()
        with _head_returns_hidden(head):
            out = model(**inputs, logits_to_keep=keep, **extra)
        loss = chunked_head_loss_sum(
            out.logits, head.weight, head.bias, batch["labels"][keep], settings.real_vocab_size
        )
    else:
        out = model(**inputs, logits_to_keep=keep, **extra)
        loss = token_loss_sum(out.logits, batch["labels"][keep], settings.real_vocab_size)
    return _with_router(MicroBatchLosses(loss), out, batch, settings)


@contextmanager
def _head_returns_hidden(head: torch.nn.Module) -> Iterator[None]:
    """The output projection passes its input through, so the model's "logits" are the final hidden states.

    The forward still runs through the (DDP-)wrapped model, whose hooks must see it; only the
    projection itself moves to the chunked loss. An instance attribute shadows the class's forward.
    """
    head.forward = _identity
    try:
        yield
    finally:
        del head.forward


def _identity(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


def _with_router(
    losses: MicroBatchLosses, out: Any, batch: dict[str, torch.Tensor], settings: LossSettings
) -> MicroBatchLosses:
    router_logits = getattr(out, "router_logits", None)
    if settings.router_top_k and router_logits:
        non_pad = non_pad_mask(batch["input_ids"].shape, batch["tokens"].to(batch["input_ids"].device))
        losses.router_aux, losses.expert_tokens = router_statistics(router_logits, settings.router_top_k, non_pad)
    return losses


def non_pad_mask(shape: torch.Size, tokens: torch.Tensor) -> torch.Tensor:
    """[rows, seq_len] True on the conversations' tokens: a packed row's padding is its tail (training/data.py)."""
    return torch.arange(shape[1], device=tokens.device).unsqueeze(0) < tokens.unsqueeze(1)


def router_statistics(
    router_logits: tuple[torch.Tensor, ...], top_k: int, non_pad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(load-balancing loss, [layers, experts] top-k assignment counts) over the non-pad tokens of a micro-batch.

    The rule on packed rows: the statistic is the one transformers computes for a batch of
    unpacked conversations with an attention mask over their padding (Switch Transformer's
    experts x sum_i f_i P_i, f_i the share of top-k assignments to expert i and P_i its mean
    router probability, both over every layer's non-pad tokens). A token's router logits
    depend only on its own conversation (packed attention), and the statistic is a sum over
    tokens, so packing several conversations into a row changes nothing; the row's padding,
    which HF would count where no mask is passed, is left out.
    """
    mask = non_pad.reshape(-1).to(router_logits[0].device, torch.float32)
    experts = router_logits[0].shape[-1]
    assigned, probability, counts = [], torch.zeros(experts, device=mask.device), []
    for layer in router_logits:
        probs = torch.softmax(layer.float(), dim=-1)
        chosen = torch.topk(probs, top_k, dim=-1).indices.reshape(-1)
        per_expert = torch.zeros(experts, device=mask.device).index_add_(0, chosen, mask.repeat_interleave(top_k))
        assigned.append(per_expert)
        probability = probability + (probs * mask.unsqueeze(1)).sum(0)
        counts.append(per_expert.detach())
    rows = mask.sum() * len(router_logits)
    if float(rows) == 0:
        return probability.sum() * 0.0, torch.stack(counts)
    share = torch.stack(assigned).sum(0) / rows
    return experts * (share * probability / rows).sum(), torch.stack(counts)


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return _forward_takes_logits_to_keep(type(causal_lm(model)))  # peft's forward passes it on as a kwarg


@functools.cache
def _forward_takes_logits_to_keep(model_class: type) -> bool:
    """Once per model class, not per micro-batch: signature inspection is slow next to a step's Python work."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


@dataclass
class StepLoss:
    mean_loss: float  # global mean token loss of this optimizer step
    loss_tokens: int  # global loss tokens of this step
    tokens: int  # global non-pad tokens of this step
    router_aux: float | None = None  # MoE: mean load-balancing loss over micro-batches and ranks (unweighted)
    expert_tokens: list[list[int]] | None = None  # MoE: global [layers][experts] top-k assignments of this step


def accumulate_gradients(
    model: torch.nn.Module,
    micro_batches: list[dict[str, torch.Tensor]],
    ctx: DistContext,
    autocast: AbstractContextManager | None = None,
    settings: LossSettings | None = None,
) -> StepLoss:
    """Forward/backward every micro-batch of one optimizer step; gradients end up globally normalized.

    The MoE load-balancing loss, a per-batch statistic like HF's, enters each micro-batch's backward
    as router_aux_coef * aux / micro-batches; DDP's average over ranks makes its weight
    router_aux_coef times the mean over the global batch's micro-batches.
    """
    settings = settings or LossSettings()
    local_loss_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro_batches)
    local_tokens = sum(int(b["tokens"].sum()) for b in micro_batches)
    global_loss_tokens, global_tokens = ctx.all_reduce_sum([local_loss_tokens, local_tokens])
    if global_loss_tokens == 0:
        raise RuntimeError("the global batch has no loss tokens; check the shards' loss masks")
    scale = ctx.world_size / global_loss_tokens
    local_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    aux_sum, experts = 0.0, None
    keys = ("input_ids", "position_ids", "labels", "tokens")
    for index, batch in enumerate(micro_batches):
        batch = {k: batch[k].to(ctx.device, non_blocking=True) for k in keys}
        # Forward and backward both inside: DDP decides in forward whether backward all-reduces.
        with gradient_sync(model, enabled=index == len(micro_batches) - 1):
            with autocast or nullcontext():
                losses = micro_batch_losses(model, batch, settings)
            total = losses.token_loss_sum * scale
            if losses.router_aux is not None and settings.router_aux_coef > 0:
                total = total + losses.router_aux * (settings.router_aux_coef / len(micro_batches))
            total.backward()
        local_sum += losses.token_loss_sum.detach().double()
        if losses.router_aux is not None:
            aux_sum += float(losses.router_aux.detach())
            counts = losses.expert_tokens.double().cpu()
            experts = counts if experts is None else experts + counts
    if experts is None:
        (global_sum,) = ctx.all_reduce_sum([float(local_sum)])
        return StepLoss(global_sum / global_loss_tokens, int(global_loss_tokens), int(global_tokens))
    global_sum, global_aux, *flat = ctx.all_reduce_sum([float(local_sum), aux_sum, *experts.reshape(-1).tolist()])
    counts = torch.tensor(flat).reshape(experts.shape).round().long().tolist()
    aux_mean = global_aux / (len(micro_batches) * ctx.world_size)
    return StepLoss(global_sum / global_loss_tokens, int(global_loss_tokens), int(global_tokens), aux_mean, counts)
