"""PII patterns and scrubbing: emails and phone numbers become [EMAIL] and [PHONE].

The patterns use Rust regex syntax (polars): no look-around, so boundaries use \\b.
"""

from __future__ import annotations

import polars as pl

EMAIL_PATTERN = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
# International numbers must start with "+": this is what keeps years (1995), ratings
# (4.5) and counts out. US numbers need the 3-3-4 grouping with separators.
_INTL_PHONE = r"\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .\-]?\d{2,4}){2,5}\b"
_US_PHONE = r"(?:\b1[ .\-]?)?(?:\(\d{3}\) ?|\b\d{3}[ .\-])\d{3}[ .\-]\d{4}\b"
PHONE_PATTERN = f"(?:{_INTL_PHONE})|(?:{_US_PHONE})"
EMAIL_TOKEN = "[EMAIL]"
PHONE_TOKEN = "[PHONE]"


def scrub_pii_expr(e: pl.Expr) -> pl.Expr:
    """Replace emails with [EMAIL] and phone numbers with [PHONE] (emails first, so the
    digits of an address are never taken for a phone)."""
    return e.str.replace_all(EMAIL_PATTERN, EMAIL_TOKEN).str.replace_all(PHONE_PATTERN, PHONE_TOKEN)
