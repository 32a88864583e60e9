"""The threaded encoding pipeline: chunks of conversations rendered, tokenized and masked in turn.

Chunks bound memory to the output size rather than a multiple of it. The Rust tokenizer
releases the GIL, so it encodes one chunk on a helper thread while this thread renders the
next and masks the previous one.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Literal

from core.masking.chunks import Chunk, complete_chunk, prepare_chunk
from core.masking.masks import EncodedConversation
from core.masking.reasons import MaskError
from core.masking.segments import SegmentCache, tokenize_chunk
from core.masking.tokenizer_info import info_for

_ENCODE_CHUNK = 1024  # conversations per chunk: large enough to batch the tokenizer, small for memory


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the block; reference counting still frees everything.

    Encoding allocates millions of small lists, dicts and tuples and makes no reference
    cycles (rejects keep (reason, detail), never a raised exception with its traceback), so
    the collector would only rescan the whole heap, every imported module included, over and
    over, for a large share of data preparation's CPU time. Nested uses and an already
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
    only_last: bool = False,
    as_rendered: bool = False,
) -> tuple[list[EncodedConversation | None], list[tuple[int, str, str]]]:
    """Encode many conversations; results align with the input, ``None`` where rejected.

    Rejects are ``(index, reason, detail)`` with ``reason`` from MASK_REASONS. One bad
    conversation never fails the batch; a tokenizer without a chat template does
    (ValueError), since then every conversation would fail for the same reason.

    The two switches serve templates that rewrite the conversation (core.masking.rewrites):
    ``only_last`` checks and masks only the last assistant turn (the earlier ones are context,
    however the template renders them); ``as_rendered`` masks a turn the template rewrites as
    the rendering shows it, from its serving prompt to the next control token.
    """
    if overlong not in ("quarantine", "truncate"):
        raise ValueError(f"overlong must be 'quarantine' or 'truncate', got {overlong!r}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    info = info_for(tokenizer)
    # In chunks: the intermediates (renderings, Rust encodings with their offsets) of one
    # chunk at a time, so memory follows the output size, not a multiple of it.
    # Pipelined: the Rust tokenizer (which releases the GIL) encodes one chunk on a helper
    # thread while this thread renders the next chunk and then masks the previous one.
    results: list[EncodedConversation | None] = []
    rejects: list[tuple[int, str, str]] = []

    def finish(lo: int, chunk: Chunk, tokenized: Future) -> None:
        part, part_rejects = complete_chunk(info, chunk, tokenized.result(), max_length, overlong)
        results.extend(part)
        rejects.extend((lo + i, reason, detail) for i, reason, detail in part_rejects)

    cache = SegmentCache()
    with paused_gc(), ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for lo in range(0, len(conversations), _ENCODE_CHUNK):
            chunk = prepare_chunk(
                info,
                [conversations[i] for i in range(lo, min(lo + _ENCODE_CHUNK, len(conversations)))],
                only_last=only_last,
                as_rendered=as_rendered,
            )
            tokenized = pool.submit(tokenize_chunk, info, chunk, cache)
            if pending is not None:
                finish(*pending)
            pending = (lo, chunk, tokenized)
        if pending is not None:
            finish(*pending)
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
