"""Rendering conversations with the tokenizer's chat template, one or a batch at a time.

Every rendering the encoder makes goes through ``render_one`` or ``render_many``. Other
modules call them through this module (``rendering.render_many(...)``), not as names
imported into their own namespace, so that this is the one place where rendering can be
observed or replaced: the tests count the rendering work per conversation here. A template
error is the conversation's own reject (``template_error``), never the batch's.
"""

from __future__ import annotations

from typing import Any

from transformers.utils.chat_template_utils import render_jinja_template

from core.masking.compiled_template import compile_jinja_template, render_compiled
from core.masking.generation_inline import fast_generation_template, render_fast
from core.masking.reasons import MaskError
from core.masking.tokenizer_info import TokenizerInfo

_FAST_CHECK_ROWS = 16  # chats rendered both ways before a mode trusts the inlined template


def render_one(info: TokenizerInfo, chat: list[dict[str, Any]], add_generation_prompt: bool, spans: bool):
    """One chat through transformers' render_jinja_template: (text, generation spans or None); raises MaskError."""
    try:
        rendered, indices = render_jinja_template(
            conversations=[chat],
            chat_template=info.template,
            return_assistant_tokens_mask=spans,
            add_generation_prompt=add_generation_prompt,
            **info.template_kwargs,
        )
    except Exception as exc:  # the template is user code: any failure is this conversation's
        raise MaskError("template_error", f"{type(exc).__name__}: {exc}") from exc
    return rendered[0], (indices[0] if spans else None)


def render_many(
    info: TokenizerInfo,
    chats: list[list[dict[str, Any]]],
    add_generation_prompt: bool,
    spans: bool,
    plain: bool = False,
) -> list[tuple[str, list[tuple[int, int]] | None] | MaskError]:
    """Render many chats; plain-string chats through ``_render_plain``, the others through transformers.

    Returns one item per chat, a MaskError in place of a chat the template fails on, so one
    bad chat costs only itself. ``plain``: the caller knows every chat is plain. A mixed
    batch is split, so one chat with extra message fields does not send the whole chunk
    down the slower path (nor lose the tracing of ``TracedMessages``).
    """
    if not chats:
        return []
    if compile_jinja_template is None:
        return _render_stock(info, chats, add_generation_prompt, spans)
    if plain:
        return _render_plain(info, chats, add_generation_prompt, spans)
    is_plain = [is_plain_chat(chat) for chat in chats]
    if all(is_plain):
        return _render_plain(info, chats, add_generation_prompt, spans)
    if not any(is_plain):
        return _render_stock(info, chats, add_generation_prompt, spans)
    out: list[tuple[str, list[tuple[int, int]] | None] | MaskError] = [MaskError("template_error")] * len(chats)
    for want in (True, False):
        picked = [k for k, p in enumerate(is_plain) if p is want]
        render = _render_plain if want else _render_stock
        for k, rendered in zip(
            picked, render(info, [chats[k] for k in picked], add_generation_prompt, spans), strict=True
        ):
            out[k] = rendered
    return out


def _render_stock(
    info: TokenizerInfo, chats: list[list[dict[str, Any]]], add_generation_prompt: bool, spans: bool
) -> list[tuple[str, list[tuple[int, int]] | None] | MaskError]:
    """transformers' render_jinja_template in one call; on a template error, one by one to blame the right one."""
    try:
        rendered, indices = render_jinja_template(
            conversations=chats,
            chat_template=info.template,
            return_assistant_tokens_mask=spans,
            add_generation_prompt=add_generation_prompt,
            **info.template_kwargs,
        )
        return [(r, indices[i] if spans else None) for i, r in enumerate(rendered)]
    except Exception:
        out: list[tuple[str, list[tuple[int, int]] | None] | MaskError] = []
        for chat in chats:
            try:
                out.append(render_one(info, chat, add_generation_prompt, spans))
            except MaskError as err:
                out.append(MaskError(err.reason, err.detail))  # not the raised one: its traceback would hold a cycle
        return out


def is_plain_chat(chat: list[dict[str, Any]]) -> bool:
    """Messages of exactly {role: str, content: str}: what render_jinja_template would pass on unchanged."""
    return all(len(m) == 2 and type(m.get("role")) is str and type(m.get("content")) is str for m in chat)


def _render_plain(
    info: TokenizerInfo, chats: list[list[dict[str, Any]]], add_generation_prompt: bool, spans: bool
) -> list[tuple[str, list[tuple[int, int]] | None] | MaskError]:
    """render_jinja_template's own rendering, minus its per-chat overheads, for plain-string messages.

    For such messages render_jinja_template's conversions (plain-data copies, reasoning-field
    aliases) are identities, so running the same compiled template on the same variables
    renders the same text. The context is what jinja's Template.new_context builds, made
    from a plain-dict snapshot of the template globals instead of re-reading jinja's ChainMap
    on every call. For short chats those overheads cost more than the rendering itself.
    Templates with ``{% generation %}`` blocks run as ``fast_generation_template``'s compile,
    once a probe of each (add_generation_prompt, spans) mode has shown it renders the same.
    """
    compiled = compile_jinja_template(info.template)
    fast = fast_generation_template(info, compiled)
    if fast is None:
        return render_compiled(info, compiled, chats, add_generation_prompt, spans)
    mode = (add_generation_prompt, spans)
    if mode not in info.fast_checked:
        probe = chats[:_FAST_CHECK_ROWS]
        stock = render_compiled(info, compiled, probe, add_generation_prompt, spans)
        if comparable(stock) != comparable(render_fast(info, compiled, fast, probe, add_generation_prompt, spans)):
            info.fast_template = False
            return render_compiled(info, compiled, chats, add_generation_prompt, spans)
        info.fast_checked.add(mode)
    return render_fast(info, compiled, fast, chats, add_generation_prompt, spans)


def comparable(rendered: list[Any]) -> list[Any]:
    """Renderings in a form that compares by value: MaskError compares by identity, its reason and detail do not."""
    return [(r.reason, r.detail) if isinstance(r, MaskError) else r for r in rendered]
