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

Two layer features the fast paths do not compute: a sliding window (Gemma3's local layers:
a query sees only the last `sliding_window` keys) and tanh soft-capping of the attention
scores. A windowed layer whose conversations all fit in the window is plain causal attention
and keeps the fast path; otherwise, and whenever scores are soft-capped, the layer takes an
exact per-conversation fallback (sdpa with a banded causal mask, or eager math for the cap).
`attention_notes` says which layers of a model do so, for the run log.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from core.attention_layers import sliding_layers, sliding_window
from core.preferences.batches import PAIR_ATTENTION
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


def _window_mask(length: int, window: int | None, device: torch.device) -> torch.Tensor:
    """Causal mask of one conversation (True = attend), limited to the last `window` keys as transformers does."""
    index = torch.arange(length, device=device)
    distance = index[:, None] - index[None, :]
    allowed = distance >= 0
    return allowed & (distance < window) if window is not None else allowed


def _capped_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    dropout: float,
    scale: float,
    softcap: float,
) -> torch.Tensor:
    """Eager attention of one conversation with tanh-capped scores (sdpa has no soft-cap): [1, Hq, L, D]."""
    groups = query.shape[1] // key.shape[1]
    key, value = (t.repeat_interleave(groups, dim=1) for t in (key, value))
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(F.dropout(weights, p=dropout) if dropout else weights, value)


@torch.compiler.disable  # the segment count changes every batch: not traced by torch.compile
def _packed_fallback_loop(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: torch.Tensor,
    dropout: float,
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """Per-conversation attention with a sliding window and/or soft-capped scores, exact on any device."""
    batch = query.shape[0]
    gqa = key.shape[1] != query.shape[1]
    rows: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    for row, start, length in segments.tolist():
        q, k, v = (t[row : row + 1, :, start : start + length] for t in (query, key, value))
        mask = _window_mask(length, window, query.device)
        if softcap is not None:
            rows[row].append(_capped_attention(q, k, v, mask, dropout, scale, softcap))
        else:
            rows[row].append(
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale, enable_gqa=gqa)
            )
    return torch.cat([torch.cat(pieces, dim=2) for pieces in rows]).transpose(1, 2)


def _window_binds(segments: torch.Tensor, window: int | None) -> bool:
    """Whether a sliding window changes anything: only a conversation longer than the window sees fewer keys."""
    return window is not None and bool(segments[:, 2].max() > window)


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
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
    if window is not None or softcap is not None:
        segments = segment_table(position_ids, query.shape[0])
        if softcap is not None or _window_binds(segments, window):
            return _packed_fallback_loop(query, key, value, segments, dropout, scale, window, softcap), None
    if query.device.type == "cpu" and dropout == 0.0:
        return packed_attention_cpu(query, key, value, position_ids, scale)[0], None
    return _packed_sdpa_loop(query, key, value, position_ids, dropout, scaling), None


def attention_notes(config: Any, attn_implementation: str) -> list[str]:
    """What packed_sdpa computes off its fast path for this model config, one line each, for the run log.

    Empty for other attention implementations (transformers' own masks honour windows and caps) and for
    models without sliding windows or soft-capped scores.
    """
    if attn_implementation != PACKED_SDPA:
        return []
    notes = []
    window, sliding = sliding_window(config), sliding_layers(config)
    if window is not None:
        notes.append(
            f"attention: layers {sliding} use a {window}-token sliding window; in a batch with a conversation "
            f"longer than {window} tokens they run per conversation through sdpa with a banded causal mask "
            "(the packed kernels have no window), exact but slower"
        )
    softcap = getattr(config, "attn_logit_softcapping", None)
    if softcap is not None:
        notes.append(
            f"attention: scores are soft-capped at {softcap} where the model passes the cap; those layers run "
            "per conversation through eager attention (the packed kernels have no soft-cap), exact but slower"
        )
    return notes


PAIR_SDPA = PAIR_ATTENTION  # named in core: pair batches leave the mask out for it


@torch.compiler.disable  # the segment count changes every batch: not traced by torch.compile
def pair_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of packed preference pairs (core/preferences/batches.py), block by block.

    A segment whose positions start at 0 (a prompt with its chosen completion, or padding) is causal on its own;
    a segment that starts at position s > 0 (a rejected completion) also sees the first s tokens of the segment
    before it: its prompt. So only the scores a pair needs are computed, not the whole row's under a mask.
    """
    if attention_mask is not None:
        raise ValueError(f"{PAIR_SDPA} takes packed pairs without an attention mask (blocks come from position_ids)")
    if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        raise ValueError(
            f"{PAIR_SDPA} has no soft-capped or windowed attention; train this model with attn_implementation 'sdpa'"
        )
    position_ids = kwargs["position_ids"]
    batch = query.shape[0]
    gqa = key.shape[1] != query.shape[1]
    positions = position_ids.detach().to("cpu").expand(batch, position_ids.shape[-1])
    rows: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    root = 0
    for row, start, length in segment_table(position_ids, batch).tolist():
        q = query[row : row + 1, :, start : start + length]
        first = int(positions[row, start])
        if first == 0:
            root = start
            k, v = (t[row : row + 1, :, start : start + length] for t in (key, value))
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa
            )
        else:
            k, v = (
                torch.cat(
                    [t[row : row + 1, :, root : root + first], t[row : row + 1, :, start : start + length]], dim=2
                )
                for t in (key, value)
            )
            mask = torch.ones(length, first + length, dtype=torch.bool, device=query.device).tril(diagonal=first)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=gqa
            )
        rows[row].append(out)
    return torch.cat([torch.cat(pieces, dim=2) for pieces in rows]).transpose(1, 2), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
AttentionInterface.register(PAIR_SDPA, pair_sdpa_forward)
