"""Lazy token offsets: character positions of a rendering's tokens, looked up without flattening.

Segment tokenization shares one encoding between every rendering that holds the segment,
so offsets stay relative to their piece (and, for a Rust ``Encoding``, in Rust) until a
lookup needs one.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any


class TokenOffsets:
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
    def flat(cls, offsets: list[tuple[int, int]]) -> TokenOffsets:
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
