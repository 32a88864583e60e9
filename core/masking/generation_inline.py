"""A rewrite of the compiled chat template with its ``{% generation %}`` blocks inlined.

transformers finds the span of each generation block by re-joining everything rendered so
far, which dominates rendering for templates that mark their assistant turns. The rewrite
records the same spans with a mark object instead (see ``fast_generation_template``). It
is only used where rendering.render_plain's probe has shown it renders exactly what the
stock template renders; any doubt keeps the stock template.
"""

from __future__ import annotations

from typing import Any

from jinja2 import nodes as jinja_nodes

from core.masking.compiled_template import TracedMessages, render_compiled
from core.masking.reasons import MaskError
from core.masking.tokenizer_info import TokenizerInfo

_MARK_NAME = "_catalog_posttrain_generation_mark"  # a template variable no chat template would use


class _GenerationMark:
    """Rendered as ``{{ mark }}`` around each generation block: records the output length so far."""

    __slots__ = ("marks", "pos")

    def __init__(self) -> None:
        self.marks: list[int] = []
        self.pos = 0

    def __str__(self) -> str:
        self.marks.append(self.pos)
        return ""


def fast_generation_template(info: TokenizerInfo, compiled: Any) -> Any:
    """The chat template with each ``{% generation %}`` block inlined between two position marks.

    transformers runs a generation block as a call block: a macro for the body, a sandboxed
    call to its tracker, which finds the block's start by joining everything rendered so
    far, so each block costs time in the length of the output. Here the block's body runs in place (a jinja
    Scope, so ``{% set %}`` stays local as it does in the macro) between two outputs of a
    mark object that records the output length when rendered: the same text, and the same
    spans as the tracker. Only for blocks whose output goes straight to the rendering (at top
    level, in if blocks and non-recursive for loops), not nested, and not naming the macro
    variables caller/varargs/kwargs; otherwise (or on any doubt) None: the stock template.
    """
    if info.fast_template is not None:
        return info.fast_template or None
    fast: Any = False
    if info.has_generation:
        try:
            env = compiled.environment
            tree = env.parse(info.template)
            if _inline_generation_blocks(tree, direct=True):
                fast = env.template_class.from_code(env, env.compile(tree), compiled.globals, None)
        except Exception:  # any surprise in jinja's internals: keep the stock template
            fast = False
    info.fast_template = fast
    return fast or None


def _is_generation_block(node: Any) -> bool:
    """Whether ``node`` is a ``{% generation %}`` block, as transformers' extension parses it."""
    return (
        isinstance(node, jinja_nodes.CallBlock)
        and isinstance(node.call, jinja_nodes.Call)
        and isinstance(node.call.node, jinja_nodes.ExtensionAttribute)
        and node.call.node.name == "_generation_support"
    )


def _inline_generation_blocks(node: Any, *, direct: bool) -> bool:
    """Rewrite ``node``'s generation blocks in place; False where one cannot be inlined exactly."""
    for name in node.fields:
        value = getattr(node, name, None)
        children = value if isinstance(value, list) else [value]
        rewritten = []
        for child in children:
            if _is_generation_block(child):
                names = {n.name for n in child.find_all(jinja_nodes.Name)}
                nested = any(_is_generation_block(c) for c in child.find_all(jinja_nodes.CallBlock))
                if not direct or nested or names & {"caller", "varargs", "kwargs", _MARK_NAME}:
                    return False
                mark = jinja_nodes.Output([jinja_nodes.Name(_MARK_NAME, "load")], lineno=child.lineno)
                rewritten += [mark, jinja_nodes.Scope(child.body, lineno=child.lineno), mark]
                continue
            if isinstance(child, jinja_nodes.Node):
                keeps_direct = isinstance(child, (jinja_nodes.If, jinja_nodes.Output)) or (
                    isinstance(child, jinja_nodes.For) and not child.recursive
                )
                if not _inline_generation_blocks(child, direct=direct and keeps_direct):
                    return False
            rewritten.append(child)
        if isinstance(value, list):
            setattr(node, name, rewritten)
    return True


def render_fast(
    info: TokenizerInfo,
    compiled: Any,
    fast: Any,
    chats: list[list[dict[str, Any]]],
    add_generation_prompt: bool,
    spans: bool,
) -> list[tuple[str, list[tuple[int, int]] | None] | MaskError]:
    """Like ``render_compiled``, with ``fast`` (``fast_generation_template``'s rewrite) instead of ``compiled``.

    The spans come from the marks; a chat that fails is rendered again by ``compiled`` so its
    error reads exactly as the stock template's.
    """
    env = fast.environment
    template_globals = dict(fast.globals)
    mark = _GenerationMark()
    base = {**template_globals, **info.template_kwargs, "tools": None, "documents": None}
    base["add_generation_prompt"] = add_generation_prompt
    base[_MARK_NAME] = mark
    out: list[tuple[str, list[tuple[int, int]] | None] | MaskError] = []
    for chat in chats:
        mark.marks.clear()
        mark.pos = 0
        traced = type(chat) is TracedMessages
        try:
            if traced:
                chat.arm(mark)  # type: ignore[attr-defined]
            ctx = env.context_class(env, {**base, "messages": chat}, fast.name, fast.blocks, globals=template_globals)
            if spans or traced:
                blocks: list[str] = []
                for block in fast.root_render_func(ctx):
                    blocks.append(block)
                    mark.pos += len(block)
                if spans:
                    marks = mark.marks
                    if len(marks) % 2:
                        raise RuntimeError("unpaired generation marks")
                    out.append(("".join(blocks), list(zip(marks[::2], marks[1::2], strict=True))))
                else:
                    out.append((env.concat(blocks), None))
            else:
                out.append((env.concat(fast.root_render_func(ctx)), None))
        except Exception:  # errors are reported exactly as the stock template reports them
            out.extend(render_compiled(info, compiled, [chat], add_generation_prompt, spans))
        finally:
            if traced:
                chat.disarm()  # type: ignore[attr-defined]
    return out
