"""Serving-prompt tokens for rows with control-token lookalikes, derived from the full encoding.

Such a row's prompts are tokenized like ``encode_prompt`` does (only control tokens outside
contents are controls), which needs a sentinel rendering per prompt. For prefix-stable
templates the answer is derived from the conversation's own sentinel rendering instead,
keeping the work per turn proportional to the text since the last control token.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from core.masking import rendering
from core.masking.content_spans import Shadow, sentinel
from core.masking.lookalikes import segment_encode
from core.masking.reasons import MaskError
from core.masking.tokenizer_info import TokenizerInfo
from core.masking.work import Work


class ShadowPrompts:
    """Serving-prompt tokens for the turns of a lookalike row without a sentinel rendering per turn.

    ``encode_prompt`` tokenizes a prompt with only the control tokens outside message contents
    as controls, found by rendering the prompt with sentinels for the contents. For a
    prefix-stable template that sentinel rendering is, like the prompt, the full conversation's
    sentinel rendering up to where its loop reached the turn plus one generation prompt (taken
    from one exact sentinel rendering, of the anchor turn). When that generation prompt holds
    no sentinel and is the prompt's own, and the contents before the turn end where the
    rendering's loop reached it, the prompt's content spans are the full rendering's spans
    before that point. Its control tokens are then the full encoding's up to the last one that
    ends inside the prompt (the same text scanned over the same gaps), so the prompt tokenizes
    to the full encoding up to there plus the rest tokenized on its own: work per turn in the
    text since the last control token, not in the conversation. Where a condition fails,
    ``expected`` returns None and the turn's prompt is tokenized exactly as encode_prompt does.
    """

    def __init__(
        self, info: TokenizerInfo, work: Work, shadow: Shadow, control_ends: list[tuple[int, int]], bound: int | None
    ) -> None:
        self.info = info
        self.work = work
        self.shadow = shadow
        self.control_ends = control_ends
        self.ends = [end for end, _ in control_ends]
        self.limit = 0  # turns below it (and above bound) may be derived
        if info.segment_safe and bound is not None and work.positions is not None and shadow.positions is not None:
            self.limit = min(len(work.positions), len(shadow.positions))
        self.bound = -1 if bound is None else bound
        self.anchored = False
        self.tail: str | None = None  # the shadow's generation prompt
        self.span_starts = [a for _, a, _ in shadow.spans]
        # Over the spans in text order, prefix sums of: shadow-to-text offset, largest message index, assistants.
        self.shift, self.top, self.assistants = [0], [-1], [0]
        for j, a, b in shadow.spans:
            self.shift.append(self.shift[-1] + (b - a) - len(sentinel(j)))
            self.top.append(max(self.top[-1], j))
            self.assistants.append(self.assistants[-1] + (work.messages[j]["role"] == "assistant"))

    def _anchor(self, turn: int) -> None:
        """Take the shadow's generation prompt from one exact sentinel rendering of ``turn``'s prompt."""
        self.anchored = True
        marked = [{**m, "content": sentinel(j)} for j, m in enumerate(self.work.messages[:turn])]
        try:
            prompt, _ = rendering.render_one(self.info, marked, True, False)
        except MaskError:
            return  # every turn is tokenized exactly, which reports the error
        at = self.shadow.positions[turn]  # type: ignore[index]
        tail = prompt[at:]
        if len(prompt) >= at and self.shadow.text.startswith(prompt[:at]) and "\U000ffffd" not in tail:
            self.tail = tail

    def expected(self, k: int, turn: int, start: int) -> tuple[int, list[int]] | None:
        """``(keep, tail)`` for assistant turn ``k`` (message ``turn``, content at ``start``), or None."""
        if not self.bound < turn < self.limit:
            return None
        if not self.anchored:
            self._anchor(turn)
        tail = self.tail
        if tail is None:
            return None
        q = self.work.positions[turn]  # type: ignore[index]
        at = self.shadow.positions[turn]  # type: ignore[index]
        if q + len(tail) != start or not self.work.rendered.startswith(tail, q):
            return None
        n = bisect_left(self.shadow.starts, at)  # sentinels the prompt's shadow holds
        if n and self.shadow.starts[n - 1] + len(sentinel(self.shadow.spans[n - 1][0])) > at:
            return None
        if at + self.shift[n] != q or self.top[n] >= turn or self.assistants[n] != k:
            return None
        if n < len(self.span_starts) and self.span_starts[n] < start:
            return None
        c = bisect_right(self.ends, start) - 1
        cut, keep = self.control_ends[c] if c >= 0 else (0, 0)
        lo = bisect_left(self.span_starts, cut, 0, n)
        spans = [(j, a - cut, b - cut) for j, a, b in self.shadow.spans[lo:n]]
        return keep, segment_encode(self.info, self.work.rendered[cut:start], spans)[0]
