"""External preference pairs from the landing area, in the conversational prompt/chosen/rejected JSONL format.

One line per pair, as preference datasets on the Hugging Face hub and TRL write them::

    {"prompt": [{"role": "user", "content": "..."}],
     "chosen": [{"role": "assistant", "content": "..."}],
     "rejected": [{"role": "assistant", "content": "..."}],
     "member_id": "M1"}            # optional: keeps the member in the split SFT gives them

A bad line never fails the file: it is quarantined with ``source:line`` and a parse reason, as external
conversations are (core/curation/external_jsonl.py reads the lines for both).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

import polars as pl

from core.curation.external_jsonl import JsonlRejects, jsonl_records, record_id, reject_surrogates
from core.ingest import has_surrogates
from core.preferences.from_signals import PAIR_CANDIDATE_SCHEMA

PAIR_FIELDS = ("prompt", "chosen", "rejected")


def _messages(value: Any, name: str) -> tuple[list[dict[str, str]] | None, str]:
    """A list of {role, content} strings, or why ``value`` is not one."""
    if not isinstance(value, list):
        return None, f"'{name}' must be a list of {{role, content}} objects, got {type(value).__name__}"
    out = []
    for i, m in enumerate(value, start=1):
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(role, str) or not isinstance(content, str):
            return None, f"{name} message {i} must be an object with string 'role' and 'content'"
        out.append({"role": role, "content": content})
    return out, ""


def _pair(obj: Any) -> tuple[dict[str, Any] | None, str]:
    """The pair's fields, or why the object is not a pair."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object with 'prompt', 'chosen' and 'rejected' lists, got {type(obj).__name__}"
    missing = [f for f in PAIR_FIELDS if f not in obj]
    if missing:
        hint = (
            " (a 'messages' line is a conversation: drop it in the conversations folder)" if "messages" in obj else ""
        )
        return None, f"missing {missing}; a preference line has 'prompt', 'chosen' and 'rejected'{hint}"
    pair: dict[str, Any] = {}
    for name in PAIR_FIELDS:
        msgs, err = _messages(obj[name], name)
        if msgs is None:
            return None, err
        pair[name] = msgs
    member = obj.get("member_id")
    if member is not None and not isinstance(member, str):
        return None, f"'member_id' must be a string or null, got {type(member).__name__}"
    pair["member_id"] = member
    return pair, ""


def _surrogate_field(pair: dict[str, Any]) -> str | None:
    for name in PAIR_FIELDS:
        for i, m in enumerate(pair[name], start=1):
            for key in ("role", "content"):
                if has_surrogates(m[key]):
                    return f"{name} message {i} {key}"
    member = pair["member_id"]
    return "member_id" if member is not None and has_surrogates(member) else None


def parse_preference_jsonl(
    lines: Iterable[str | bytes], day: date, source: str, encoding: str = "utf-8"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(candidate pairs of kind ``external`` for ``curate_pairs``, quarantine rows) of one JSONL file.

    The pair_id hashes the member and the three message lists, not the file, so the same pair dropped twice
    gets the same id and is caught as a duplicate.
    """
    rejects = JsonlRejects(source)
    rows: list[dict[str, Any]] = []
    for record in jsonl_records(lines, encoding, rejects):
        pair, err = _pair(record.value)
        if pair is None:
            rejects.add("bad_schema", record.lineno, err, record.line)
            continue
        if reject_surrogates(record, _surrogate_field(pair), rejects):
            continue
        rows.append(
            {
                "pair_id": record_id({"kind": "external_pair", **pair}),
                "day": day,
                "kind": "external",
                **pair,
                "chosen_title_id": None,
                "rejected_title_id": None,
            }
        )
    return pl.DataFrame(rows, schema=PAIR_CANDIDATE_SCHEMA), rejects.frame(day)
