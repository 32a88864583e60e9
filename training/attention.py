"""Per-conversation attention for packed rows: `attn_implementation="packed_sdpa"`.

With stock "sdpa", transformers turns the position_ids restarts of a packed row into a
block-diagonal mask, and the attention kernel then computes every query x key score of
the row (seq_len^2) only to discard the cross-conversation ones. With conversations much
shorter than a row that is most of the attention work. Here each conversation of the row
is attended on its own with a causal kernel, so the work is sum(len_i^2) / 2 instead of
seq_len^2, and no mask tensor is built at all.

On CPU (without dropout) the per-conversation work is one custom operator, forward and
backward (training/cpu/attention.py). Other devices (and dropout) take a loop through
`F.scaled_dot_product_attention`, one call per conversation.

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

from training.config import TrainConfig
from training.cpu.attention import packed_attention_cpu
from training.data import segment_table
from training.distributed import DistContext

PACKED_SDPA = "packed_sdpa"


def head_dim(config: Any) -> int:
    """Width of one attention head of a transformers model config."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def resolve_attn(cfg: TrainConfig, ctx: DistContext) -> str:
    """ "auto": per-conversation attention on CPU; on GPU stock sdpa (packed_sdpa there is a Python loop)."""
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    return "sdpa" if ctx.device.type == "cuda" else PACKED_SDPA


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
