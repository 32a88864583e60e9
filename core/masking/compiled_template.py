"""Running transformers' compiled chat template directly, and tracing where its loop reaches each message.

For messages of plain role/content strings, transformers' render_jinja_template only adds
per-call overheads (plain-data copies, a jinja context rebuilt from a ChainMap), so running
the same compiled template on the same variables renders the same text for less. While
rendering, ``TracedMessages`` records how much had been output when the template's loop
reached each message: for a prefix-stable template that is where each turn's serving
prompt leaves the full rendering (see prefix_stability).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from core.masking.reasons import MaskError
from core.masking.tokenizer_info import TokenizerInfo

try:  # transformers' own compiled-template cache (the one render_jinja_template uses)
    from transformers.utils.chat_template_utils import _compile_jinja_template as compile_jinja_template
except ImportError:  # pragma: no cover - other transformers versions: always take the stock path
    compile_jinja_template = None


def render_compiled(
    info: TokenizerInfo, compiled: Any, chats: list[list[dict[str, Any]]], add_generation_prompt: bool, spans: bool
) -> list[tuple[str, list[tuple[int, int]] | None] | MaskError]:
    """``compiled`` run on each chat as render_jinja_template would run it, with one shared base context.

    ``spans`` records the ``{% generation %}`` spans with transformers' own tracker; a
    ``TracedMessages`` chat has its output length kept up to date for the trace.
    """
    env = compiled.environment
    template_globals = dict(compiled.globals)
    base = {**template_globals, **info.template_kwargs, "tools": None, "documents": None}
    base["add_generation_prompt"] = add_generation_prompt
    out: list[tuple[str, list[tuple[int, int]] | None] | MaskError] = []
    for chat in chats:
        counter = OutputLength() if type(chat) is TracedMessages else None
        try:
            if counter is not None:
                chat.arm(counter)  # type: ignore[attr-defined]
            ctx = env.context_class(
                env, {**base, "messages": chat}, compiled.name, compiled.blocks, globals=template_globals
            )
            if spans:
                blocks: list[str] = []
                indices: list[tuple[int, int]] = []
                with env.activate_tracker(blocks, indices):  # transformers' {% generation %} span tracker
                    for block in compiled.root_render_func(ctx):
                        blocks.append(block)
                        if counter is not None:
                            counter.pos += len(block)
                out.append(("".join(blocks), indices))
            elif counter is not None:
                blocks = []
                for block in compiled.root_render_func(ctx):
                    blocks.append(block)
                    counter.pos += len(block)
                out.append((env.concat(blocks), None))
            else:
                out.append((env.concat(compiled.root_render_func(ctx)), None))
        except Exception as exc:  # the template is user code: any failure is this conversation's
            out.append(MaskError("template_error", f"{type(exc).__name__}: {exc}"))
        finally:
            if counter is not None:
                chat.disarm()  # type: ignore[attr-defined]
    return out


class OutputLength:
    """How many characters a rendering has output so far (the renderer keeps ``pos`` up to date)."""

    __slots__ = ("pos",)

    def __init__(self) -> None:
        self.pos = 0


class TracedMessages(list):
    """A conversation's messages as handed to a prefix-stable template (see ``prefix_bound``).

    While a renderer has it armed, iterating it records for each message how many characters
    the template had output when its loop reached that message. For a prefix-stable template
    that is where the serving prompt of that message's turn leaves the full rendering: the
    prompt is ``rendered[:positions[t]]`` followed by the template's generation prompt.
    """

    __slots__ = ("counter", "passes", "positions")

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        super().__init__(messages)
        self.counter: Any = None
        self.positions: list[int] = []
        self.passes = 0

    def arm(self, counter: Any) -> None:
        self.counter = counter
        self.positions = []
        self.passes = 0

    def disarm(self) -> None:
        self.counter = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.counter is None:
            return list.__iter__(self)
        self.passes += 1
        self.positions = []
        return self._walk(self.counter, self.positions)

    def _walk(self, counter: Any, positions: list[int]) -> Iterator[dict[str, Any]]:
        for message in list.__iter__(self):
            positions.append(counter.pos)
            yield message
