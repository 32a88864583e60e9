"""Per-conversation attention for packed rows: `attn_implementation="packed_sdpa"`.

With stock "sdpa", transformers turns the position_ids restarts of a packed row into a
block-diagonal mask, and the attention kernel then computes every query x key score of
the row (seq_len^2) only to discard the cross-conversation ones. At our row length (1024)
and typical conversation length (~180 tokens) that is most of the attention work, and on
CPU it was 29% of a training step (benchmarks/results). Here each conversation of the row
is attended on its own with a causal kernel, so the work is sum(len_i^2) / 2 instead of
seq_len^2, and no mask tensor is built at all.

On CPU the per-conversation work is one custom operator, forward and backward: our C
kernel (training/cpu_kernels.py, about twice ATen's CPU flash kernel at our head sizes)
where it could be built, else ATen's flash kernel called per conversation, writing each
slice into one output. Autograd sees one node per layer instead of a dozen views, splits
and concatenations per conversation, and torch.compile traces a whole decoder layer around
it without a graph break. Other devices (and dropout) take the same loop through
`F.scaled_dot_product_attention`.

The segments come from the position_ids restarts that transformers hands every attention
call (without position_ids each row is one causal sequence). Numerically it matches "sdpa"
with the packed mask (tests compare logits and gradients). The name is not saved in the
model's config.json: a trained model loads anywhere with stock attention.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from training import cpu_kernels

PACKED_SDPA = "packed_sdpa"


def head_dim(config: Any) -> int:
    """Width of one attention head of a transformers model config."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def segment_table(position_ids: torch.Tensor, batch: int) -> torch.Tensor:
    """(row, start, length) of every conversation of the batch, one int64 row each, in row order.

    A segment starts at every row start and wherever a position does not follow its
    predecessor by one (the same rule transformers applies to detect packed sequences).
    Tensor ops over the whole batch: it runs for every layer, forward and backward.
    """
    positions = position_ids.detach().to("cpu", torch.int64).expand(batch, position_ids.shape[-1])
    seq_len = positions.shape[1]
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    row, start = torch.nonzero(starts).unbind(1)
    end = torch.full_like(start, seq_len)
    same_row = row[1:] == row[:-1]
    end[:-1] = torch.where(same_row, start[1:], end[:-1])
    return torch.stack([row, start, end - start], dim=1)


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
    kernel = cpu_kernels.attention_kernel(query, key, value)
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
    kernel = cpu_kernels.attention_kernel(query, key, value)
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


@torch.compiler.disable  # the segment count changes every batch: not traced by torch.compile
def _packed_sdpa_loop(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    position_ids: torch.Tensor,
    dropout: float,
    scale: float | None,
) -> torch.Tensor:
    """The device-independent path: one `F.scaled_dot_product_attention` per conversation."""
    batch = query.shape[0]
    gqa = key.shape[1] != query.shape[1]
    rows: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    for row, start, length in segment_table(position_ids, batch).tolist():
        q, k, v = (t[row : row + 1, :, start : start + length] for t in (query, key, value))
        rows[row].append(
            F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=gqa)
        )
    return torch.cat([torch.cat(pieces, dim=2) for pieces in rows]).transpose(1, 2)


def packed_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [B, Hq, T, D], key/value [B, Hkv, T, D] -> output [B, T, Hq, D] (transformers' contract)."""
    if attention_mask is not None:
        raise ValueError(
            f"{PACKED_SDPA} takes packed rows without an attention mask (segments come from position_ids); "
            "use attn_implementation='sdpa' for padded batches"
        )
    position_ids = kwargs.get("position_ids")
    if position_ids is None:  # each row is one causal sequence
        position_ids = torch.arange(query.shape[2], device=query.device)[None]
    if query.device.type == "cpu" and dropout == 0.0:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return packed_attention_cpu(query, key, value, position_ids, scale)[0], None
    return _packed_sdpa_loop(query, key, value, position_ids, dropout, scaling), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
