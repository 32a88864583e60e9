"""Per-conversation attention for packed rows: `attn_implementation="packed_sdpa"`.

With stock "sdpa", transformers turns the position_ids restarts of a packed row into a
block-diagonal mask, and the attention kernel then computes every query x key score of
the row (seq_len^2) only to discard the cross-conversation ones. At our row length (1024)
and typical conversation length (~180 tokens) that is most of the attention work, and on
CPU it was 29% of a training step (benchmarks/results). Here each conversation of the row
is attended on its own with a causal kernel, so the work is sum(len_i^2) / 2 instead of
seq_len^2, and no mask tensor is built at all.

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

PACKED_SDPA = "packed_sdpa"


def segment_boundaries(position_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative segment boundaries over the flattened (rows x seq_len) tokens.

    A segment starts at every row start and wherever a position does not follow its
    predecessor by one (the same rule transformers applies to detect packed sequences).
    Returns int32 [0, b1, ..., rows * seq_len] on the CPU.
    """
    positions = position_ids.detach().to("cpu", torch.int64)
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    flat = torch.nonzero(starts.reshape(-1)).reshape(-1)
    return torch.cat([flat, torch.tensor([positions.numel()])]).to(torch.int32)


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
    batch, heads, seq_len, head_dim = query.shape
    lengths = _segment_lengths(kwargs, batch, seq_len)
    gqa = key.shape[1] != heads
    # [H, B*T, D]: segments are then contiguous slices along dim 1, and split's backward is a single cat.
    q_all, k_all, v_all = (t.transpose(0, 1).reshape(t.shape[1], -1, head_dim) for t in (query, key, value))
    outputs = [
        F.scaled_dot_product_attention(
            q[None], k[None], v[None], dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa
        )[0]
        for q, k, v in zip(q_all.split(lengths, 1), k_all.split(lengths, 1), v_all.split(lengths, 1), strict=True)
    ]
    out = torch.cat(outputs, dim=1).reshape(heads, batch, seq_len, head_dim)
    return out.permute(1, 2, 0, 3).contiguous(), None


def _segment_lengths(kwargs: dict[str, Any], batch: int, seq_len: int) -> list[int]:
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        return [seq_len] * batch  # no packing information: each row is one causal sequence
    if position_ids.shape != (batch, seq_len):
        position_ids = position_ids.expand(batch, seq_len)
    return torch.diff(segment_boundaries(position_ids).to(torch.int64)).tolist()


# Not traced by torch.compile (training/compilation.py): the segment count changes every batch.
AttentionInterface.register(PACKED_SDPA, torch.compiler.disable(packed_sdpa_forward))
