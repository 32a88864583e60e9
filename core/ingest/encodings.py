"""Text encodings: validating a source's codec setting, and showing text that is not valid text.

Undecodable bytes never fail a file; they end up in details and payloads, which must themselves be
printable and encodable, hence the surrogate helpers.
"""

from __future__ import annotations

import codecs
import contextlib
import re

_SURROGATE = re.compile("[\ud800-\udfff]")
ENCODING_SETTINGS = {"catalog": "CATALOG_ENCODING", "interactions": "INTERACTION_ENCODING"}


def text_encoding(name: str, setting: str = "encoding") -> str:
    """Validate a codec name (any Python text codec) and return its canonical spelling.

    Raises a ValueError naming ``setting`` for an unknown name or a bytes-to-bytes codec such as
    base64, so a typo fails before any file is read instead of quarantining every row.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{setting} must be a codec name such as 'utf-8', 'latin-1' or 'cp1252', got {name!r}")
    try:
        info = codecs.lookup(name.strip())
        with contextlib.suppress(UnicodeError):
            "a".encode(info.name)  # raises LookupError for a bytes-to-bytes codec (b"".decode does not)
    except LookupError as exc:
        if "not a text encoding" in str(exc):
            raise ValueError(f"{setting}={name!r}: {name!r} is not a text encoding; use e.g. 'utf-8'") from exc
        raise ValueError(
            f"{setting}={name!r}: unknown encoding {name!r}; use a Python codec name such as 'utf-8', "
            "'latin-1' (ISO-8859-1) or 'cp1252' (Windows Western European)"
        ) from exc
    return info.name


def first_surrogate(text: str) -> int | None:
    """0-based index of the first lone surrogate (U+D800..U+DFFF) in ``text``, None when there is none.

    Python strings can hold them (json.loads of a "\\ud800" escape, errors="surrogateescape"), but they
    are not text: UTF-8 cannot encode them, so hashing, polars and DuckDB all fail on them.
    """
    m = _SURROGATE.search(text)
    return None if m is None else m.start()


def has_surrogates(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def escape_surrogates(text: str) -> str:
    """Printable stand-in for a string with lone surrogates: undecodable bytes (surrogateescape's
    U+DC80..U+DCFF) become ``\\xNN``, other surrogates ``\\uNNNN``; everything else is kept."""

    def show(m: re.Match[str]) -> str:
        cp = ord(m.group())
        return f"\\x{cp - 0xDC00:02x}" if 0xDC80 <= cp <= 0xDCFF else f"\\u{cp:04x}"

    return _SURROGATE.sub(show, text)


def decode_error_detail(exc: UnicodeDecodeError, encoding: str) -> str:
    """'bytes 0xe9 at byte 3 are not valid utf-8' for a UnicodeDecodeError."""
    bad = exc.object[exc.start : min(exc.end, exc.start + 8)]
    shown = " ".join(f"0x{b:02x}" for b in bad)
    plural = len(bad) > 1
    return f"byte{'s' if plural else ''} {shown} at byte {exc.start} {'are' if plural else 'is'} not valid {encoding}"
