"""Facts about a tokenizer that every encoding needs, worked out once per tokenizer.

Cached per tokenizer object (a weak reference drops the entry with the tokenizer) and
keyed on its size, chat template and special tokens, so a tokenizer changed in place is
looked at afresh. Some fields are settled lazily by the first batch that needs them (the
inlined generation template, the segment split check, the prefix-stability proof) and
shared by every later batch.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer


@dataclass
class TokenizerInfo:
    """What the encoder needs to know about one tokenizer: its template, its control tokens and private copies.

    Mutable on purpose: the lazily settled fields below are filled in by the first batch
    that needs them, and the tests switch paths off by setting them.
    """

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
    fast_template: Any = None  # fast_generation_template's compile (None: not built yet, False: unusable)
    fast_checked: set[tuple[bool, bool]] = field(default_factory=set)  # (add_generation_prompt, spans) probed
    tail_cache: dict[str, list[int]] = field(default_factory=dict)
    prefix_checked: bool = False  # prefix_bound has analysed the template
    prefix_bound: int | None = None  # its answer (None: render every serving prompt)


_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")
_INFO_CACHE: dict[int, tuple[Any, tuple[Any, ...], TokenizerInfo]] = {}
_INFO_LOCK = threading.Lock()


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


def info_for(tokenizer: Any) -> TokenizerInfo:
    """The cached facts of ``tokenizer``; TypeError for a slow tokenizer, ValueError without a chat template.

    Both errors fail the whole batch on purpose: every conversation would fail the same way.
    """
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
    info = TokenizerInfo(
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
