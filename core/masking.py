"""Exact assistant-only loss masks from a tokenizer's own chat template.

DESIGN.md's loss-mask rule: ``loss_mask`` is 1 exactly on the tokens of each assistant
turn's content and on the end-of-turn token the template places right after it; 0 on
system/user turns, role headers and scaffolding. The tokenizer's chat template is the
single source of truth, for training shards and for serving prompts alike.

How a conversation is encoded (``encode_batch``):

1. Render it with the template and tokenize the rendering with the fast (Rust) tokenizer.
   Where a message contains text that looks like a control token (``"<|im_end|>"`` typed by
   a user), the rendering is instead split at the control tokens that lie *outside* message
   contents (located by rendering once more with private-use sentinels in place of each
   content) and the text in between is tokenized with special-token matching off, so
   content is always plain text. Without lookalikes both ways give the same ids.
2. Apply the length rule on those tokens before any per-turn work: with
   ``overlong="quarantine"`` a conversation longer than ``max_length`` is rejected
   (``too_long``) without rendering a single serving prompt; with ``"truncate"`` only the
   turns whose content starts before the cut are checked and masked below.
3. For every assistant turn ``i``, the serving prompt ``messages[:i]`` rendered with
   ``add_generation_prompt=True`` must be a string prefix of the full rendering and the
   turn's content must follow it verbatim; that pins the content's character span without
   trusting any marker. Templates that rewrite earlier turns, insert text between the
   generation prompt and the content, or alter the content are rejected here. Rendering
   every prompt costs time quadratic in the turns, so for templates whose syntax proves the
   prompts are prefixes (``_prefix_stable_bound``) the full rendering records where its
   loop reached each message and one exact prompt gives the generation prompt; other
   templates have each prompt rendered.
4. Map the content span to tokens with offset mappings. A token that straddles the
   content boundary means no exact mask exists: reject. The next token, when it is an
   added token, is the end-of-turn token and is masked too.
5. Check the serving prefix at the token level: the tokens of each turn's serving
   prompt must equal the full encoding up to the turn's first content token (no
   train/serve skew); only the text after the last control token before the content is
   tokenized per turn where the tokenizer allows it. For templates with
   ``{% generation %}`` markers, the masked character spans must also equal the marked spans.

Anything that cannot be made exact raises ``MaskError`` with a reason code from
``MASK_REASONS``; nothing is masked wrongly in silence. ``verify_masks`` and
``verify_serving_prefix`` re-check finished encodings by independent means (decoding,
and transformers' stock ``apply_chat_template``) for asset checks and tests.
"""

from __future__ import annotations

import gc
import json
import re
import threading
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import accumulate, chain
from typing import Any, Literal

from jinja2 import nodes as jinja_nodes
from tokenizers import Tokenizer
from transformers.utils.chat_template_utils import render_jinja_template

try:  # transformers' own compiled-template cache (the one render_jinja_template uses)
    from transformers.utils.chat_template_utils import _compile_jinja_template
except ImportError:  # pragma: no cover - other transformers versions: always take the stock path
    _compile_jinja_template = None

MASK_REASONS: dict[str, str] = {
    "invalid_messages": "the conversation is not a non-empty list of {'role': str, 'content': str} "
    "messages with non-empty content and a user/system turn before the first assistant turn",
    "no_assistant_turn": "the conversation has no assistant turn, so it carries no loss",
    "template_error": "the chat template raised while rendering the conversation",
    "serving_prefix_mismatch": "the serving prompt for an assistant turn (the turns before it rendered with "
    "add_generation_prompt=True) is not exactly the text before that turn's content in the full rendering: "
    "the template rewrites earlier turns or inserts text between the generation prompt and the content",
    "content_not_rendered": "a message's content does not appear in the rendering where the template puts it",
    "content_not_verbatim": "the template alters a message's content (e.g. trims or escapes it) or "
    "renders it more than once",
    "boundary_straddle": "a token spans the boundary between template text and assistant content, so no mask "
    "can be exact (e.g. content starting with whitespace that merges with the template's newline)",
    "token_prefix_mismatch": "the serving prompt's tokens differ from the training tokens before the "
    "assistant content, although the text matches (tokenizer merges across the boundary)",
    "generation_marker_mismatch": "the template's {% generation %} spans disagree with the content + "
    "end-of-turn spans derived from the serving prompts",
    "lookalike_unresolved": "text that looks like a control token still encodes to a control token inside "
    "message content",
    "too_long": "the encoded conversation is longer than max_length",
    "truncated_no_loss": "truncating to max_length left no assistant token to train on",
}


class MaskError(Exception):
    """A conversation for which no exact loss mask exists; ``reason`` is a MASK_REASONS code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in MASK_REASONS:
            raise ValueError(f"unknown mask reason {reason!r}; add it to MASK_REASONS")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class EncodedConversation:
    """One shard row's payload; ``truncated`` says max_length cut it (overlong="truncate")."""

    input_ids: list[int]
    loss_mask: list[int]
    truncated: bool = False


# --------------------------------------------------------------------------------------
# Per-tokenizer facts, computed once.


@dataclass
class _Info:
    template: str
    has_generation: bool
    template_kwargs: dict[str, str]
    added_ids: frozenset[int]
    special_ids: frozenset[int]
    special_by_text: dict[str, int]
    special_re: re.Pattern[str] | None
    prefixes: frozenset[str]  # proper prefixes of special tokens
    suffixes: frozenset[str]  # proper suffixes of special tokens
    prefix_tuple: tuple[str, ...]  # the same, for str.endswith / str.startswith
    suffix_tuple: tuple[str, ...]
    max_special_len: int
    plain: Tokenizer  # private copy: stock matching of added tokens, no post-processor
    textual: Tokenizer  # private copy: special tokens are encoded as plain text
    segment_safe: bool  # tokenization is independent per added-token segment
    added_by_text: dict[str, int] = field(default_factory=dict)  # every added token, special or not
    added_split_re: re.Pattern[str] | None = None  # leftmost-longest over added_by_text, as the tokenizer splits
    added_entries: dict[str, tuple[list[int], list[tuple[int, int]]]] = field(default_factory=dict)
    split_exact: bool = False  # splitting at added_split_re reproduces the tokenizer's own split (see _split_safe)
    split_checked: bool = False  # the split path was compared with whole-rendering tokenization once
    fast_template: Any = None  # _fast_generation_template's compile (None: not built yet, False: unusable)
    fast_checked: set[tuple[bool, bool]] = field(default_factory=set)  # (add_generation_prompt, spans) probed
    tail_cache: dict[str, list[int]] = field(default_factory=dict)
    prefix_checked: bool = False  # _prefix_bound has analysed the template
    prefix_bound: int | None = None  # its answer (None: render every serving prompt)


_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")
_INFO_CACHE: dict[int, tuple[Any, tuple[Any, ...], _Info]] = {}
_INFO_LOCK = threading.Lock()
_TAIL_CACHE_MAX = 4096
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _private_copy(backend: Tokenizer, *, text_only: bool) -> Tokenizer:
    """A copy of the Rust tokenizer that we configure freely.

    Toggling ``encode_special_tokens`` on the caller's tokenizer would race with other
    users of it (transformers itself flips it on every call), so we never touch it.
    The post-processor is dropped: with ``add_special_tokens=False`` it adds no ids, but
    some (``trim_offsets``) shrink offsets, which would hide boundary-straddling tokens.
    """
    copy = Tokenizer.from_str(backend.to_str())
    copy.post_processor = None
    copy.no_truncation()
    copy.no_padding()
    copy.encode_special_tokens = text_only
    return copy


def _segment_safe(config: dict[str, Any]) -> bool:
    """Whether tokenizing a prompt equals tokenizing its added-token segments separately.

    True for the usual byte-level tokenizers. Added tokens that strip neighbouring
    whitespace or only match whole words, and Metaspace's "first" prepend scheme, make
    a segment's tokens depend on its position; then prompts are tokenized in full.
    """
    for tok in config.get("added_tokens") or []:
        if tok.get("lstrip") or tok.get("rstrip") or tok.get("single_word"):
            return False

    def position_dependent(node: Any) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "Metaspace" and node.get("prepend_scheme", "always") == "first":
                return True
            return any(position_dependent(v) for v in node.values())
        if isinstance(node, list):
            return any(position_dependent(v) for v in node)
        return False

    return not position_dependent(config.get("pre_tokenizer")) and not position_dependent(config.get("normalizer"))


def _split_safe(config: dict[str, Any]) -> bool:
    """Whether one leftmost-longest regex over the added tokens splits text as the tokenizer does.

    The Rust tokenizer matches added tokens leftmost-longest in two passes: first the ones
    with ``normalized=False`` on the raw text, then the ``normalized=True`` ones on the
    normalized remainder. A single regex pass is the same when only one of the two kinds
    exists and, for the normalized kind, there is no normalizer. Segment safety (see
    ``_segment_safe``) is required on top, and checked where this is used.
    """
    tokens = config.get("added_tokens") or []
    if not tokens:
        return True
    kinds = {bool(tok.get("normalized")) for tok in tokens}
    return kinds == {False} or (kinds == {True} and config.get("normalizer") is None)


def _info(tokenizer: Any) -> _Info:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; loss masking needs offsets from a "
            "tokenizers-backed tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))"
        )
    try:
        template = tokenizer.get_chat_template()
    except ValueError as exc:
        raise ValueError(
            f"the tokenizer has no usable chat template ({exc}); set tokenizer.chat_template or train "
            "one with core.tokenizer_training.train_bpe_tokenizer"
        ) from exc
    key = (len(tokenizer), template, tuple(sorted(tokenizer.special_tokens_map.items())))
    with _INFO_LOCK:
        cached = _INFO_CACHE.get(id(tokenizer))
        if cached is not None and cached[0]() is tokenizer and cached[1] == key:
            return cached[2]

    added = tokenizer.added_tokens_decoder
    specials = {tok.content: idx for idx, tok in added.items() if tok.special}
    config = json.loads(backend.to_str())
    added_by_text = {tok["content"]: tok["id"] for tok in config.get("added_tokens") or []}
    texts = sorted(specials, key=len, reverse=True)
    info = _Info(
        template=template,
        has_generation=bool(_GENERATION_RE.search(template)),
        template_kwargs=dict(tokenizer.special_tokens_map),
        added_ids=frozenset(added),
        special_ids=frozenset(specials.values()),
        special_by_text=specials,
        special_re=re.compile("|".join(re.escape(t) for t in texts)) if texts else None,
        prefixes=frozenset(t[:k] for t in texts for k in range(1, len(t))),
        suffixes=frozenset(t[k:] for t in texts for k in range(1, len(t))),
        prefix_tuple=tuple(sorted({t[:k] for t in texts for k in range(1, len(t))})),
        suffix_tuple=tuple(sorted({t[k:] for t in texts for k in range(1, len(t))})),
        max_special_len=max((len(t) for t in texts), default=0),
        plain=_private_copy(backend, text_only=False),
        textual=_private_copy(backend, text_only=True),
        segment_safe=_segment_safe(config),
        added_by_text=added_by_text,
        added_split_re=re.compile(
            "(" + "|".join(re.escape(t) for t in sorted(added_by_text, key=len, reverse=True)) + ")"
        )
        if added_by_text
        else None,
        added_entries={"": ([], []), **{t: ([i], [(0, len(t))]) for t, i in added_by_text.items()}},
        split_exact=_split_safe(config),
    )
    ident = id(tokenizer)
    try:
        ref = weakref.ref(tokenizer, lambda _: _INFO_CACHE.pop(ident, None))
    except TypeError:  # not weak-referenceable: just don't cache
        return info
    with _INFO_LOCK:
        _INFO_CACHE[ident] = (ref, key, info)
    return info


# --------------------------------------------------------------------------------------
# Input validation and rendering.


def _validate(messages: Any, *, need_assistant: bool) -> list[dict[str, Any]]:
    """Plain dict copies of ``messages``; MaskError("invalid_messages") naming the bad message."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or len(messages) == 0:
        raise MaskError(
            "invalid_messages",
            f"expected a non-empty list of {{'role', 'content'}} dicts, got {type(messages).__name__}",
        )
    out = []
    for j, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise MaskError("invalid_messages", f"message {j} is a {type(message).__name__}, not a dict")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise MaskError(
                "invalid_messages",
                f"message {j} needs string 'role' and 'content', got role={role!r}, "
                f"content of type {type(content).__name__}",
            )
        if not content:
            raise MaskError("invalid_messages", f"message {j} ({role}) has empty content")
        if not (content.isascii() and role.isascii()) and (_SURROGATE_RE.search(content) or _SURROGATE_RE.search(role)):
            raise MaskError(
                "invalid_messages",
                f"message {j} ({role[:20]!r}) holds lone surrogates, which are not valid text",
            )
        out.append(dict(message))
    if need_assistant:
        if not any(m["role"] == "assistant" for m in out):
            raise MaskError("no_assistant_turn", f"roles are {[m['role'] for m in out]}; nothing to train on")
        if out[0]["role"] == "assistant":
            raise MaskError(
                "invalid_messages",
                "the conversation starts with an assistant turn, which has no prompt to be served from; "
                "start it with a user (or system) turn",
            )
    return out


def _render_one(info: _Info, chat: list[dict[str, Any]], add_generation_prompt: bool, spans: bool):
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


def _render_many(
    info: _Info, chats: list[list[dict[str, Any]]], add_generation_prompt: bool, spans: bool, plain: bool = False
) -> list[tuple[str, list[tuple[int, int]] | None] | MaskError]:
    """Render many chats; plain-string chats through ``_render_plain``, the others through transformers.

    A mixed batch is split, so one chat with extra message fields does not send the whole
    chunk down the slower path (nor lose the tracing of ``_TracedMessages``).
    """
    if not chats:
        return []
    if _compile_jinja_template is None:
        return _render_stock(info, chats, add_generation_prompt, spans)
    if plain:
        return _render_plain(info, chats, add_generation_prompt, spans)
    is_plain = [_is_plain_chat(chat) for chat in chats]
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
    info: _Info, chats: list[list[dict[str, Any]]], add_generation_prompt: bool, spans: bool
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
                out.append(_render_one(info, chat, add_generation_prompt, spans))
            except MaskError as err:
                out.append(MaskError(err.reason, err.detail))  # not the raised one: its traceback would hold a cycle
        return out


def _is_plain_chat(chat: list[dict[str, Any]]) -> bool:
    """Messages of exactly {role: str, content: str}: what render_jinja_template would pass on unchanged."""
    return all(len(m) == 2 and type(m.get("role")) is str and type(m.get("content")) is str for m in chat)


def _render_plain(
    info: _Info, chats: list[list[dict[str, Any]]], add_generation_prompt: bool, spans: bool
) -> list[tuple[str, list[tuple[int, int]] | None] | MaskError]:
    """render_jinja_template's own rendering, minus its per-chat overheads, for plain-string messages.

    For such messages render_jinja_template's conversions (plain-data copies, reasoning-field
    aliases) are identities, so running the same compiled template on the same variables
    renders the same text. The context is what jinja's Template.new_context builds, made
    from a plain-dict snapshot of the template globals instead of re-reading jinja's ChainMap
    on every call. Together these were half of tokenize_shards' time on short chats.
    Templates with ``{% generation %}`` blocks run as ``_fast_generation_template``'s compile,
    once a probe of each (add_generation_prompt, spans) mode has shown it renders the same.
    """
    compiled = _compile_jinja_template(info.template)
    fast = _fast_generation_template(info, compiled)
    if fast is None:
        return _render_compiled(info, compiled, chats, add_generation_prompt, spans)
    mode = (add_generation_prompt, spans)
    if mode not in info.fast_checked:
        probe = chats[:_FAST_CHECK_ROWS]
        stock = _render_compiled(info, compiled, probe, add_generation_prompt, spans)
        if _comparable(stock) != _comparable(_render_fast(info, compiled, fast, probe, add_generation_prompt, spans)):
            info.fast_template = False
            return _render_compiled(info, compiled, chats, add_generation_prompt, spans)
        info.fast_checked.add(mode)
    return _render_fast(info, compiled, fast, chats, add_generation_prompt, spans)


def _render_compiled(
    info: _Info, compiled: Any, chats: list[list[dict[str, Any]]], add_generation_prompt: bool, spans: bool
) -> list[tuple[str, list[tuple[int, int]] | None] | MaskError]:
    env = compiled.environment
    template_globals = dict(compiled.globals)
    base = {**template_globals, **info.template_kwargs, "tools": None, "documents": None}
    base["add_generation_prompt"] = add_generation_prompt
    out: list[tuple[str, list[tuple[int, int]] | None] | MaskError] = []
    for chat in chats:
        counter = _OutputLength() if type(chat) is _TracedMessages else None
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


_FAST_CHECK_ROWS = 16
_MARK_NAME = "_catalog_posttrain_generation_mark"


class _GenerationMark:
    """Rendered as ``{{ mark }}`` around each generation block: records the output length so far."""

    __slots__ = ("marks", "pos")

    def __init__(self) -> None:
        self.marks: list[int] = []
        self.pos = 0

    def __str__(self) -> str:
        self.marks.append(self.pos)
        return ""


def _fast_generation_template(info: _Info, compiled: Any) -> Any:
    """The chat template with each ``{% generation %}`` block inlined between two position marks.

    transformers runs a generation block as a call block: a macro for the body, a sandboxed
    call to its tracker, which finds the block's start by joining everything rendered so
    far. That was half of the rendering time. Here the block's body runs in place (a jinja
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


def _render_fast(
    info: _Info,
    compiled: Any,
    fast: Any,
    chats: list[list[dict[str, Any]]],
    add_generation_prompt: bool,
    spans: bool,
) -> list[tuple[str, list[tuple[int, int]] | None] | MaskError]:
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
        traced = type(chat) is _TracedMessages
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
            out.extend(_render_compiled(info, compiled, [chat], add_generation_prompt, spans))
        finally:
            if traced:
                chat.disarm()  # type: ignore[attr-defined]
    return out


class _OutputLength:
    """How many characters a rendering has output so far (the renderer keeps ``pos`` up to date)."""

    __slots__ = ("pos",)

    def __init__(self) -> None:
        self.pos = 0


class _TracedMessages(list):
    """A conversation's messages as handed to a prefix-stable template (see ``_prefix_bound``).

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


# --------------------------------------------------------------------------------------
# Prefix stability: when every serving prompt is a prefix of the full rendering by construction.

_PREFIX_SAFE_LOOP_ATTRS = frozenset({"index", "index0", "first", "previtem", "changed", "cycle", "depth", "depth0"})
_PREFIX_UNSAFE_NODES = (
    jinja_nodes.Extends,
    jinja_nodes.Include,
    jinja_nodes.Import,
    jinja_nodes.FromImport,
    jinja_nodes.Block,
)


def _prefix_bound(info: _Info) -> int | None:
    """``_prefix_stable_bound`` of the tokenizer's template, worked out once per tokenizer."""
    if not info.prefix_checked:
        bound = None
        if _compile_jinja_template is not None:
            try:
                env = _compile_jinja_template(info.template).environment
                bound = _prefix_stable_bound(env.parse(info.template))
            except Exception:  # anything jinja does not parse as we expect: render every prompt
                bound = None
        info.prefix_bound = bound
        info.prefix_checked = True
    return info.prefix_bound


def _walk_names(node: Any, ancestors: list[Any]) -> Iterator[tuple[Any, list[Any]]]:
    """Every Name node under ``node`` with its ancestors (outermost first)."""
    if isinstance(node, jinja_nodes.Name):
        yield node, ancestors
        return
    ancestors.append(node)
    for child in node.iter_child_nodes():
        yield from _walk_names(child, ancestors)
    ancestors.pop()


def _truth_tested(node: Any, ancestors: list[Any]) -> bool:
    """Whether only the truth value of ``node`` is used: it is an if/for test, possibly under and/or/not."""
    child = node
    for parent in reversed(ancestors):
        if isinstance(parent, (jinja_nodes.And, jinja_nodes.Or, jinja_nodes.Not)):
            child = parent
            continue
        return isinstance(parent, (jinja_nodes.If, jinja_nodes.CondExpr, jinja_nodes.For)) and parent.test is child
    return False


def _prefix_stable_bound(tree: Any) -> int | None:
    """``b`` such that, for every ``t > b``, rendering ``messages[:t]`` with the generation prompt gives
    ``rendering[:p] + G``: the full rendering up to where its loop reached message ``t``, then a text
    ``G`` that is the same for every such ``t``. None when the template's structure does not prove it.

    Proved from the template's syntax, not from sample output, so no conversation can break it:
    the template's top level is ``pre; for ... in messages; post`` with one loop over ``messages``
    (not recursive, no ``else``), and ``messages`` is read nowhere else except as ``messages[k]``
    with a constant ``k >= 0`` (``b`` is the largest such ``k``) or for its truth value. Loop bodies
    may use ``loop.index``/``first``/``previtem``/``changed``/``cycle``/``depth`` but never what
    needs later messages (``loop.last``, ``length``, ``revindex``, ``nextitem``).
    ``add_generation_prompt`` is read only in ``post``, and ``post`` reads no variable the template
    assigns anywhere (so nothing the loop computed). Then the run over ``messages[:t]`` does exactly
    what the run over all messages does until its loop asks for message ``t``; there it leaves the
    loop and runs ``post``, whose output depends on nothing that differs between such ``t``.
    Templates that rewrite earlier turns (strip reasoning from all but the last turn, number turns
    from the end, ...) need later messages and fail these rules: their prompts are rendered one by one.
    """
    body = list(tree.body)
    loops = [
        k
        for k, node in enumerate(body)
        if isinstance(node, jinja_nodes.For)
        and isinstance(node.iter, jinja_nodes.Name)
        and node.iter.name == "messages"
    ]
    if len(loops) != 1:
        return None
    where = loops[0]
    loop = body[where]
    if loop.recursive or loop.else_:
        return None
    if any(True for _ in tree.find_all(_PREFIX_UNSAFE_NODES)):
        return None
    stored = {n.name for n in tree.find_all(jinja_nodes.Name) if n.ctx in ("store", "param")}
    stored |= {n.name for n in tree.find_all(jinja_nodes.NSRef)}
    stored |= {n.name for n in tree.find_all(jinja_nodes.Macro)}
    if stored & {"messages", "loop", "add_generation_prompt", "self"}:
        return None
    bound = -1
    for position, statement in enumerate(body):
        for name, ancestors in _walk_names(statement, []):
            if name.ctx != "load":
                continue
            parent = ancestors[-1] if ancestors else None
            if name.name == "messages":
                if name is loop.iter:
                    continue
                if (
                    isinstance(parent, jinja_nodes.Getitem)
                    and parent.node is name
                    and isinstance(parent.arg, jinja_nodes.Const)
                    and type(parent.arg.value) is int
                    and parent.arg.value >= 0
                ):
                    bound = max(bound, parent.arg.value)
                    continue
                if _truth_tested(name, ancestors):
                    continue
                return None
            if name.name == "loop":
                if (
                    isinstance(parent, jinja_nodes.Getattr)
                    and parent.node is name
                    and parent.attr in _PREFIX_SAFE_LOOP_ATTRS
                ):
                    continue
                return None
            if name.name == "self":
                return None
            if name.name == "add_generation_prompt" and position <= where:
                return None
            if position > where and name.name in stored:
                return None
    return bound


def _comparable(rendered: list[Any]) -> list[Any]:
    return [(r.reason, r.detail) if isinstance(r, MaskError) else r for r in rendered]


# --------------------------------------------------------------------------------------
# Lookalikes and the segment tokenizer.


def _content_has_lookalike(info: _Info, content: str) -> bool:
    """Whether ``content`` contains a special token's text, or could form one with its neighbours.

    Besides whole occurrences this flags content that starts with a proper suffix or ends
    with a proper prefix of a special token, or lies inside one, since template text next
    to it could complete the token. Erring on the side of True only costs speed.
    """
    if info.special_re is None:
        return False
    if info.special_re.search(content):
        return True
    # Every proper prefix/suffix is shorter than max_special_len, so this is "some k-long end is one".
    if content.endswith(info.prefix_tuple) or content.startswith(info.suffix_tuple):
        return True
    return len(content) < info.max_special_len and any(content in t for t in info.special_by_text)


def has_special_token_lookalike(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> bool:
    """True if any message's content could be read as a control (special) token by a stock tokenizer."""
    info = _info(tokenizer)
    return any(
        isinstance(m, Mapping) and isinstance(m.get("content"), str) and _content_has_lookalike(info, m["content"])
        for m in messages
    )


def _sentinel(j: int) -> str:
    # Private-use characters (plane 15): never produced by a template, and only ever
    # compared against the sentinel rendering, which holds no user text.
    return "\U000ffffd" + chr(0xF0000 + j) + "\U000ffffd"


_SENTINEL_RE = re.compile("(?=\U000ffffd([\U000f0000-\U000ffffc])\U000ffffd)")  # overlapping: see _count_apart


def _count_apart(starts: list[int], width: int) -> int:
    """How many of the (sorted) match starts str.count would count: leftmost first, never overlapping."""
    count, free = 0, -1
    for at in starts:
        if at >= free:
            count += 1
            free = at + width
    return count


def _content_spans(
    info: _Info, messages: list[dict[str, Any]], rendered: str, add_generation_prompt: bool
) -> list[tuple[int, int, int]]:
    """(message index, start, end) of every rendered content in ``rendered``, in text order.

    Renders once more with a unique sentinel in place of each content, then checks that
    putting the contents back reproduces ``rendered`` exactly, so the spans are proven.
    """
    return _shadow_spans(info, messages, rendered, add_generation_prompt).spans


@dataclass
class _Shadow:
    """``_content_spans`` with what the sentinel rendering (the shadow) showed on the way."""

    spans: list[tuple[int, int, int]]  # (message index, start, end) in ``rendered``, in text order
    starts: list[int]  # where each span's sentinel is in the shadow
    text: str = ""  # the shadow
    positions: list[int] | None = None  # traced shadow: output length when the loop reached each message


def _shadow_spans(
    info: _Info, messages: list[dict[str, Any]], rendered: str, add_generation_prompt: bool, traced: bool = False
) -> _Shadow:
    """``_content_spans``; ``traced`` renders the shadow through ``_TracedMessages`` (plain chats only)."""
    if len(messages) >= 0xFFFD:
        raise MaskError("invalid_messages", f"{len(messages)} messages is more than sentinel rendering supports")
    marked = [{**m, "content": _sentinel(j)} for j, m in enumerate(messages)]
    positions = None
    if traced:
        chat = _TracedMessages(marked)
        got = _render_many(info, [chat], add_generation_prompt, False)[0]
        if isinstance(got, MaskError):
            raise MaskError(got.reason, got.detail)
        shadow = got[0]
        positions = chat.positions if chat.passes == 1 else None
    else:
        shadow, _ = _render_one(info, marked, add_generation_prompt, False)
    # Every sentinel occurrence in one scan (a search per message would be quadratic in the turns).
    occurrences: dict[int, list[int]] = {}
    for hit in _SENTINEL_RE.finditer(shadow):
        occurrences.setdefault(ord(hit.group(1)) - 0xF0000, []).append(hit.start())
    found: list[tuple[int, int]] = []
    for j, m in enumerate(messages):
        starts = occurrences.get(j, [])
        count = _count_apart(starts, 3)  # as str.count(_sentinel(j)) counts: without overlaps
        if count > 1:
            raise MaskError(
                "content_not_verbatim", f"message {j} ({m['role']}) is rendered {count} times by the template"
            )
        if count == 1:
            found.append((starts[0], j))
        elif m["role"] == "assistant":
            raise MaskError("content_not_rendered", f"message {j} (assistant) does not appear in the rendering")
    found.sort()
    pieces: list[str] = []
    spans: list[tuple[int, int, int]] = []
    pos = out_len = 0
    for at, j in found:
        pieces.append(shadow[pos:at])
        out_len += at - pos
        content = messages[j]["content"]
        spans.append((j, out_len, out_len + len(content)))
        pieces.append(content)
        out_len += len(content)
        pos = at + len(_sentinel(j))
    pieces.append(shadow[pos:])
    if "".join(pieces) != rendered:
        raise MaskError(
            "content_not_verbatim",
            "the template renders some content differently from the message text (e.g. trims, escapes or "
            "inspects it); rendering with the contents swapped out does not reproduce the rendering",
        )
    return _Shadow(spans, [at for at, _ in found], shadow, positions)


def _segment_encode(
    info: _Info,
    text: str,
    content_spans: Sequence[tuple[int, int, int]],
    control_ends: list[tuple[int, int]] | None = None,
) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenize ``text`` treating only control tokens outside message contents as control tokens.

    ``control_ends`` receives (character end, tokens so far) for each control token.
    """
    controls: list[tuple[int, int]] = []
    if info.special_re is not None:
        gap_start = 0
        for _, start, end in [*content_spans, (-1, len(text), len(text))]:
            controls.extend((m.start(), m.end()) for m in info.special_re.finditer(text, gap_start, start))
            gap_start = end
    # Ordered items: (start, end, text piece, None) or (start, end, None, control token id).
    items: list[tuple[int, int, str | None, int | None]] = []
    pos = 0
    for start, end in controls:
        if start > pos:
            items.append((pos, start, text[pos:start], None))
        items.append((start, end, None, info.special_by_text[text[start:end]]))
        pos = end
    if pos < len(text):
        items.append((pos, len(text), text[pos:], None))
    pieces = [piece for _, _, piece, _ in items if piece is not None]
    encodings = iter(info.textual.encode_batch(pieces, add_special_tokens=False))
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for start, end, _piece, control in items:
        if control is not None:
            ids.append(control)
            offsets.append((start, end))
            if control_ends is not None:
                control_ends.append((end, len(ids)))
            continue
        enc = next(encodings)
        ids.extend(enc.ids)
        offsets.extend((a + start, b + start) for a, b in enc.offsets)
    return ids, offsets


def _encode_prompt_text(info: _Info, messages: list[dict[str, Any]]) -> list[int]:
    prompt, _ = _render_one(info, messages, True, False)
    return _prompt_ids(info, messages, prompt)


def _prompt_ids(info: _Info, messages: list[dict[str, Any]], prompt: str) -> list[int]:
    """The serving path's tokens for ``prompt``, which is ``messages`` rendered with the generation prompt."""
    if any(_content_has_lookalike(info, m["content"]) for m in messages):
        return _segment_encode(info, prompt, _content_spans(info, messages, prompt, True))[0]
    return info.plain.encode(prompt, add_special_tokens=False).ids


def encode_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """The serving path: token ids of ``messages`` rendered with ``add_generation_prompt=True``.

    Tokenized exactly as training does, so a served prompt is token-for-token the prefix
    the model was trained on; text that looks like a control token stays plain text.
    Raises MaskError when the messages are malformed or the template fails.
    """
    info = _info(tokenizer)
    return _encode_prompt_text(info, _validate(messages, need_assistant=False))


# --------------------------------------------------------------------------------------
# Training encodings.


@dataclass
class _Work:
    index: int
    messages: list[dict[str, Any]]
    turns: list[int]  # message indices of assistant turns
    rendered: str = ""
    gen_spans: list[tuple[int, int]] | None = None
    positions: list[int] | None = None  # _TracedMessages.positions of the rendering (prefix-stable templates)
    spans: list[tuple[int, int]] = field(default_factory=list)  # content spans of the turns checked, in order
    lookalike: bool = False
    plain: bool = False  # _is_plain_chat(messages): so are its prompts, slices of it


class _Prompts:
    """The serving prompt of each assistant turn of one conversation, as ``(q, tail)``: ``rendered[:q] + tail``.

    For a prefix-stable template (``_prefix_bound``) the prompt of message ``t`` is the full
    rendering up to ``positions[t]`` followed by the generation prompt, which one exact rendering
    (of the first such turn, the anchor) yields: one prompt rendering per conversation instead of
    one per turn, each over all earlier turns (quadratic in the turns), and no prompt string is
    built. Other turns (all of them for other templates) are rendered exactly: ahead of time in
    the chunk's batch, or on demand in turn order for conversations that truncation cuts, where
    the turns past the cut are never rendered.
    """

    __slots__ = ("anchor", "derivable", "exact", "info", "tail", "work")

    def __init__(self, info: _Info, work: _Work, bound: int | None) -> None:
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
        if turn in self.derivable and turn != self.anchor:
            anchor = self.exact[self.anchor]  # type: ignore[index]
            if isinstance(anchor, MaskError):  # the generation prompt fails the same way for every such turn
                raise MaskError(anchor.reason, anchor.detail)
            if self.tail is not None:
                return self.work.positions[turn], self.tail  # type: ignore[index]
        got = self.exact.get(turn)
        if got is None:
            got = _render_many(self.info, [self.work.messages[:turn]], True, False, self.work.plain)[0]
            self.exact[turn] = got
        if isinstance(got, MaskError):
            raise MaskError(got.reason, got.detail)
        return 0, got[0]


def _locate_content(work: _Work, turn: int, q: int, tail: str, cut: int | None) -> tuple[int, int] | None:
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
    stripped = content.strip()
    if stripped != content and text.startswith(stripped, start):
        raise MaskError(
            "content_not_verbatim",
            f"message {turn} (assistant) is rendered as {stripped[:40]!r}, not verbatim as "
            f"{content[:40]!r}; the template strips surrounding whitespace",
        )
    if content in text[start:]:
        gap = text[start : text.index(content, start)]
        raise MaskError(
            "serving_prefix_mismatch",
            f"the template puts {gap[:60]!r} between the generation prompt and message {turn}'s content, "
            "which the model would have to generate unprompted at serving time",
        )
    raise MaskError("content_not_rendered", f"message {turn} (assistant) content does not follow its serving prompt")


def _locate_turns(work: _Work, prompts: _Prompts, cut: int | None) -> None:
    """``work.spans`` for every assistant turn in order, up to the first one past ``cut``."""
    prompts.settle()
    if cut is None:
        error = prompts.first_error()
        if error is not None:
            raise error
    for turn in work.turns:
        q, tail = prompts.get(turn)
        span = _locate_content(work, turn, q, tail, cut)
        if span is None:
            break
        work.spans.append(span)


class _TokenOffsets:
    """The character offsets of one rendering's tokens, kept per separately tokenized piece.

    Segment-deduplicated tokenization reuses one segment's encoding (offsets relative to the
    segment) in every rendering that holds it, so offsets are never shifted, copied or even
    converted to Python token by token: that would cost about as much as the tokenization
    saved. A piece is a list of (start, end) pairs or a tokenizers ``Encoding`` read one
    token at a time. Lookups find the piece, then the token in it, and answer exactly what
    indexing or ``bisect_left`` on the flat list of (start, end) pairs would, since token
    offsets run in text order and lie inside their piece.
    """

    __slots__ = ("char_bases", "n", "pieces", "tok_bases")

    def __init__(self, pieces: list[Any], char_bases: list[int], tok_bases: list[int]) -> None:
        # pieces[p] starts at character char_bases[p] and token tok_bases[p]; both lists end with the totals.
        self.pieces = pieces
        self.char_bases = char_bases
        self.tok_bases = tok_bases
        self.n = tok_bases[-1]

    @classmethod
    def flat(cls, offsets: list[tuple[int, int]]) -> _TokenOffsets:
        return cls([offsets], [0, offsets[-1][1] if offsets else 0], [0, len(offsets)])

    def first_from(self, char: int) -> int:
        """``bisect_left(starts, char)``: the first token starting at or after ``char`` (n if none)."""
        pieces = self.pieces
        if len(pieces) == 1:
            return _first_from(pieces[0], char - self.char_bases[0], self.char_bases[1] - self.char_bases[0])
        q = bisect_right(self.char_bases, char) - 1
        if q >= len(pieces):
            return self.n
        base = self.char_bases[q]
        local = _first_from(pieces[q], char - base, self.char_bases[q + 1] - base)
        return self.tok_bases[q] + local

    def start(self, k: int) -> int:
        p = bisect_right(self.tok_bases, k) - 1
        return _pair(self.pieces[p], k - self.tok_bases[p])[0] + self.char_bases[p]

    def end(self, k: int) -> int:
        p = bisect_right(self.tok_bases, k) - 1
        return _pair(self.pieces[p], k - self.tok_bases[p])[1] + self.char_bases[p]

    def pairs(self) -> list[tuple[int, int]]:
        """The flat (start, end) list (for checks, not the hot path)."""
        return [
            (a + base, b + base)
            for base, piece in zip(self.char_bases, self.pieces, strict=False)
            for a, b in (piece if type(piece) is list else piece.offsets)
        ]


_SCAN_LIMIT = 24  # tokens read one by one from an Encoding before converting all its offsets


def _pair(piece: Any, k: int) -> tuple[int, int]:
    return piece[k] if type(piece) is list else piece.token_to_chars(k)


def _start_of(pair: tuple[int, int]) -> int:
    return pair[0]


def _first_from(piece: Any, char: int, length: int) -> int:
    """``bisect_left`` over one piece's token starts; an Encoding is scanned from its nearer end."""
    if type(piece) is list:
        return bisect_left(piece, char, key=_start_of)
    n = len(piece)
    if 2 * char <= length:
        k = 0
        while k < n and k < _SCAN_LIMIT and piece.token_to_chars(k)[0] < char:
            k += 1
        if k < _SCAN_LIMIT:
            return k
    else:
        k = n
        while k > 0 and n - k < _SCAN_LIMIT and piece.token_to_chars(k - 1)[0] >= char:
            k -= 1
        if n - k < _SCAN_LIMIT:
            return k
    return bisect_left(piece.offsets, char, key=_start_of)


def _token_span(offsets: _TokenOffsets, start: int, end: int, turn: int, rendered: str) -> tuple[int, int]:
    """Token index range [first, stop) covering exactly the characters [start, end)."""
    n = offsets.n
    first = offsets.first_from(start)
    stop = offsets.first_from(end)
    if first >= n or offsets.start(first) != start or (first > 0 and offsets.end(first - 1) > start):
        around = rendered[max(0, start - 10) : start + 10]
        raise MaskError(
            "boundary_straddle",
            f"no token boundary where message {turn}'s content starts (text around it: {around!r}); a token "
            "merges template text with content",
        )
    if stop <= first or offsets.end(stop - 1) != end:
        around = rendered[max(0, end - 10) : end + 10]
        raise MaskError(
            "boundary_straddle",
            f"no token boundary where message {turn}'s content ends (text around it: {around!r})",
        )
    return first, stop


def _finish(
    info: _Info,
    work: _Work,
    ids: list[int],
    offsets: _TokenOffsets,
    prompt_ids: list[tuple[int, list[int]]] | None,
    cut: int | None = None,
) -> tuple[list[int], list[int]]:
    """The loss mask of the checked turns (``work.spans``), with the token-level serving-prefix check.

    ``prompt_ids[k]`` is ``(keep, tail)``: turn k's serving prompt tokenizes to ``ids[:keep] + tail``;
    None: a segment-safe tokenizer, for which the tail after the last added token is tokenized here.

    ``cut``: the character where truncation will cut; the generation-marker comparison covers the text before it.
    """
    mask = [0] * len(ids)
    masked_chars: list[tuple[int, int]] = []
    for k, (turn, (start, end)) in enumerate(zip(work.turns, work.spans, strict=False)):
        first, stop = _token_span(offsets, start, end, turn, work.rendered)
        if not info.special_ids.isdisjoint(ids[first:stop]):
            t = next(t for t in range(first, stop) if ids[t] in info.special_ids)
            raise MaskError(
                "lookalike_unresolved",
                f"message {turn}'s content encodes to control token id {ids[t]} at token {t}",
            )
        char_end = end
        if stop < len(ids) and ids[stop] in info.added_ids and offsets.start(stop) == end:
            char_end = offsets.end(stop)
            stop += 1
        mask[first:stop] = [1] * (stop - first)
        masked_chars.append((start, char_end))

        # Serving prefix at the token level.
        if prompt_ids is not None:
            keep, tail_ids = prompt_ids[k]  # the prompt's tokens are ids[:keep] + tail_ids
            if keep > first or ids[keep:first] != tail_ids:
                _raise_token_mismatch(turn, ids[:first], ids[:keep] + tail_ids)
        else:
            # Segment-safe tokenizer: the prompt's tokens are ours up to the last added
            # token before the content, then the text after it tokenized on its own.
            last = first - 1
            while last >= 0 and ids[last] not in info.added_ids:
                last -= 1
            tail = work.rendered[(offsets.end(last) if last >= 0 else 0) : start]
            tail_ids = info.tail_cache.get(tail)
            if tail_ids is None:
                tail_ids = info.plain.encode(tail, add_special_tokens=False).ids
                if len(info.tail_cache) >= _TAIL_CACHE_MAX:
                    info.tail_cache.clear()
                info.tail_cache[tail] = tail_ids
            if ids[last + 1 : first] != tail_ids:
                _raise_token_mismatch(turn, ids[:first], ids[: last + 1] + tail_ids)

    if work.gen_spans is not None:
        marked = _merge_spans(work.gen_spans)
        implied = _merge_spans(masked_chars)
        if cut is not None:
            marked, implied = _clip_spans(marked, cut), _clip_spans(implied, cut)
        if marked != implied:
            at = next((k for k, (a, b) in enumerate(zip(marked, implied, strict=False)) if a != b), None)
            at = min(len(marked), len(implied)) if at is None else at
            raise MaskError(
                "generation_marker_mismatch",
                f"template marks characters {_brief_spans(marked)} as generated, the serving prompts imply "
                f"{_brief_spans(implied)}; first difference: span {at}, "
                f"{marked[at] if at < len(marked) else None} vs {implied[at] if at < len(implied) else None}",
            )
    return ids, mask


def _clip_spans(spans: list[tuple[int, int]], cut: int) -> list[tuple[int, int]]:
    return [(a, min(b, cut)) for a, b in spans if a < cut]


def _brief_spans(spans: list[tuple[int, int]]) -> str:
    """A span list for an error message, shortened so a long conversation gives a short detail."""
    if len(spans) <= 6:
        return str(spans)
    return f"[{', '.join(map(str, spans[:3]))}, ..., {', '.join(map(str, spans[-2:]))}] ({len(spans)} spans)"


def _merge_spans(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _raise_token_mismatch(turn: int, got: list[int], expected: list[int]) -> None:
    at = next(
        (k for k, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
        min(len(got), len(expected)),
    )
    raise MaskError(
        "token_prefix_mismatch",
        f"before message {turn}'s content the training tokens {got[at : at + 5]} differ from the serving "
        f"prompt's tokens {expected[at : at + 5]} at token {at} ({len(got)} vs {len(expected)} tokens)",
    )


def _too_long(tokens: int, max_length: int) -> MaskError:
    return MaskError(
        "too_long", f"{tokens} tokens > max_length={max_length}; raise max_length or use overlong='truncate'"
    )


def _apply_length(ids: list[int], mask: list[int], max_length: int | None, overlong: str) -> EncodedConversation:
    if max_length is None or len(ids) <= max_length:
        return EncodedConversation(ids, mask, False)
    if overlong == "quarantine":
        raise _too_long(len(ids), max_length)
    ids, mask = ids[:max_length], mask[:max_length]
    if not any(mask):
        raise MaskError(
            "truncated_no_loss",
            f"the first assistant token is beyond max_length={max_length}; no loss token survives truncation",
        )
    return EncodedConversation(ids, mask, True)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the block; reference counting still frees everything.

    Encoding allocates millions of small lists, dicts and tuples and makes no reference
    cycles (rejects keep (reason, detail), never a raised exception with its traceback), so
    the collector would only rescan the whole heap, every imported module included, over and
    over: about a quarter of data preparation's CPU time. Nested uses and an already
    disabled collector are left as they are.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def encode_batch(
    tokenizer: Any,
    conversations: Sequence[Any],
    *,
    max_length: int | None = None,
    overlong: Literal["quarantine", "truncate"] = "quarantine",
) -> tuple[list[EncodedConversation | None], list[tuple[int, str, str]]]:
    """Encode many conversations; results align with the input, ``None`` where rejected.

    Rejects are ``(index, reason, detail)`` with ``reason`` from MASK_REASONS. One bad
    conversation never fails the batch; a tokenizer without a chat template does
    (ValueError), since then every conversation would fail for the same reason.
    """
    if overlong not in ("quarantine", "truncate"):
        raise ValueError(f"overlong must be 'quarantine' or 'truncate', got {overlong!r}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    info = _info(tokenizer)
    # In chunks: the intermediates (renderings, Rust encodings with their offsets) of one
    # chunk at a time, so memory follows the output size, not a multiple of it.
    # Pipelined: the Rust tokenizer (which releases the GIL) encodes one chunk on a helper
    # thread while this thread renders the next chunk and then masks the previous one.
    results: list[EncodedConversation | None] = []
    rejects: list[tuple[int, str, str]] = []

    def finish(lo: int, chunk: _Chunk, tokenized: Future) -> None:
        part, part_rejects = _complete_chunk(info, chunk, tokenized.result(), max_length, overlong)
        results.extend(part)
        rejects.extend((lo + i, reason, detail) for i, reason, detail in part_rejects)

    cache = _SegmentCache()
    with paused_gc(), ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for lo in range(0, len(conversations), _ENCODE_CHUNK):
            chunk = _prepare_chunk(
                info, [conversations[i] for i in range(lo, min(lo + _ENCODE_CHUNK, len(conversations)))]
            )
            tokenized = pool.submit(_tokenize_chunk, info, chunk, cache)
            if pending is not None:
                finish(*pending)
            pending = (lo, chunk, tokenized)
        if pending is not None:
            finish(*pending)
    return results, rejects


_ENCODE_CHUNK = 1024


@dataclass
class _Chunk:
    size: int
    failed: dict[int, tuple[str, str]]  # index -> (reason, detail): no exception (and traceback) kept
    ready: list[_Work]
    stock: list[_Work]  # ready works without control-token lookalikes: tokenized as whole renderings


def _prepare_chunk(info: _Info, conversations: list[Any]) -> _Chunk:
    """Validate and render one chunk (no serving prompts and no tokenization yet).

    For a prefix-stable template (``_prefix_bound``) plain chats are rendered through
    ``_TracedMessages``, which records where each message's part of the rendering starts.
    """
    failed: dict[int, tuple[str, str]] = {}

    works: list[_Work] = []
    for index, conversation in enumerate(conversations):
        try:
            messages = _validate(conversation, need_assistant=True)
        except MaskError as err:
            failed[index] = (err.reason, err.detail)
            continue
        turns = [j for j, m in enumerate(messages) if m["role"] == "assistant"]
        works.append(_Work(index, messages, turns))

    traced = _prefix_bound(info) is not None
    for work in works:
        work.plain = _is_plain_chat(work.messages)
    chats: list[list[dict[str, Any]]] = [
        _TracedMessages(w.messages) if traced and w.plain else w.messages for w in works
    ]
    full = _render_many(info, chats, False, info.has_generation, all(w.plain for w in works))
    ready: list[_Work] = []
    for work, chat, rendered in zip(works, chats, full, strict=True):
        if isinstance(rendered, MaskError):
            failed[work.index] = (rendered.reason, rendered.detail)
            continue
        work.rendered, work.gen_spans = rendered
        if type(chat) is _TracedMessages and chat.passes == 1:
            work.positions = chat.positions
        work.lookalike = any(_content_has_lookalike(info, m["content"]) for m in work.messages)
        ready.append(work)
    return _Chunk(len(conversations), failed, ready, [w for w in ready if not w.lookalike])


_SEGMENT_CACHE_TOKENS = 1 << 19  # bound on the tokens one encode_batch call keeps for reuse (~60 MiB)
_SPLIT_CHECK_ROWS = 16


@dataclass
class _SegmentCache:
    """Token ids and relative offsets of the rendering segments one encode_batch call has tokenized.

    Bounded by _SEGMENT_CACHE_TOKENS so memory stays flat however many conversations go
    through. When full, it keeps the entries reused since the last purge (system prompts,
    stock replies) and drops the rest. Only the tokenizing thread touches it.
    """

    entries: dict[str, tuple[list[int], Any]] = field(default_factory=dict)  # ids, Encoding
    reused: set[str] = field(default_factory=set)
    tokens: int = 0

    def add(self, key: str, entry: tuple[list[int], Any]) -> None:
        size = len(entry[0])
        if self.tokens + size > _SEGMENT_CACHE_TOKENS:
            self.entries = {k: e for k, e in self.entries.items() if k in self.reused}
            self.tokens = sum(len(e[0]) for e in self.entries.values())
            self.reused = set()
            if self.tokens + size > _SEGMENT_CACHE_TOKENS:
                self.entries = {}
                self.tokens = 0
        self.entries[key] = entry
        self.tokens += size


def _tokenize_segments(info: _Info, cache: _SegmentCache, texts: list[str]) -> list[tuple[list[int], _TokenOffsets]]:
    """Tokenize renderings as their added tokens plus each distinct text segment tokenized once.

    For a segment-safe tokenizer whose added-token split we reproduce (``split_exact``) this
    is exactly what tokenizing each whole rendering gives: the Rust tokenizer itself splits
    at added tokens first and normalizes, pre-tokenizes and encodes every piece on its own.
    Renderings repeat a lot of text (system prompts, role headers, stock replies), so the
    tokenizer sees a fraction of the characters.
    """
    splitter = info.added_split_re
    split = [splitter.split(text) for text in texts] if splitter is not None else [[text] for text in texts]
    entries = cache.entries
    table = dict(info.added_entries)  # the added tokens (odd positions of a split) and ""
    missing = []
    for key in dict.fromkeys(chain.from_iterable(split)):
        if key not in table:
            entry = entries.get(key)
            if entry is None:
                missing.append(key)
            else:
                table[key] = entry
                cache.reused.add(key)
    for key, enc in zip(missing, info.plain.encode_batch(missing, add_special_tokens=False), strict=True):
        entry = (enc.ids, enc)  # offsets stay in Rust until a lookup needs one
        table[key] = entry
        cache.add(key, entry)
    out = []
    for parts in split:
        got = [table[part] for part in parts]
        ids = list(chain.from_iterable([g[0] for g in got]))
        pieces = [g[1] for g in got]
        out.append(
            (
                ids,
                _TokenOffsets(
                    pieces, list(accumulate(map(len, parts), initial=0)), list(accumulate(map(len, pieces), initial=0))
                ),
            )
        )
    return out


def _tokenize_chunk(info: _Info, chunk: _Chunk, cache: _SegmentCache) -> list[tuple[list[int], _TokenOffsets]]:
    texts = [w.rendered for w in chunk.stock]
    tokenized = None
    if info.segment_safe and info.split_exact:
        tokenized = _tokenize_segments(info, cache, texts)
        if not info.split_checked and texts:
            # Once per tokenizer: the split path must agree with whole-rendering tokenization,
            # else it is switched off for good (an added-token rule we do not reproduce).
            probe = info.plain.encode_batch(texts[:_SPLIT_CHECK_ROWS], add_special_tokens=False)
            if all(
                enc.ids == ids and enc.offsets == offsets.pairs()
                for enc, (ids, offsets) in zip(probe, tokenized, strict=False)
            ):
                info.split_checked = True
            else:
                info.split_exact = False
                tokenized = None
    if tokenized is None:
        tokenized = [
            (enc.ids, _TokenOffsets.flat(enc.offsets))
            for enc in info.plain.encode_batch(texts, add_special_tokens=False)
        ]
    return tokenized


class _ShadowPrompts:
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
        self, info: _Info, work: _Work, shadow: _Shadow, control_ends: list[tuple[int, int]], bound: int | None
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
            self.shift.append(self.shift[-1] + (b - a) - len(_sentinel(j)))
            self.top.append(max(self.top[-1], j))
            self.assistants.append(self.assistants[-1] + (work.messages[j]["role"] == "assistant"))

    def _anchor(self, turn: int) -> None:
        self.anchored = True
        marked = [{**m, "content": _sentinel(j)} for j, m in enumerate(self.work.messages[:turn])]
        try:
            prompt, _ = _render_one(self.info, marked, True, False)
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
        if n and self.shadow.starts[n - 1] + len(_sentinel(self.shadow.spans[n - 1][0])) > at:
            return None
        if at + self.shift[n] != q or self.top[n] >= turn or self.assistants[n] != k:
            return None
        if n < len(self.span_starts) and self.span_starts[n] < start:
            return None
        c = bisect_right(self.ends, start) - 1
        cut, keep = self.control_ends[c] if c >= 0 else (0, 0)
        lo = bisect_left(self.span_starts, cut, 0, n)
        spans = [(j, a - cut, b - cut) for j, a, b in self.shadow.spans[lo:n]]
        return keep, _segment_encode(self.info, self.work.rendered[cut:start], spans)[0]


@dataclass
class _Job:
    """One conversation in ``_complete_chunk``: its tokens, then its serving prompts and checks."""

    work: _Work
    ids: list[int] | None = None
    offsets: _TokenOffsets | None = None
    content_spans: list[tuple[int, int, int]] | None = None  # lookalike rows: the sentinel rendering's spans
    shadow: _Shadow | None = None  # lookalike rows: the sentinel rendering
    control_ends: list[tuple[int, int]] = field(default_factory=list)  # lookalike rows: see _segment_encode
    deferred: tuple[str, str] | None = None  # lookalike rows: why the sentinel rendering failed (reported last)
    cut: int | None = None  # overlong="truncate": the character where the kept tokens end
    prompts: _Prompts | None = None
    prompt_ids: list[tuple[int, list[int]]] | None = None


def _complete_chunk(
    info: _Info,
    chunk: _Chunk,
    tokenized: list[tuple[list[int], _TokenOffsets]],
    max_length: int | None,
    overlong: str,
) -> tuple[list[EncodedConversation | None], list[tuple[int, str, str]]]:
    """The length rule, then the serving prompts, the masks and their checks.

    The length rule comes first, on the tokens of the full rendering, so the per-turn work
    (serving prompts, their tokens) never runs for a conversation that ``quarantine`` rejects
    anyway, and for one that ``truncate`` cuts it stops at the first turn past the cut.
    """
    results: list[EncodedConversation | None] = [None] * chunk.size
    failed = chunk.failed
    jobs = [_Job(work, ids, offsets) for work, (ids, offsets) in zip(chunk.stock, tokenized, strict=True)]
    for work in chunk.ready:
        if not work.lookalike:
            continue
        job = _Job(work)
        try:
            job.shadow = _shadow_spans(info, work.messages, work.rendered, False, traced=work.positions is not None)
            job.content_spans = job.shadow.spans
            ids, offsets = _segment_encode(info, work.rendered, job.content_spans, job.control_ends)
            job.ids, job.offsets = ids, _TokenOffsets.flat(offsets)
        except MaskError as err:
            job.deferred = (err.reason, err.detail)  # after the serving checks, as before this was first
        jobs.append(job)

    live: list[_Job] = []
    for job in jobs:
        if job.ids is not None and max_length is not None and len(job.ids) > max_length:
            if overlong == "quarantine":
                err = _too_long(len(job.ids), max_length)
                failed[job.work.index] = (err.reason, err.detail)
                continue
            job.cut = job.offsets.end(max_length - 1)  # type: ignore[union-attr]
        live.append(job)

    bound = _prefix_bound(info)
    requests: list[tuple[_Job, int]] = []
    for job in live:
        job.prompts = _Prompts(info, job.work, bound)
        requests.extend((job, t) for t in job.prompts.eager(whole=job.cut is None))
    plain = all(job.work.plain for job, _ in requests)
    rendered = _render_many(info, [job.work.messages[:t] for job, t in requests], True, False, plain)
    for (job, t), prompt in zip(requests, rendered, strict=True):
        job.prompts.exact[t] = prompt  # type: ignore[union-attr]
    del requests, rendered

    located: list[_Job] = []
    for job in live:
        work = job.work
        try:
            _locate_turns(work, job.prompts, job.cut)  # type: ignore[arg-type]
            if job.deferred is not None:
                raise MaskError(*job.deferred)
            if job.content_spans is not None:
                by_message = {j: (a, b) for j, a, b in job.content_spans}
                if [by_message.get(t) for t in work.turns[: len(work.spans)]] != work.spans:
                    raise MaskError(
                        "serving_prefix_mismatch",
                        "assistant content positions from the serving prompts and from the sentinel rendering differ",
                    )
            located.append(job)
        except MaskError as err:
            failed[work.index] = (err.reason, err.detail)
        job.prompts = None  # the exact prompt strings are no longer needed

    if not info.segment_safe:  # position-dependent tokenization: tokenize every checked turn's prompt
        stock = [job for job in located if not job.work.lookalike]
        texts = [job.work.rendered[:start] for job in stock for start, _ in job.work.spans]
        encodings = iter(info.plain.encode_batch(texts, add_special_tokens=False))
        for job in stock:
            job.prompt_ids = [(0, next(encodings).ids) for _ in job.work.spans]

    for job in located:
        work = job.work
        try:
            if work.lookalike:
                derived = _ShadowPrompts(info, work, job.shadow, job.control_ends, bound)  # type: ignore[arg-type]
                job.prompt_ids = []
                for k, (t, (start, _)) in enumerate(zip(work.turns, work.spans, strict=False)):
                    got = derived.expected(k, t, start)
                    if got is None:
                        got = (0, _prompt_ids(info, work.messages[:t], work.rendered[:start]))
                    job.prompt_ids.append(got)
            ids, mask = _finish(info, work, job.ids, job.offsets, job.prompt_ids, job.cut)  # type: ignore[arg-type]
            results[work.index] = _apply_length(ids, mask, max_length, overlong)
        except MaskError as err:
            failed[work.index] = (err.reason, err.detail)
    rejects = [(i, *failed[i]) for i in sorted(failed)]
    return results, rejects


def encode_conversation(
    tokenizer: Any,
    messages: list[dict[str, str]],
    *,
    max_length: int | None = None,
    overlong: Literal["quarantine", "truncate"] = "quarantine",
) -> EncodedConversation:
    """Encode one conversation (see ``encode_batch``); raises MaskError instead of returning a reject."""
    results, rejects = encode_batch(tokenizer, [messages], max_length=max_length, overlong=overlong)
    if rejects:
        _, reason, detail = rejects[0]
        raise MaskError(reason, detail)
    result = results[0]
    assert result is not None
    return result


# --------------------------------------------------------------------------------------
# Independent verification (asset checks, tests).


def _runs(mask: Sequence[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    start = None
    for k, v in enumerate([*mask, 0]):
        if v and start is None:
            start = k
        elif not v and start is not None:
            runs.append((start, k))
            start = None
    return runs


def verify_masks(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    input_ids: Sequence[int],
    loss_mask: Sequence[int],
    *,
    truncated: bool = False,
) -> str | None:
    """None if the mask follows the rule, else what is wrong.

    Independent of how the mask was built: the masked runs, in order, must decode to
    each assistant content followed by its end-of-turn token (an added token; when the
    template puts none there, the content alone), content must hold no control token,
    and nothing else may be masked. With ``truncated=True`` the last run may stop early
    at the end of the sequence.
    """
    info = _info(tokenizer)
    ids = [int(i) for i in input_ids]
    mask = [int(m) for m in loss_mask]
    if len(ids) != len(mask):
        return f"input_ids has {len(ids)} tokens but loss_mask has {len(mask)}"
    if any(m not in (0, 1) for m in mask):
        return "loss_mask holds values other than 0 and 1"
    contents = [m.get("content") for m in messages if m.get("role") == "assistant"]
    runs = _runs(mask)
    if len(runs) > len(contents) or (len(runs) < len(contents) and not truncated):
        return f"{len(runs)} masked runs for {len(contents)} assistant turns"
    decode = info.plain.decode
    for k, ((a, b), content) in enumerate(zip(runs, contents, strict=False)):
        run = ids[a:b]
        if truncated and b == len(ids) and k == len(runs) - 1:
            text = decode(run, skip_special_tokens=False)
            eot_texts = [decode([i], skip_special_tokens=False) for i in info.added_ids]
            if not any((content + e).startswith(text) for e in ["", *eot_texts]):
                return f"truncated run {k} decodes to {text[:60]!r}, not a prefix of assistant turn {k}"
            if any(t in info.special_ids for t in run[:-1]):
                return f"truncated run {k} holds control token ids inside the assistant content"
            continue
        has_eot = run[-1] in info.added_ids and decode(run[:-1], skip_special_tokens=False) == content
        body = run[:-1] if has_eot else run
        if not has_eot and decode(body, skip_special_tokens=False) != content:
            return (
                f"masked run {k} (tokens {a}..{b}) decodes to "
                f"{decode(run, skip_special_tokens=False)[:80]!r}, expected assistant turn {k}: "
                f"{content[:80]!r}"
            )
        bad = [t for t in body if t in info.special_ids]
        if bad:
            return f"masked run {k} holds control token ids {bad} inside the assistant content"
        if not has_eot and b < len(ids) and ids[b] in info.added_ids:
            return f"the end-of-turn token {ids[b]} right after assistant turn {k} (token {b}) is not masked"
    return None


def _stock_prompt_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        out = out["input_ids"]
    return [int(i) for i in out]


def _spread(n: int, k: int) -> list[int]:
    """``k`` of the indices ``range(n)``: the first, the last and evenly spaced ones between (all when n <= k)."""
    if k <= 0 or n <= k:
        return list(range(n))
    if k == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def verify_serving_prefix(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    input_ids: Sequence[int],
    loss_mask: Sequence[int],
    *,
    truncated: bool = False,
    max_turns: int | None = None,
) -> str | None:
    """None if training and serving agree, else the first disagreement.

    For each assistant turn ``i``, the tokens before its first masked token must equal
    the serving prompt for ``messages[:i]``: transformers' stock
    ``apply_chat_template(..., add_generation_prompt=True, tokenize=True)`` where no
    message looks like a control token, else ``encode_prompt`` (stock tokenization would
    turn typed control text into control tokens; our serving path does not).

    Each check renders and tokenizes the whole history before its turn, so checking every
    turn costs time quadratic in the turns. ``max_turns`` bounds it for audits: only that
    many turns are checked, the first, the last and evenly spaced ones between (None or 0:
    every turn).
    """
    info = _info(tokenizer)
    ids = [int(i) for i in input_ids]
    msgs = [dict(m) for m in messages]
    turns = [j for j, m in enumerate(msgs) if m.get("role") == "assistant"]
    runs = _runs(loss_mask)
    if len(runs) > len(turns) or (len(runs) < len(turns) and not truncated):
        return f"{len(runs)} masked runs for {len(turns)} assistant turns"
    # The first message that looks like a control token: histories from there on take encode_prompt.
    lookalike_from = next(
        (
            j
            for j, m in enumerate(msgs)
            if isinstance(m.get("content"), str) and _content_has_lookalike(info, m["content"])
        ),
        len(msgs),
    )
    pairs = list(zip(runs, turns, strict=False))
    for k in _spread(len(pairs), max_turns or 0):
        (first, _), turn = pairs[k]
        history = msgs[:turn]
        try:
            if lookalike_from < turn:
                expected = encode_prompt(tokenizer, history)
            else:
                expected = _stock_prompt_ids(tokenizer, history)
        except MaskError as err:
            return f"cannot build the serving prompt for message {turn}: {err}"
        if ids[:first] != expected:
            got = ids[:first]
            at = next(
                (k for k, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                min(len(got), len(expected)),
            )
            return (
                f"before message {turn} the training tokens ({len(got)}) and the serving prompt "
                f"({len(expected)}) differ at token {at}: {got[at : at + 5]} vs {expected[at : at + 5]}"
            )
    return None


# --------------------------------------------------------------------------------------
# Views of the encoder's internals, for benchmarks and diagnostics.


def render_conversations(tokenizer: Any, conversations: Sequence[Any]) -> list[str]:
    """The chat template's rendering of each conversation, the text ``encode_batch`` tokenizes.

    Each conversation is validated as for training (MaskError on invalid messages or no
    assistant turn) and rendered without a generation prompt. With a ChatML template,
    ``[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]`` renders as
    ``"<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\nyo<|im_end|>\\n"``.
    """
    info = _info(tokenizer)
    chats = [_validate(c, need_assistant=True) for c in conversations]
    out = []
    for rendered in _render_many(info, chats, False, False):
        if isinstance(rendered, MaskError):
            raise rendered
        out.append(rendered[0])
    return out


def text_tokenizer(tokenizer: Any) -> Tokenizer:
    """The Rust tokenizer ``encode_batch`` encodes renderings with: a private copy of the
    tokenizer's backend without post-processor, truncation or padding (so one may time it
    or call it freely without touching the caller's tokenizer)."""
    return _info(tokenizer).plain


def prefix_stable(tokenizer: Any) -> bool:
    """Whether the template provably renders each serving prompt as a prefix of the full
    rendering, so that ``encode_batch`` need not render every prompt separately."""
    return _prefix_bound(_info(tokenizer)) is not None
