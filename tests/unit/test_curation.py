"""Curation rules: every reject is a quarantine row with a reason, nothing vanishes."""

from __future__ import annotations

import json
import re
from datetime import date

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.curation import (
    REASONS,
    CurationConfig,
    assign_splits,
    content_hash,
    content_hash_expr,
    curate,
    parse_external_jsonl,
)
from core.schemas import CONVERSATION_QUARANTINE_SCHEMA, CONVERSATIONS_SCHEMA, MESSAGES_DTYPE, SPLITS

DAY = date(2024, 3, 1)
CFG = CurationConfig()


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def s(text: str) -> dict:
    return {"role": "system", "content": text}


def frame(rows: list[tuple]) -> pl.DataFrame:
    """rows of (conversation_id, member_id, messages)."""
    return pl.DataFrame(
        {
            "conversation_id": [r[0] for r in rows],
            "day": [DAY] * len(rows),
            "kind": ["test"] * len(rows),
            "member_id": [r[1] for r in rows],
            "messages": [r[2] for r in rows],
        },
        schema={
            "conversation_id": pl.String,
            "day": pl.Date,
            "kind": pl.String,
            "member_id": pl.String,
            "messages": MESSAGES_DTYPE,
        },
    )


def run(rows: list[tuple], **kw) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    cur, q, stats = curate(frame(rows), DAY, kw.pop("cfg", CFG), **kw)
    assert stats["rows_in"] == stats["rows_out"] + stats["quarantined"] == len(rows)
    assert stats["quarantined"] == sum(stats[f"quarantined_{r}"] for r in REASONS)
    assert dict(cur.schema) == CONVERSATIONS_SCHEMA
    assert dict(q.schema) == CONVERSATION_QUARANTINE_SCHEMA
    return cur, q, stats


def only_reject(messages: list[dict] | None, cfg: CurationConfig = CFG, cid: str | None = "c1") -> dict:
    cur, q, _ = run([(cid, "m1", messages)], cfg=cfg)
    assert cur.height == 0 and q.height == 1
    return q.row(0, named=True)


# ---------------------------------------------------------------- reason codes


@pytest.mark.parametrize(
    ("messages", "reason", "detail_part"),
    [
        (None, "empty_conversation", "empty"),
        ([], "empty_conversation", "empty"),
        ([u("hi"), {"role": "bot", "content": "x"}], "bad_role", "message 2 has role 'bot'"),
        ([u("hi"), {"role": None, "content": "x"}], "bad_role", "message 2 has role null"),
        ([u("hi"), {"role": "tool", "content": "x"}, a("y")], "bad_role", "'tool'"),
        ([u("hi"), a(" \t \n ")], "empty_turn", "message 2"),
        ([u("hi"), {"role": "assistant", "content": None}], "empty_turn", "message 2"),
        ([u("hi"), u("again"), a("x")], "bad_alternation", "message 2 has role 'user' where 'assistant'"),
        ([a("hello"), u("hi"), a("x")], "bad_alternation", "message 1 has role 'assistant' where 'user'"),
        ([s("sys"), u("hi"), s("sys2"), a("x")], "bad_alternation", "message 3 has role 'system'"),
        ([s("a"), s("b"), u("hi"), a("x")], "bad_alternation", "message 2"),
        ([u("hi")], "no_assistant_turn", "no assistant"),
        ([s("sys"), u("hi")], "no_assistant_turn", "no assistant"),
        ([s("sys")], "no_assistant_turn", "no assistant"),
        ([u("hi"), a("x"), u("and?")], "ends_with_user", "message (3 of 3)"),
        ([u("x" * 4001), a("y")], "too_long", "message 1 has 4001 characters, over max_message_chars=4000"),
        ([u("x" * 3000), a("y" * 3000)] * 3, "too_long", "18000 characters in total"),
    ],
)
def test_each_reason_code(messages: list[dict] | None, reason: str, detail_part: str) -> None:
    row = only_reject(messages)
    assert row["reason"] == reason
    assert detail_part in row["detail"]
    assert row["conversation_id"] == "c1" and row["day"] == DAY
    payload = json.loads(row["payload"])
    assert payload["conversation_id"] == "c1" and payload["messages"] == messages  # raw, as given


def test_missing_id() -> None:
    for cid in (None, "  "):
        assert only_reject([u("hi"), a("x")], cid=cid)["reason"] == "missing_id"


def test_trailing_user_is_rejected_but_leading_system_is_fine() -> None:
    cur, _, _ = run([("c1", None, [s("be nice"), u("hi"), a("hello"), u("more"), a("sure")])])
    assert cur["messages"].list.len().to_list() == [5]


def test_first_failing_rule_wins_and_every_row_is_accounted_for() -> None:
    rows = [
        ("ok", "m1", [u("hi"), a("hello")]),
        ("role+empty", "m2", [u(""), {"role": "bot", "content": "x"}]),  # bad_role checked first
        ("dup", "m3", [u("HI "), a("hello")]),
        ("long", "m4", [u("x" * 5000)]),  # no_assistant_turn before too_long
    ]
    cur, q, stats = run(rows)
    assert cur["conversation_id"].to_list() == ["ok"]
    assert dict(zip(q["conversation_id"], q["reason"], strict=True)) == {
        "role+empty": "bad_role",
        "dup": "duplicate",
        "long": "no_assistant_turn",
    }
    assert stats["quarantined_bad_role"] == stats["quarantined_duplicate"] == 1


def test_min_content_chars_and_custom_bounds() -> None:
    cfg = CurationConfig(min_content_chars=3, max_message_chars=10, max_conversation_chars=15)
    assert only_reject([u("hi"), a("hello")], cfg=cfg)["reason"] == "empty_turn"
    assert only_reject([u("hey"), a("hello there!")], cfg=cfg)["reason"] == "too_long"
    assert only_reject([u("hey you"), a("hello you")], cfg=cfg)["reason"] == "too_long"


# ------------------------------------------------------------- normalization


def test_nfc_and_whitespace_normalization() -> None:
    messages = [
        {"role": " User ", "content": "  Cafe\u0301\t\tcrème   brûlée \r\nline two\r\n\r\n\r\n\r\nend  "},
        {"role": "ASSISTANT", "content": "a\u00a0\u00a0b\x00c\u200b\nd \n e"},
    ]
    cur, _, _ = run([("c1", "m1", messages)])
    out = cur["messages"][0].to_list()
    assert out[0] == {"role": "user", "content": "Café crème brûlée\nline two\n\nend"}
    assert out[0]["content"].startswith("Caf\u00e9")  # composed, not e + combining accent
    assert out[1] == {"role": "assistant", "content": "a bc\nd\ne"}


def test_clean_rows_are_unchanged() -> None:
    messages = [s("You help."), u("Line one\nLine two\n\nPara"), a("Amélie (2001) is a movie.")]
    cur, _, _ = run([("c1", "m1", messages)])
    assert cur["messages"][0].to_list() == messages


# ---------------------------------------------------------------------- PII


@pytest.mark.parametrize(
    ("text", "expected", "emails", "phones"),
    [
        ("mail me: jane.doe+tv@example.co.uk!", "mail me: [EMAIL]!", 1, 0),
        ("a@b.io and c_d@sub.example.org", "[EMAIL] and [EMAIL]", 2, 0),
        ("call +44 20 7946 0958 now", "call [PHONE] now", 0, 1),
        ("call +1 (415) 555-0123", "call [PHONE]", 0, 1),
        ("call +1 415 555 0199.", "call [PHONE].", 0, 1),
        ("or +4915112345678", "or [PHONE]", 0, 1),
        ("US 555-123-4567, (555) 123-4567 or 555.123.4567", "US [PHONE], [PHONE] or [PHONE]", 0, 3),
        ("toll free 1-800-555-1234", "toll free [PHONE]", 0, 1),
        ("both x@y.com +33 1 42 68 53 00", "both [EMAIL] [PHONE]", 1, 1),
    ],
)
def test_pii_is_scrubbed_and_counted(text: str, expected: str, emails: int, phones: int) -> None:
    cur, _, stats = run([("c1", "m1", [u(text), a("ok")])])
    assert cur["messages"][0][0]["content"] == expected
    assert (stats["pii_emails"], stats["pii_phones"]) == (emails, phones)


@pytest.mark.parametrize(
    "text",
    [
        "Heat (1995) is great",
        "rated 4.5 out of 5",
        "best of the 1990s",
        "ran from 1999-2003",
        "S01E02, top 10, 2 hours 15 minutes",
        "episode 12 of 24, pi is 3.14159",
        "20,000 Leagues Under the Sea (1954)",
        "version 2.0.1 released 2021-06-30",
        "100 titles, 250 reviews, 4000 plays",
        "Movies from 1980 1990 2000",
        "email-like but not: user@localhost",
    ],
)
def test_pii_non_examples_are_left_alone(text: str) -> None:
    cur, _, stats = run([("c1", "m1", [u(text), a("ok")])])
    assert cur["messages"][0][0]["content"] == text
    assert stats["pii_emails"] == stats["pii_phones"] == 0


def test_quarantine_payload_is_scrubbed_too() -> None:
    row = only_reject([u("reach me at bob@example.com or +44 20 7946 0958")])
    assert "bob@" not in row["payload"] and "7946" not in row["payload"]
    assert "[EMAIL]" in row["payload"] and "[PHONE]" in row["payload"]
    phone_only = only_reject([u("call me: +44 20 7946 0958")])
    assert "7946" not in phone_only["payload"] and "[PHONE]" in phone_only["payload"]


def test_pii_scrubbing_does_not_reject() -> None:
    cur, q, stats = run([("c1", "m1", [u("I'm at x@y.com"), a("Noted.")])])
    assert cur.height == 1 and q.height == 0 and stats["pii_emails"] == 1


# --------------------------------------------------------------------- dedupe


def test_dedupe_within_batch_keeps_the_first_in_input_order() -> None:
    rows = [
        ("b", "m1", [u("Hello  World"), a("Hi")]),
        ("a", "m2", [u("hello world"), a("hi")]),  # same after casefold + whitespace
        ("c", "m3", [u("hello\nworld"), a("HI")]),
        ("d", "m4", [u("hello world!"), a("hi")]),  # different
    ]
    cur, q, stats = run(rows)
    assert cur["conversation_id"].to_list() == ["b", "d"]
    assert q["conversation_id"].to_list() == ["a", "c"]
    assert set(q["reason"]) == {"duplicate"}
    assert all("conversation_id b" in d for d in q["detail"])
    assert stats["quarantined_duplicate"] == 2


def test_role_matters_for_the_hash() -> None:
    assert content_hash([u("x"), a("y")]) != content_hash([s("x"), u("x"), a("y")])
    assert content_hash([u("x"), a("y")]) == content_hash([u(" X "), a("Y")])
    assert content_hash([u("x y"), a("z")]) != content_hash([u("xy"), a("z")])


def test_content_hash_matches_curated_column_and_expr() -> None:
    rows = [("c1", "m1", [u("Café  au lait"), a("Sure.")]), ("c2", None, [u("e\u0301"), a("ok")])]
    cur, _, _ = run(rows)
    again = cur.select(content_hash_expr("messages")).to_series()
    assert again.to_list() == cur["content_hash"].to_list()
    assert content_hash(rows[0][2]) == cur["content_hash"][0]  # raw input hashes like its curated form
    assert all(len(h) == 64 for h in cur["content_hash"])


def test_duplicates_of_earlier_days() -> None:
    day1, _, _ = run([("c1", "m1", [u("hi"), a("there")])])
    rows = [("c9", "m2", [u("HI"), a("there ")]), ("c10", "m2", [u("new"), a("one")])]
    cur, q, stats = run(rows, seen_hashes=day1["content_hash"].to_list())
    assert cur["conversation_id"].to_list() == ["c10"]
    assert q.row(0, named=True)["reason"] == "duplicate_of_earlier_day"
    assert day1["content_hash"][0] in q.row(0, named=True)["detail"]
    assert stats["quarantined_duplicate_of_earlier_day"] == 1
    # a polars Series works as well as a list
    _, q2, _ = run(rows, seen_hashes=day1["content_hash"])
    assert q2.height == 1


def test_duplicate_id_with_different_content() -> None:
    cur, q, _ = run([("same", "m1", [u("one"), a("x")]), ("same", "m1", [u("two"), a("x")])])
    assert cur.height == 1 and q.row(0, named=True)["reason"] == "duplicate_id"


# ---------------------------------------------------------------------- splits


def test_split_fractions_are_close_to_config() -> None:
    keys = pl.Series([f"member-{i}" for i in range(20000)])
    splits = assign_splits(keys, CFG)
    share = splits.value_counts(normalize=True)
    got = dict(zip(share["split"], share["proportion"], strict=True))
    for name, want in zip(SPLITS, CFG.split_fractions, strict=True):
        assert abs(got.get(name, 0.0) - want) < 0.01, got


def test_split_salt_reshuffles_and_degenerate_fractions() -> None:
    keys = pl.Series([f"k{i}" for i in range(2000)])
    a1 = assign_splits(keys, CFG)
    a2 = assign_splits(keys, CurationConfig(split_salt="split-v2"))
    assert (a1 != a2).sum() > 100
    assert set(assign_splits(keys, CurationConfig(split_fractions=(1.0, 0.0, 0.0)))) == {"train"}
    assert set(assign_splits(keys, CurationConfig(split_fractions=(0.0, 0.0, 1.0)))) == {"test"}


def test_split_is_by_member_else_conversation() -> None:
    rows = [(f"c{i}", "same-member", [u(f"q{i}"), a("x")]) for i in range(50)]
    rows += [(f"n{i}", None, [u(f"other {i}"), a("x")]) for i in range(300)]
    cur, _, _ = run(rows)
    member = cur.filter(pl.col("member_id") == "same-member")
    assert member["split"].n_unique() == 1
    anon = cur.filter(pl.col("member_id").is_null())
    assert anon["split"].n_unique() == 3  # spread by conversation_id
    expected = assign_splits(anon["conversation_id"], CFG)
    assert anon["split"].to_list() == expected.to_list()


@settings(max_examples=30, deadline=None)
@given(
    members=st.lists(st.text(min_size=1, max_size=12).filter(lambda x: x.strip()), min_size=1, max_size=40),
    data=st.data(),
)
def test_member_never_in_two_splits_and_reruns_never_move_rows(members: list[str], data: st.DataObject) -> None:
    rows = [(f"c{i}", m, [u(f"question {i}"), a("answer")]) for i, m in enumerate(members)]
    cur, _, _ = run(rows)
    assert cur.group_by("member_id").agg(pl.col("split").n_unique())["split"].max() == 1
    # a re-run over a shuffled subset (another batch, another day) gives the same splits
    subset = data.draw(st.permutations(rows)).copy()[: max(1, len(rows) // 2)]
    again, _, _ = run(subset)
    before = dict(zip(cur["conversation_id"], cur["split"], strict=True))
    assert all(before[c] == sp for c, sp in zip(again["conversation_id"], again["split"], strict=True))


def test_assign_splits_rejects_null_keys() -> None:
    with pytest.raises(ValueError, match="null keys"):
        assign_splits(pl.Series(["a", None]), CFG)


# ------------------------------------------------------------ stats, config


def test_stats_add_up_on_a_mixed_batch() -> None:
    rows = [
        ("ok1", "m1", [u("hi there"), a("hello")]),
        ("ok2", None, [s("sys"), u("what?"), a("this, x@y.com")]),
        ("bad1", "m2", [u("hi")]),
        ("bad2", "m3", [u("hi"), u("hi")]),
        ("bad3", "m3", None),
        ("dup", "m4", [u("Hi there"), a("hello")]),
    ]
    cur, q, stats = run(rows)
    assert stats["rows_in"] == 6 and stats["rows_out"] == 2 and stats["quarantined"] == 4
    assert stats["pii_emails"] == 1
    assert sum(stats[f"split_{sp}"] for sp in SPLITS) == stats["rows_out"]
    assert sorted(cur["conversation_id"].to_list() + q["conversation_id"].to_list()) == sorted(r[0] for r in rows)


def test_empty_batch_and_missing_columns() -> None:
    cur, q, stats = run([])
    assert cur.height == q.height == stats["rows_in"] == 0
    with pytest.raises(ValueError, match=r"missing columns \['messages'\]"):
        curate(pl.DataFrame({"conversation_id": ["x"], "kind": ["k"], "member_id": [None]}), DAY, CFG)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="split_fractions"):
        CurationConfig(split_fractions=(0.9, 0.2, 0.05))
    with pytest.raises(ValueError, match="split_fractions"):
        CurationConfig(split_fractions=(1.1, -0.1, 0.0))
    with pytest.raises(ValueError, match="min_content_chars"):
        CurationConfig(min_content_chars=0)


# ------------------------------------------------------------ external JSONL


def test_parse_external_jsonl_valid_invalid_and_blank_lines() -> None:
    good = {"messages": [u("What is Heat about?"), a("A heist film.")]}
    lines = [
        json.dumps(good),
        "",
        '{"messages": [{"role": "user", "content": "hi"}',  # truncated
        json.dumps({"messages": [u("hi"), a("x")], "member_id": "M7", "extra": 1}),
        json.dumps([1, 2]),
        json.dumps({"conversation": []}),
        json.dumps({"messages": ["hi"]}),
        json.dumps({"messages": [{"role": "user", "content": None}]}),
        json.dumps({"messages": [{"role": 3, "content": "x"}]}),
        json.dumps({"messages": [u("hi"), a("x")], "member_id": 42}),
        "not json at all, mail me at eve@example.com",
        "   \n",
    ]
    cand, q = parse_external_jsonl(lines, DAY, source="partner.jsonl")
    assert cand.height == 2 and q.height == 8
    assert set(cand["kind"]) == {"external"} and (cand["day"] == DAY).all()
    assert cand["member_id"].to_list() == [None, "M7"]
    assert cand["messages"][0].to_list() == good["messages"]
    assert dict(q.schema) == CONVERSATION_QUARANTINE_SCHEMA
    assert q["reason"].to_list() == ["invalid_json"] + ["bad_schema"] * 6 + ["invalid_json"]
    line_numbers = [int(d.split(":")[1]) for d in q["detail"]]
    assert line_numbers == [3, 5, 6, 7, 8, 9, 10, 11]
    assert all(d.startswith("partner.jsonl:") for d in q["detail"])
    assert "member_id" in q["detail"][6]
    assert q["payload"][0].startswith('{"messages"')
    assert "eve@" not in q["payload"][7] and "[EMAIL]" in q["payload"][7]


def test_external_ids_are_content_based_and_source_independent() -> None:
    line = json.dumps({"messages": [u("hi"), a("x")]})
    c1, _ = parse_external_jsonl([line], DAY, source="a.jsonl")
    c2, _ = parse_external_jsonl(["", line], date(2024, 3, 2), source="b.jsonl")
    c3, _ = parse_external_jsonl([json.dumps({"messages": [u("hi"), a("y")]})], DAY, source="a.jsonl")
    assert c1["conversation_id"][0] == c2["conversation_id"][0] != c3["conversation_id"][0]


def test_external_rows_go_through_curation() -> None:
    lines = [
        json.dumps({"messages": [u("hi"), {"role": "bot", "content": "x"}]}),
        json.dumps({"messages": [u("call me on +1 415 555 0123"), a("ok")], "member_id": "M1"}),
        json.dumps({"messages": [u("call me on +1 415 555 0123"), a("ok")], "member_id": "M1"}),
    ]
    cand, _ = parse_external_jsonl(lines, DAY, source="x.jsonl")
    cur, q, stats = curate(cand, DAY, CFG)
    assert cur.height == 1 and cur["messages"][0][0]["content"] == "call me on [PHONE]"
    assert sorted(q["reason"].to_list()) == ["bad_role", "duplicate"]
    assert stats["pii_phones"] == 2


# ------------------------------------------- issue 12: one bad line never fails a day


PARTNER_GOOD = json.dumps({"messages": [u("What is Heat about?"), a("A heist film.")]})
PARTNER_GOOD_2 = json.dumps({"messages": [u("And Ronin?"), a("Also a heist film.")]})


@pytest.mark.parametrize(
    ("bad_line", "where"),
    [
        # A JSON escape of half a UTF-16 pair: json.loads accepts it, but it is not text.
        (
            '{"messages": [{"role": "user", "content": "hi \\ud800"}, {"role": "assistant", "content": "x"}]}',
            "message 1",
        ),
        ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\\udfff"}]}', "message 2"),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], '
            '"member_id": "M\\udc80"}',
            "member_id",
        ),
        # A raw lone surrogate in a str line (a text-mode reader with errors="surrogateescape").
        ('{"messages": [{"role": "user", "content": "hi \udce9"}, {"role": "assistant", "content": "x"}]}', "line"),
        ("not json \udce9 at all", "line"),
    ],
)
def test_a_lone_surrogate_is_quarantined_and_the_rest_of_the_day_is_curated(bad_line: str, where: str) -> None:
    cand, q = parse_external_jsonl([PARTNER_GOOD, bad_line, PARTNER_GOOD_2], DAY, source="partner.jsonl")
    assert cand.height == 2
    assert q["reason"].to_list() == ["invalid_unicode"]
    assert q["detail"][0].startswith("partner.jsonl:2: ") and where in q["detail"][0]
    assert re.search(r"\\(u|x)[0-9a-f]{2}", q["payload"][0]), "the surrogate is shown escaped, not dropped"
    q["payload"][0].encode("utf-8")  # storable
    cur, cq, stats = curate(cand, DAY, CFG)
    assert cur.height == 2 and cq.height == 0 and stats["rows_in"] == 2


def test_bytes_lines_are_decoded_strictly_and_undecodable_lines_are_quarantined() -> None:
    latin = json.dumps({"messages": [u("Jos\u00e9?"), a("yes")]}, ensure_ascii=False).encode("latin-1")
    lines = [PARTNER_GOOD.encode(), latin, PARTNER_GOOD_2.encode() + b"\n"]
    cand, q = parse_external_jsonl(lines, DAY, source="partner.jsonl")
    assert cand.height == 2, "the undecodable line must not become a candidate with U+FFFD in it"
    assert q["reason"].to_list() == ["encoding_error"]
    detail = q["detail"][0]
    assert detail.startswith("partner.jsonl:2: ") and "utf-8" in detail and "0xe9" in detail
    assert "Jos\\xe9" in q["payload"][0]

    cand, q = parse_external_jsonl(lines[1:2], DAY, source="partner.jsonl", encoding="latin-1")
    assert q.height == 0 and cand["messages"][0][0]["content"] == "Jos\u00e9?"
    cand, q = parse_external_jsonl([b"\xef\xbb\xbf" + PARTNER_GOOD.encode()], DAY, source="bom.jsonl")
    assert cand.height == 1 and q.height == 0, "a UTF-8 byte order mark is not content"


def test_two_spellings_that_differ_only_in_undecodable_bytes_are_never_merged() -> None:
    lines = [
        json.dumps({"messages": [u(f"hi, I am {name}"), a("ok")], "member_id": name}, ensure_ascii=False).encode(
            "latin-1"
        )
        for name in ("Jos\u00e9", "Jos\u00e8")
    ]
    cand, q = parse_external_jsonl(lines, DAY, source="p.jsonl")
    assert cand.height == 0 and q["reason"].to_list() == ["encoding_error"] * 2
    cand, q = parse_external_jsonl(lines, DAY, source="p.jsonl", encoding="latin-1")
    assert q.height == 0 and sorted(cand["member_id"].to_list()) == ["Jos\u00e8", "Jos\u00e9"]
    cur, _, _ = curate(cand, DAY, CFG)
    assert cur["member_id"].n_unique() == 2


def test_the_encoding_name_is_validated_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown encoding 'utf-9'.*latin-1"):
        parse_external_jsonl([PARTNER_GOOD], DAY, source="p.jsonl", encoding="utf-9")
    with pytest.raises(ValueError, match=r"'base64' is not a text encoding"):
        parse_external_jsonl([PARTNER_GOOD], DAY, source="p.jsonl", encoding="base64")
    with pytest.raises(ValueError, match=r"utf-16.*one line per record"):
        parse_external_jsonl([PARTNER_GOOD.encode("utf-16")], DAY, source="p.jsonl", encoding="utf-16")


def test_a_number_too_long_to_parse_is_invalid_json_not_a_crash() -> None:
    """json.loads raises a plain ValueError (not JSONDecodeError) past Python's int-digit limit."""
    line = '{"messages": [], "n": ' + "9" * 5000 + "}"
    cand, q = parse_external_jsonl([PARTNER_GOOD, line], DAY, source="p.jsonl")
    assert cand.height == 1 and q["reason"].to_list() == ["invalid_json"]
    assert q["detail"][0].startswith("p.jsonl:2: ")


def test_too_many_turns_is_a_reject_with_the_count_and_the_cap() -> None:
    # 10,000 one-character turns stay under max_conversation_chars but would make tokenizing quadratic.
    many = [u("a"), a("b")] * 5000
    row = only_reject(many)
    assert row["reason"] == "too_many_turns"
    assert "10000 messages" in row["detail"] and "max_turns=64" in row["detail"]
    cfg = CurationConfig(max_turns=5)
    assert only_reject([s("sys"), u("a"), a("b"), u("c"), a("d"), u("e")], cfg=cfg)["reason"] == "too_many_turns"
    cur, _, _ = run([("c1", "m1", [s("sys"), u("a"), a("b"), u("c"), a("d")])], cfg=cfg)
    assert cur.height == 1, "exactly max_turns messages pass"
    with pytest.raises(ValueError, match="max_turns"):
        CurationConfig(max_turns=1)


def test_the_default_turn_cap_admits_every_conversation_the_demo_builds() -> None:
    from core.conversation_builder import BuilderConfig

    biggest = 1 + 2 * 4  # a system turn plus BuilderConfig's largest allowed max_exchanges
    with pytest.raises(ValueError):
        BuilderConfig(max_exchanges=5)
    assert BuilderConfig().max_exchanges <= 4 and CurationConfig().max_turns >= biggest


def test_quarantine_payloads_are_capped_with_the_original_length_kept() -> None:
    from core.schemas import QUARANTINE_PAYLOAD_MAX_CHARS as CAP

    huge = "x" * (3 * CAP)
    cfg = CurationConfig(max_message_chars=10 * CAP, max_conversation_chars=10 * CAP)
    cur, q, _ = run([("big", "m1", [u(huge)]), ("small", "m2", [u("hi")])], cfg=cfg)
    assert cur.height == 0
    big, small = q.row(0, named=True), q.row(1, named=True)
    assert len(big["payload"]) == CAP and big["payload_truncated"] is True
    assert big["payload_chars"] > 3 * CAP and big["payload"].startswith('{"conversation_id":"big"')
    assert small["payload_truncated"] is False and small["payload_chars"] == len(small["payload"])
    json.loads(small["payload"])

    line = '{"messages": "' + huge + '"'  # not JSON: no closing brace
    _, pq = parse_external_jsonl([line], DAY, source="p.jsonl")
    row = pq.row(0, named=True)
    assert row["reason"] == "invalid_json" and row["payload_chars"] == len(line)
    assert len(row["payload"]) == CAP and row["payload_truncated"] is True


def test_a_candidates_frame_of_the_wrong_shape_is_a_clear_error() -> None:
    bad = pl.DataFrame({"conversation_id": ["c1"], "kind": ["k"], "member_id": [None], "messages": [["hi", "x"]]})
    with pytest.raises(ValueError, match=r"'messages': 'List\(String\)'.*expected .*messages"):
        curate(bad, DAY, CFG)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "UTF-8-SIG", "utf_8_sig"])
def test_utf8_sig_is_a_jsonl_encoding_and_its_mark_is_not_content(encoding: str) -> None:
    """utf-8-sig writes newline as one byte like UTF-8; only the encoder's leading mark differs."""
    from core.landing_files import conversation_encoding

    lines = [b"\xef\xbb\xbf" + PARTNER_GOOD.encode() + b"\n", PARTNER_GOOD_2.encode() + b"\n"]
    cand, q = parse_external_jsonl(lines, DAY, source="bom.jsonl", encoding=encoding)
    assert q.height == 0 and cand.height == 2
    assert cand["messages"][0][0]["content"] == json.loads(PARTNER_GOOD)["messages"][0]["content"]
    assert conversation_encoding(encoding, "CONVERSATION_ENCODING") == encoding


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-32-be"])
def test_encodings_that_widen_newline_are_still_refused(encoding: str) -> None:
    with pytest.raises(ValueError, match=rf"{encoding}.*one line per record"):
        parse_external_jsonl([PARTNER_GOOD.encode(encoding)], DAY, source="p.jsonl", encoding=encoding)


def test_a_text_another_day_holds_is_reported_as_curated_on_another_day() -> None:
    """Cross-day dedup keeps a text on the first day to commit it, which may be a later day."""
    day1, _, _ = run([("c1", "m1", [u("hi"), a("there")])])
    _, q, _ = run([("c9", "m2", [u("hi"), a("there")])], seen_hashes=day1["content_hash"])
    assert q["reason"].to_list() == ["duplicate_of_earlier_day"]  # the code name stays, for dashboards and queries
    assert q["detail"].to_list() == [f"content_hash {day1['content_hash'][0]} was already curated on another day"]
