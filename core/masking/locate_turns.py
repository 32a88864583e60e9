"""Pinning each assistant turn's content span from its serving prompt.

The serving prompt of turn ``i`` (``messages[:i]`` with the generation prompt) must be a
string prefix of the full rendering and the turn's content must follow it verbatim; that
locates the content without trusting any marker, and rejects templates that rewrite earlier
turns or put text between the generation prompt and the content.
"""

from __future__ import annotations

import re
from typing import Any

from core.masking import rendering
from core.masking.reasons import MaskError
from core.masking.tokenizer_info import TokenizerInfo
from core.masking.work import Work


class ServingPrompts:
    """The serving prompt of each assistant turn of one conversation, as ``(q, tail)``: ``rendered[:q] + tail``.

    For a prefix-stable template (``prefix_bound``) the prompt of message ``t`` is the full
    rendering up to ``positions[t]`` followed by the generation prompt, which one exact rendering
    (of the first such turn, the anchor) yields: one prompt rendering per conversation instead of
    one per turn, each over all earlier turns (quadratic in the turns), and no prompt string is
    built. Other turns (all of them for other templates) are rendered exactly: ahead of time in
    the chunk's batch, or on demand in turn order for conversations that truncation cuts, where
    the turns past the cut are never rendered.
    """

    __slots__ = ("anchor", "derivable", "exact", "info", "tail", "work")

    def __init__(self, info: TokenizerInfo, work: Work, bound: int | None) -> None:
        self.info = info
        self.work = work
        self.exact: dict[int, tuple[str, Any] | MaskError] = {}
        positions = work.positions
        if bound is None or positions is None:
            self.derivable: frozenset[int] = frozenset()
        else:
            self.derivable = frozenset(t for t in work.turns if bound < t < len(positions))
        self.anchor = min(self.derivable) if self.derivable else None
        self.tail: str | None = None

    def eager(self, whole: bool) -> list[int]:
        """Message indices to render in the chunk's batch (``whole``: every turn will be checked)."""
        if whole:
            return [t for t in self.work.turns if t not in self.derivable or t == self.anchor]
        return [] if self.anchor is None else [self.anchor]

    def settle(self) -> None:
        """After the batch: the generation prompt is what the anchor's prompt adds to the rendering's prefix."""
        got = None if self.anchor is None else self.exact.get(self.anchor)
        if got is None or isinstance(got, MaskError):
            return
        prompt, q = got[0], self.work.positions[self.anchor]  # type: ignore[index]
        if len(prompt) >= q and self.work.rendered.startswith(prompt[:q]):
            self.tail = prompt[q:]
        # else the anchor's own check reports the mismatch, and the other turns render exactly

    def first_error(self) -> MaskError | None:
        """The first template error among the turns' prompts, in turn order (as rendering each would find)."""
        for t in self.work.turns:
            got = self.exact.get(self.anchor if t in self.derivable else t)  # type: ignore[arg-type]
            if isinstance(got, MaskError):
                return MaskError(got.reason, got.detail)
        return None

    def get(self, turn: int) -> tuple[int, str]:
        """Message ``turn``'s serving prompt as ``(q, tail)``, rendering it now if the batch did not."""
        if turn in self.derivable and turn != self.anchor:
            anchor = self.exact[self.anchor]  # type: ignore[index]
            if isinstance(anchor, MaskError):  # the generation prompt fails the same way for every such turn
                raise MaskError(anchor.reason, anchor.detail)
            if self.tail is not None:
                return self.work.positions[turn], self.tail  # type: ignore[index]
        got = self.exact.get(turn)
        if got is None:
            got = rendering.render_many(self.info, [self.work.messages[:turn]], True, False, self.work.plain)[0]
            self.exact[turn] = got
        if isinstance(got, MaskError):
            raise MaskError(got.reason, got.detail)
        return 0, got[0]


def _locate_content(
    work: Work, turn: int, q: int, tail: str, cut: int | None, control: re.Pattern[str] | None = None
) -> tuple[int, int] | None:
    """Pin one assistant content's span from its serving prompt ``rendered[:q] + tail``; raise on any rewriting.

    None when the turn is past ``cut`` (truncation keeps the text before it): its prompt agrees with
    the rendering up to the cut, so no token the row keeps is in or after a part that differs.
    """
    text = work.rendered
    content = work.messages[turn]["content"]
    if not text.startswith(tail, q):
        prompt = text[:q] + tail
        at = next((k for k in range(q, min(len(prompt), len(text))) if prompt[k] != text[k]), len(text))
        if cut is not None and at >= cut:
            return None
        raise MaskError(
            "serving_prefix_mismatch",
            f"the serving prompt for message {turn} is not a prefix of the full rendering: they "
            f"differ at character {at} (prompt has {prompt[at : at + 30]!r}, training text has "
            f"{text[at : at + 30]!r}); the template renders earlier turns differently depending on "
            "what follows",
        )
    start = q + len(tail)
    if cut is not None and start >= cut:
        return None
    if text.startswith(content, start):
        return start, start + len(content)
    # Whitespace the template trims is masked as rendered: the model is served the same
    # trimmed history, and what it learns to generate is the text the template shows.
    for trimmed in (content.strip(), content.lstrip(), content.rstrip()):
        if trimmed and trimmed != content and text.startswith(trimmed, start):
            return start, start + len(trimmed)
    if work.as_rendered:
        return _rendered_span(work, turn, start, control)
    if content in text[start:]:
        gap = text[start : text.index(content, start)]
        raise MaskError(
            "serving_prefix_mismatch",
            f"the template puts {gap[:60]!r} between the generation prompt and message {turn}'s content, "
            "which the model would have to generate unprompted at serving time",
        )
    raise MaskError(
        "content_not_rendered",
        f"message {turn} (assistant) content does not follow its serving prompt: the rendering has "
        f"{text[start : start + 40]!r} where the turn as written has {content[:40]!r}",
    )


def _rendered_span(work: Work, turn: int, start: int, control: re.Pattern[str] | None) -> tuple[int, int]:
    """The turn as the rendering shows it: from its serving prompt up to the next control token.

    That control token is the end of turn the model emits at serving time, so the span is
    exactly what the model is trained to generate (rewrite_policy="as_rendered").
    """
    found = control.search(work.rendered, start) if control is not None else None
    if found is None or found.start() == start:
        raise MaskError(
            "content_not_rendered",
            f"message {turn} (assistant) renders as nothing before the next control token, so there is "
            "no text to train on as rendered",
        )
    return start, found.start()


def locate_turns(work: Work, prompts: ServingPrompts, cut: int | None) -> None:
    """``work.spans`` for every assistant turn in order, up to the first one past ``cut``."""
    prompts.settle()
    if cut is None:
        error = prompts.first_error()
        if error is not None:
            raise error
    for turn in work.turns:
        q, tail = prompts.get(turn)
        span = _locate_content(work, turn, q, tail, cut, prompts.info.added_split_re)
        if span is None:
            break
        work.spans.append(span)
