"""Per-conversation causal attention of packed rows on CPU, as one custom operator.

training/attention.py routes `packed_sdpa` here on CPU (without dropout). The work of every
conversation of the batch is one operator, forward and backward: our C kernel
(training/cpu/kernels.py) where it could be built, else ATen's flash kernel called per
conversation, each slice written into one output. Autograd then sees one node per layer
instead of a dozen views, splits and concatenations per conversation, and torch.compile
traces a whole decoder layer around it without a graph break.
"""

from __future__ import annotations

from typing import Any

import torch

from training.cpu import kernels
from training.data import segment_table

_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
_FLASH_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


@torch.library.custom_op("posttrain::packed_attention_cpu", mutates_args=())
def packed_attention_cpu(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, position_ids: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """query [B, Hq, T, D], key/value [B, Hkv, T, D] -> (output [B, T, Hq, D], logsumexp [B, Hq, T]).

    The output is laid out the way transformers reshapes it next ([B, T, Hq * D]), so that
    reshape is free. Both kernels take grouped-query key/value heads as they are.
    """
    batch, heads, seq_len, width = query.shape
    out = query.new_empty(batch, seq_len, heads, width)
    lse = query.new_empty(batch, heads, seq_len, dtype=torch.float32)
    segments = segment_table(position_ids, batch)
    kernel = kernels.attention_kernel(query, key, value)
    if kernel is not None:
        kernel.forward(query, key, value, out, lse, segments, scale)
        return out, lse
    for row, start, length in segments.tolist():
        piece = slice(start, start + length)
        piece_out, piece_lse = _FLASH_CPU(
            query[row : row + 1, :, piece], key[row : row + 1, :, piece], value[row : row + 1, :, piece],
            0.0, True, scale=scale,
        )  # fmt: skip
        out[row, piece] = piece_out[0].transpose(0, 1)
        lse[row, :, piece] = piece_lse[0]
    return out, lse


@packed_attention_cpu.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, position_ids: torch.Tensor, scale: float):
    batch, heads, seq_len, width = query.shape
    return query.new_empty(batch, seq_len, heads, width), query.new_empty(batch, heads, seq_len, dtype=torch.float32)


@torch.library.custom_op("posttrain::packed_attention_cpu_backward", mutates_args=())
def packed_attention_cpu_backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    position_ids: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for query, key and value, each conversation's slice written in place (no zero fill, no cat)."""
    grads = [torch.empty_like(t) for t in (query, key, value)]
    segments = segment_table(position_ids, query.shape[0])
    kernel = kernels.attention_kernel(query, key, value)
    if kernel is not None:
        grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
        kernel.backward(grad_out, query, key, value, out, lse, tuple(grads), segments, scale)
        return tuple(grads)
    for row, start, length in segments.tolist():
        piece = slice(start, start + length)
        pieces = _FLASH_CPU_BACKWARD(
            grad_out[row : row + 1, piece].transpose(1, 2),
            query[row : row + 1, :, piece], key[row : row + 1, :, piece], value[row : row + 1, :, piece],
            out[row : row + 1, piece].transpose(1, 2), lse[row : row + 1, :, piece],
            0.0, True, scale=scale,
        )  # fmt: skip
        for grad, grad_piece in zip(grads, pieces, strict=True):
            grad[row, :, piece] = grad_piece[0]
    return tuple(grads)


@packed_attention_cpu_backward.register_fake
def _(grad_out, query, key, value, out, lse, position_ids, scale):
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def _save_for_backward(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    query, key, value, position_ids, scale = inputs
    ctx.save_for_backward(query, key, value, *output, position_ids)
    ctx.scale = scale


def _backward(ctx: Any, grad_out: torch.Tensor, _grad_lse: torch.Tensor | None) -> tuple[Any, ...]:
    query, key, value, out, lse, position_ids = ctx.saved_tensors
    grads = packed_attention_cpu_backward(grad_out, query, key, value, out, lse, position_ids, ctx.scale)
    return (*grads, None, None)


packed_attention_cpu.register_autograd(_backward, setup_context=_save_for_backward)
