"""Stable hashes: content hashes of conversations and per-row sha256 of string columns.

Ids, content hashes and splits must be identical across processes and polars versions,
which ``pl.Expr.hash`` does not promise, so they come from sha256. Python computes those
(polars has no stable sha256) in bounded chunks so memory stays flat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from core.schemas import MESSAGES_DTYPE

_HASH_CHUNK = 100_000


def sha256_hex(values: Iterable[str | None], length: int = 64) -> list[str | None]:
    """sha256 hex digests (truncated to ``length``); None stays None."""
    return [None if v is None else hashlib.sha256(v.encode("utf-8")).hexdigest()[:length] for v in values]


def _chunked_series_map(s: pl.Series, fn: Any, dtype: pl.DataType) -> pl.Series:
    """Apply a Python list function chunk by chunk, bounding the Python objects alive."""
    parts = [
        pl.Series(s.name, fn(s.slice(i, _HASH_CHUNK).to_list()), dtype=dtype) for i in range(0, len(s), _HASH_CHUNK)
    ]
    return pl.concat(parts) if parts else pl.Series(s.name, [], dtype=dtype)


def stable_hash_hex(s: pl.Series, length: int = 32) -> pl.Series:
    """Per-row sha256 hex of a string column: stable across processes and polars versions
    (``pl.Expr.hash`` is not), which ids and splits require."""
    return _chunked_series_map(s.cast(pl.String), lambda vs: sha256_hex(vs, length), pl.String)


def stable_hash_u64(s: pl.Series) -> pl.Series:
    """Per-row 64-bit integer from sha256 of a string column (null -> null)."""

    def _fn(vs: list[str | None]) -> list[int | None]:
        return [
            None if v is None else int.from_bytes(hashlib.sha256(v.encode("utf-8")).digest()[:8], "big") for v in vs
        ]

    return _chunked_series_map(s.cast(pl.String), _fn, pl.UInt64)


def hash_key_expr(col: str | pl.Expr, *, normalized: bool = False) -> pl.Expr:
    """The canonical, normalization-insensitive text of a conversation: JSON of the
    messages with role stripped/lowercased and content NFC, casefolded and with every
    whitespace run collapsed to one space.

    ``normalized=True`` is a fast path for messages that already went through
    ``normalize_text_expr`` (NFC, single spaces, no space next to a newline): the
    result is the same, without a second NFC pass.
    """
    c = pl.col(col) if isinstance(col, str) else col
    el = pl.element()
    role = el.struct.field("role")
    content = el.struct.field("content")
    if normalized:
        text = content.str.to_lowercase().str.replace_all(r"\n+", " ")
    else:
        role = role.str.strip_chars().str.to_lowercase()
        text = content.str.normalize("NFC").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()
    canon = c.list.eval(pl.struct(role=role, content=text))
    return pl.struct(canon.alias("m")).struct.json_encode()


def content_hash_expr(col: str | pl.Expr = "messages") -> pl.Expr:
    """Expression: sha256 hex of the normalized messages (see ``hash_key_expr``).

    Applied to curated rows it reproduces their ``content_hash`` column, so asset
    checks and later days can recompute it.
    """
    return hash_key_expr(col).map_batches(lambda s: stable_hash_hex(s, 64), return_dtype=pl.String)


def content_hash(messages: Sequence[dict[str, Any]]) -> str:
    """sha256 hex of one conversation, identical to ``content_hash_expr`` by construction."""
    df = pl.DataFrame({"messages": [list(messages)]}, schema={"messages": MESSAGES_DTYPE})
    return df.select(content_hash_expr("messages")).item()
