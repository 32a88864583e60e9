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


def row_segment_lengths(position_ids: torch.Tensor) -> list[list[int]]:
    """Lengths of the conversations (segments) of each row, from position_ids restarts.

    A segment starts at every row start and wherever a position does not follow its
    predecessor by one (the same rule transformers applies to detect packed sequences).
    """
    positions = position_ids.detach().to("cpu", torch.int64)
    seq_len = positions.shape[1]
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    lengths = []
    for row in starts:
        bounds = torch.cat([torch.nonzero(row).reshape(-1), torch.tensor([seq_len])])
        lengths.append(torch.diff(bounds).tolist())
    return lengths


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
    batch, heads, seq_len, _ = query.shape
    position_ids = kwargs.get("position_ids")  # without it each row is one causal sequence
    lengths = [[seq_len]] * batch if position_ids is None else row_segment_lengths(position_ids.expand(batch, seq_len))
    gqa = key.shape[1] != heads
    # unbind/split give views (no copies) and their backward is one stack/cat, not a zero-filled tensor per slice.
    rows = []
    for q_row, k_row, v_row, row_lengths in zip(query.unbind(0), key.unbind(0), value.unbind(0), lengths, strict=True):
        segments = zip(*(t.split(row_lengths, 1) for t in (q_row, k_row, v_row)), strict=True)
        outputs = [
            F.scaled_dot_product_attention(
                q[None], k[None], v[None], dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa
            )[0]
            for q, k, v in segments
        ]
        rows.append(torch.cat(outputs, dim=1))
    return torch.stack(rows).transpose(1, 2), None


# Not traced by torch.compile (training/compilation.py): the segment count changes every batch.
AttentionInterface.register(PACKED_SDPA, torch.compiler.disable(packed_sdpa_forward))
