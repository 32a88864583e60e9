"""Which layers of a transformers model attend through a sliding window, read from its config.

Shared by the trainer's packed attention (training/attention.py) and the evaluation's packed candidate scoring
(evaluation/candidate_scoring.py): both must honour the same window the model was built with.
"""

from __future__ import annotations

from typing import Any


def sliding_layers(config: Any) -> list[int]:
    """Indices of the layers transformers runs with a sliding window (config.layer_types)."""
    if getattr(config, "sliding_window", None) is None:
        return []
    layer_types = getattr(config, "layer_types", None) or []
    return [i for i, kind in enumerate(layer_types) if kind == "sliding_attention"]


def sliding_window(config: Any) -> int | None:
    """The window of the model's sliding layers; None when no layer has one (Qwen3 keeps a window it does not use)."""
    return config.sliding_window if sliding_layers(config) else None
