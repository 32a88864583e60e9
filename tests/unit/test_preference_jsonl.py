"""External preference JSONL: each line a pair of kind external, or a quarantine row saying which line and why."""

from __future__ import annotations

import json
from datetime import date

import polars as pl
import pytest

from core.preferences import PAIR_CANDIDATE_SCHEMA, parse_preference_jsonl
from core.schemas import CONVERSATION_QUARANTINE_SCHEMA

DAY = date(2026, 1, 1)
SOURCE = "partner-pairs.jsonl"

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Something like Heat?"}]
CHOSEN = [{"role": "assistant", "content": "Try Ronin (1998)."}]
REJECTED = [{"role": "assistant", "content": "Try Big (1988)."}]


def line(**fields: object) -> str:
    return json.dumps({"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED, **fields})


def parse(lines: list[str | bytes]) -> tuple[pl.DataFrame, pl.DataFrame]:
    return parse_preference_jsonl(lines, DAY, source=SOURCE)


def test_valid_lines_with_and_without_member_parse_as_external_pairs() -> None:
    pairs, quarantine = parse([line(), "", line(member_id="M7")])
    assert quarantine.height == 0
    assert dict(pairs.schema) == PAIR_CANDIDATE_SCHEMA
    assert pairs["kind"].to_list() == ["external", "external"]
    assert pairs["day"].to_list() == [DAY, DAY]
    assert pairs["member_id"].to_list() == [None, "M7"]
    for row in pairs.iter_rows(named=True):
        assert (row["prompt"], row["chosen"], row["rejected"]) == (PROMPT, CHOSEN, REJECTED)
        assert row["chosen_title_id"] is None and row["rejected_title_id"] is None
    assert pairs["pair_id"].n_unique() == 2, "the member is part of a pair's identity"


def test_the_same_pair_gets_the_same_id_whatever_the_file_or_day() -> None:
    first, _ = parse([line(member_id="M1")])
    again, _ = parse_preference_jsonl(["", line(member_id="M1")], date(2026, 2, 3), source="other.jsonl")
    swapped, _ = parse([json.dumps({"prompt": PROMPT, "chosen": REJECTED, "rejected": CHOSEN, "member_id": "M1"})])
    assert first["pair_id"][0] == again["pair_id"][0]
    assert swapped["pair_id"][0] != first["pair_id"][0], "chosen and rejected swapped is another pair"
    twice, _ = parse([line(), line()])
    assert twice.height == 2 and twice["pair_id"][0] == twice["pair_id"][1]


def _single_reject(lines: list[str | bytes], lineno: int) -> dict:
    pairs, quarantine = parse(lines)
    assert pairs.height == len([x for x in lines if x.strip()]) - 1, "one bad line never costs the others"
    assert dict(quarantine.schema) == CONVERSATION_QUARANTINE_SCHEMA
    assert quarantine.height == 1
    reject = quarantine.row(0, named=True)
    assert reject["detail"].startswith(f"{SOURCE}:{lineno}: ")
    assert reject["day"] == DAY and reject["conversation_id"] is None
    return reject


def test_a_line_that_is_not_json_is_invalid_json() -> None:
    reject = _single_reject([line(), '{"prompt": [{"role": "user"', line()], 2)
    assert reject["reason"] == "invalid_json"
    assert reject["payload"] == '{"prompt": [{"role": "user"'


def test_a_conversation_line_is_bad_schema_pointing_at_the_conversations_folder() -> None:
    messages = json.dumps({"messages": [*PROMPT, *CHOSEN]})
    reject = _single_reject([line(), messages], 2)
    assert reject["reason"] == "bad_schema"
    assert "'prompt'" in reject["detail"] and "'chosen'" in reject["detail"] and "'rejected'" in reject["detail"]
    assert "conversations folder" in reject["detail"]


def test_missing_fields_are_bad_schema_naming_exactly_those_fields() -> None:
    partial = json.dumps({"prompt": PROMPT, "chosen": CHOSEN})
    reject = _single_reject([partial, line()], 1)
    assert reject["reason"] == "bad_schema"
    assert "missing ['rejected']" in reject["detail"]


@pytest.mark.parametrize(
    ("record", "where"),
    [
        ({"prompt": PROMPT, "chosen": [{"role": "assistant", "content": 3}], "rejected": REJECTED}, "chosen message 1"),
        (
            {"prompt": [PROMPT[0], {"role": "user", "content": None}], "chosen": CHOSEN, "rejected": REJECTED},
            "prompt message 2",
        ),
        ({"prompt": PROMPT, "chosen": CHOSEN, "rejected": [{"role": 1, "content": "x"}]}, "rejected message 1"),
        ({"prompt": PROMPT, "chosen": CHOSEN, "rejected": ["Try Big."]}, "rejected message 1"),
        ({"prompt": "Something like Heat?", "chosen": CHOSEN, "rejected": REJECTED}, "'prompt' must be a list"),
        ({"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED, "member_id": 42}, "member_id"),
        ([PROMPT, CHOSEN, REJECTED], "expected a JSON object"),
    ],
)
def test_non_string_fields_are_bad_schema(record: object, where: str) -> None:
    reject = _single_reject([line(), json.dumps(record)], 2)
    assert reject["reason"] == "bad_schema"
    assert where in reject["detail"]


def test_undecodable_bytes_are_an_encoding_error_and_the_other_lines_are_read() -> None:
    latin = json.dumps(
        {"prompt": [{"role": "user", "content": "Jos\u00e9 here"}], "chosen": CHOSEN, "rejected": REJECTED},
        ensure_ascii=False,
    ).encode("latin-1")
    reject = _single_reject([line().encode(), latin, line(member_id="M2").encode() + b"\n"], 2)
    assert reject["reason"] == "encoding_error"
    assert "0xe9" in reject["detail"]
    pairs, quarantine = parse_preference_jsonl([latin], DAY, source=SOURCE, encoding="latin-1")
    assert quarantine.height == 0 and pairs["prompt"][0][0]["content"] == "Jos\u00e9 here"


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        (line().replace("Try Ronin", "Try \\ud800Ronin"), "chosen message 1 content"),
        (line().replace("Something like", "Something \\udfff like"), "prompt message 2 content"),
        (line(member_id="M1").replace('"M1"', '"M\\udc80"'), "member_id"),
        (line().replace("Try Big", "Try \udce9Big"), "lone surrogate"),  # a raw surrogate in a str line
    ],
)
def test_a_lone_surrogate_is_invalid_unicode(bad: str, where: str) -> None:
    reject = _single_reject([line(), bad], 2)
    assert reject["reason"] == "invalid_unicode"
    assert where in reject["detail"]
    reject["payload"].encode("utf-8")  # storable


def test_a_quarantined_line_keeps_no_email() -> None:
    reject = _single_reject(['{"prompt": "write me at eve@example.com"', line()], 1)
    assert "eve@example.com" not in reject["payload"] and "[EMAIL]" in reject["payload"]
