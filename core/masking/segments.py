"""Tokenizing renderings segment by segment, each distinct segment once, with a bounded cache.

Renderings repeat a lot of text (system prompts, role headers, stock replies); splitting at
added tokens and tokenizing each distinct piece once gives the tokenizer a fraction of the
characters, with exactly the ids and offsets of tokenizing each rendering whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate, chain
from typing import Any

from core.masking.chunks import Chunk
from core.masking.token_offsets import TokenOffsets
from core.masking.tokenizer_info import TokenizerInfo

_SEGMENT_CACHE_TOKENS = 1 << 19  # bound on the tokens one encode_batch call keeps for reuse
_SPLIT_CHECK_ROWS = 16


@dataclass
class SegmentCache:
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


def tokenize_segments(
    info: TokenizerInfo, cache: SegmentCache, texts: list[str]
) -> list[tuple[list[int], TokenOffsets]]:
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
                TokenOffsets(
                    pieces, list(accumulate(map(len, parts), initial=0)), list(accumulate(map(len, pieces), initial=0))
                ),
            )
        )
    return out


def tokenize_chunk(info: TokenizerInfo, chunk: Chunk, cache: SegmentCache) -> list[tuple[list[int], TokenOffsets]]:
    """Ids and offsets of the chunk's renderings without lookalikes: segment by segment where that is exact.

    Runs on the pipeline's helper thread; it reads the chunk and writes only the cache and
    the tokenizer's split flags.
    """
    texts = [w.rendered for w in chunk.stock]
    tokenized = None
    if info.segment_safe and info.split_exact:
        tokenized = tokenize_segments(info, cache, texts)
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
            (enc.ids, TokenOffsets.flat(enc.offsets))
            for enc in info.plain.encode_batch(texts, add_special_tokens=False)
        ]
    return tokenized
