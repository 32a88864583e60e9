"""One conversation on its way through the encoder: what each stage has found out about it so far."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Work:
    """One conversation's state between the stages, so no stage recomputes what an earlier one found."""

    index: int
    messages: list[dict[str, Any]]
    turns: list[int]  # message indices of assistant turns
    rendered: str = ""
    gen_spans: list[tuple[int, int]] | None = None
    positions: list[int] | None = None  # TracedMessages.positions of the rendering (prefix-stable templates)
    spans: list[tuple[int, int]] = field(default_factory=list)  # content spans of the turns checked, in order
    lookalike: bool = False
    plain: bool = False  # is_plain_chat(messages): so are its prompts, slices of it
    as_rendered: bool = False  # mask each turn as the rendering shows it (rewrite_policy="as_rendered")
    only_last: bool = False  # mask the last assistant turn only (rewrite_policy="expand": one turn's example)
