"""External JSONL conversations from the landing area: parsed line by line into candidates.

One bad line never fails the file: each line either becomes a candidate row for
``curate`` or a quarantine row with a ``PARSE_REASONS`` code and ``source:line``.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import polars as pl

from core.curation.pii import scrub_pii_expr
from core.ingest import decode_error_detail, escape_surrogates, first_surrogate, has_surrogates, text_encoding
from core.schemas import CONVERSATION_QUARANTINE_SCHEMA, MESSAGES_DTYPE, QUARANTINE_PAYLOAD_MAX_CHARS, conform

# Payload text kept past the quarantine cap until PII is scrubbed, so an address straddling the cut
# is still recognized and replaced before the final cut.
_PII_MARGIN_CHARS = 1024


def _external_messages(obj: Any) -> tuple[list[dict[str, str]] | None, str | None, str]:
    """Validate one decoded JSONL object: (messages, member_id, error)."""
    if not isinstance(obj, dict):
        return None, None, f"expected a JSON object with a 'messages' list, got {type(obj).__name__}"
    msgs = obj.get("messages")
    if not isinstance(msgs, list):
        return (
            None,
            None,
            f"'messages' must be a list of {{role, content}} objects, got {type(msgs).__name__}",
        )
    out: list[dict[str, str]] = []
    for i, m in enumerate(msgs, start=1):
        if not isinstance(m, dict):
            return None, None, f"message {i} must be an object with string 'role' and 'content'"
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            return (
                None,
                None,
                f"message {i} must have string 'role' and 'content' (got role={type(role).__name__}, "
                f"content={type(content).__name__})",
            )
        out.append({"role": role, "content": content})
    member = obj.get("member_id")
    if member is not None and not isinstance(member, str):
        return None, None, f"'member_id' must be a string or null, got {type(member).__name__}"
    return out, member, ""


def _surrogate_field(messages: list[dict[str, str]], member: str | None) -> str | None:
    """Which decoded field holds a lone surrogate (a JSON escape such as \\ud800 that json.loads accepts)."""
    for i, m in enumerate(messages, start=1):
        for key in ("role", "content"):
            if has_surrogates(m[key]):
                return f"message {i} {key}"
    if member is not None and has_surrogates(member):
        return "member_id"
    return None


def _jsonl_encoding(encoding: str) -> str:
    """The canonical codec name; refuses codecs that do not keep newline as the byte 0x0a, because the
    caller splits the file into lines before decoding (UTF-16/32 would split mid-character).

    Checked past the encoder's first output: utf-8-sig writes a byte order mark there and is otherwise
    UTF-8 (one byte per newline), so it is a JSONL encoding; UTF-16/32 widen every character.
    """
    name = text_encoding(encoding, "encoding")
    sample = '\n{"a"}'
    encoder = codecs.getincrementalencoder(name)()
    encoder.encode("")  # where a codec writes its byte order mark, if it has one
    try:
        decoded = sample.encode("ascii").decode(name)
    except UnicodeDecodeError:
        decoded = None
    if encoder.encode(sample) != sample.encode("ascii") or decoded != sample:
        raise ValueError(
            f"encoding {encoding!r} does not write newline and ASCII as single bytes, so a JSONL file in it "
            "cannot be read one line per record; convert the file to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"
        )
    return name


@dataclass(frozen=True)
class JsonlRecord:
    """One decoded JSON value of a JSONL file, with where it came from."""

    lineno: int
    value: Any
    line: str  # the stripped text of the line, for a quarantine payload


class JsonlRejects:
    """Quarantine rows of a JSONL file: reason, ``source:line: detail``, payload (cut) and its length."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.rows: list[tuple[str, str, str, int]] = []

    def add(self, reason: str, lineno: int, detail: str, payload: str) -> None:
        keep = QUARANTINE_PAYLOAD_MAX_CHARS + _PII_MARGIN_CHARS  # scrub PII before the final cut
        self.rows.append((reason, f"{self.source}:{lineno}: {detail}", payload[:keep], len(payload)))

    def frame(self, day: date) -> pl.DataFrame:
        """The rejects as ``CONVERSATION_QUARANTINE_SCHEMA`` rows (no id: the line never became a record)."""
        rows = self.rows
        rejected = pl.DataFrame(
            {
                "conversation_id": [None] * len(rows),
                "day": [day] * len(rows),
                "reason": [r[0] for r in rows],
                "detail": [r[1] for r in rows],
                "payload": [r[2] for r in rows],
                "payload_chars": [r[3] for r in rows],
            },
            schema={
                "conversation_id": pl.String,
                "day": pl.Date,
                "reason": pl.String,
                "detail": pl.String,
                "payload": pl.String,
                "payload_chars": pl.Int64,
            },
        ).with_columns(scrub_pii_expr(pl.col("payload")).alias("payload"))
        return conform(rejected, CONVERSATION_QUARANTINE_SCHEMA)


def jsonl_records(lines: Iterable[str | bytes], encoding: str, rejects: JsonlRejects) -> Iterator[JsonlRecord]:
    """The JSON values of the non-blank lines; a line that is not one goes to ``rejects`` instead.

    A line is rejected when its bytes do not decode strictly with ``encoding`` (``encoding_error``; ``bytes``
    lines only), when it holds lone surrogates, raw or as JSON escapes (``invalid_unicode``: they are not text
    and cannot be hashed or stored), or when it is not JSON (``invalid_json``). Blank lines are skipped and
    counted nowhere. Escaped surrogates inside the decoded value are the caller's to check
    (``first_surrogate_field``), since only it knows which fields are text.
    """
    codec = _jsonl_encoding(encoding)
    for lineno, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                text = raw.decode(codec)
            except UnicodeDecodeError as exc:
                rejects.add(
                    "encoding_error",
                    lineno,
                    f"{decode_error_detail(exc, codec)}; the line was not read. If the whole file uses another "
                    "encoding, set CONVERSATION_ENCODING (e.g. latin-1 or cp1252); otherwise fix or remove the line",
                    raw.decode(codec, errors="backslashreplace").strip(),
                )
                continue
        else:
            text = raw
        line = text.strip().lstrip("\ufeff")  # a UTF-8 BOM on the first line is not content
        if not line:
            continue
        at = first_surrogate(line)
        if at is not None:
            rejects.add(
                "invalid_unicode",
                lineno,
                f"the line holds a lone surrogate code point at character {at + 1} (undecodable bytes read "
                "with errors='surrogateescape', or half of a UTF-16 pair); it is not text and cannot be stored. "
                "Pass the file's lines as bytes, or fix the producer",
                escape_surrogates(line),
            )
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, too-long integers, too-deep nesting
            rejects.add("invalid_json", lineno, f"not valid JSON ({str(exc)[:200]}); fix or remove the line", line)
            continue
        yield JsonlRecord(lineno, value, line)


def reject_surrogates(record: JsonlRecord, where: str | None, rejects: JsonlRejects) -> bool:
    """Quarantine ``record`` as ``invalid_unicode`` when ``where`` names a field holding a lone surrogate."""
    if where is None:
        return False
    rejects.add(
        "invalid_unicode",
        record.lineno,
        f"{where} holds a lone surrogate (a \\uD800-\\uDFFF JSON escape that is half of a UTF-16 "
        "pair, not a character); the producer must escape whole characters (both halves of the pair)",
        record.line,
    )
    return True


def record_id(record: dict[str, Any]) -> str:
    """A stable id of a parsed record: the same record dropped twice gets the same id (and is a duplicate)."""
    key = json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def parse_external_jsonl(
    lines: Iterable[str | bytes], day: date, source: str, encoding: str = "utf-8"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parse landing-area JSONL (``{"messages": [...], "member_id"?: str}`` per line).

    Returns (candidate rows with kind ``external`` ready for ``curate``, quarantine rows). One bad
    line never fails the file: a line is quarantined, with ``source:line`` in the detail, when it is not
    a JSON line (``jsonl_records``) or not the messages format (``bad_schema``).

    The conversation_id hashes the member and the messages, not the source file, so the same record
    dropped twice gets the same id (and is caught as a duplicate).
    """
    rejects = JsonlRejects(source)
    ids: list[str] = []
    members: list[str | None] = []
    messages: list[list[dict[str, str]]] = []
    for record in jsonl_records(lines, encoding, rejects):
        msgs, member, err = _external_messages(record.value)
        if msgs is None:
            rejects.add("bad_schema", record.lineno, err, record.line)
            continue
        if reject_surrogates(record, _surrogate_field(msgs, member), rejects):
            continue
        ids.append(record_id({"kind": "external", "member_id": member, "messages": msgs}))
        members.append(member)
        messages.append(msgs)
    candidates = pl.DataFrame(
        {
            "conversation_id": ids,
            "day": [day] * len(ids),
            "kind": ["external"] * len(ids),
            "member_id": members,
            "messages": messages,
        },
        schema={
            "conversation_id": pl.String,
            "day": pl.Date,
            "kind": pl.String,
            "member_id": pl.String,
            "messages": MESSAGES_DTYPE,
        },
    )
    return candidates, rejects.frame(day)
