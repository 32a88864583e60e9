"""Curation rules: turn candidate conversations into trustworthy training rows.

Every candidate either comes out curated (normalized, PII-scrubbed, content-hashed,
split assigned) or lands in quarantine with a reason code, a detail naming what
failed, and its payload as JSON. Nothing is dropped silently, so the counts in the
stats always add up: ``rows_in == rows_out + quarantined``.

The hot path is vectorized polars; Python loops only compute cryptographic hashes.

- ``reasons``: the reason codes and their meanings;
- ``config``: bounds and split settings;
- ``normalize`` and ``pii``: text normalization, PII counting and scrubbing;
- ``rules``: the structural checks that decide a row's reason;
- ``hashing``, ``splits``, ``dedup``: content hashes, split assignment, duplicates;
- ``quarantine``: the quarantine rows of rejects;
- ``pipeline``: ``curate``, one day's candidates through all of the above;
- ``external_jsonl``: landing-area JSONL parsed into candidates.
"""

from core.curation.config import CurationConfig
from core.curation.external_jsonl import parse_external_jsonl
from core.curation.hashing import content_hash, content_hash_expr, sha256_hex, stable_hash_hex, stable_hash_u64
from core.curation.normalize import ROLES, normalize_text_expr
from core.curation.pii import EMAIL_PATTERN, EMAIL_TOKEN, PHONE_PATTERN, PHONE_TOKEN, scrub_pii_expr
from core.curation.pipeline import curate
from core.curation.reasons import PAIR_REASONS, PARSE_REASONS, REASONS
from core.curation.splits import assign_splits

__all__ = [
    "EMAIL_PATTERN",
    "EMAIL_TOKEN",
    "PAIR_REASONS",
    "PARSE_REASONS",
    "PHONE_PATTERN",
    "PHONE_TOKEN",
    "REASONS",
    "ROLES",
    "CurationConfig",
    "assign_splits",
    "content_hash",
    "content_hash_expr",
    "curate",
    "normalize_text_expr",
    "parse_external_jsonl",
    "scrub_pii_expr",
    "sha256_hex",
    "stable_hash_hex",
    "stable_hash_u64",
]
