"""curate_pairs: the conversation rules on each side, the pair rules, duplicates, PII and member splits."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from core.curation import PAIR_REASONS, REASONS, CurationConfig, assign_splits, curate
from core.preferences import PAIR_CANDIDATE_SCHEMA, PairBuilderConfig, behaviour_pairs, curate_pairs
from core.schemas import (
    CONVERSATION_QUARANTINE_SCHEMA,
    CONVERSATIONS_SCHEMA,
    INTERACTIONS_SCHEMA,
    PREFERENCE_PAIRS_SCHEMA,
    conform,
)

DAY = date(2026, 1, 1)
CFG = CurationConfig()


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def s(text: str) -> dict:
    return {"role": "system", "content": text}


PROMPT = [s("Be brief."), u("I just watched Heat (1995). What next?")]
CHOSEN = [a("You might enjoy these next:\n1. Ronin (1998)")]
REJECTED = [a("You might enjoy these next:\n1. Big (1988)")]


def candidates(rows: list[tuple]) -> pl.DataFrame:
    """rows of (pair_id, member_id, prompt, chosen, rejected[, chosen_title_id, rejected_title_id])."""
    return pl.DataFrame(
        [
            {
                "pair_id": r[0],
                "day": DAY,
                "kind": "behaviour" if len(r) > 5 else "external",
                "member_id": r[1],
                "prompt": r[2],
                "chosen": r[3],
                "rejected": r[4],
                "chosen_title_id": r[5] if len(r) > 5 else None,
                "rejected_title_id": r[6] if len(r) > 5 else None,
            }
            for r in rows
        ],
        schema=PAIR_CANDIDATE_SCHEMA,
    )


def run(rows: list[tuple], cfg: CurationConfig = CFG, **kw) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    curated, quarantine, stats = curate_pairs(candidates(rows), DAY, cfg, **kw)
    assert stats["rows_in"] == len(rows)
    assert stats["rows_in"] == stats["rows_out"] + stats["quarantined"]
    assert stats["rows_out"] == curated.height and stats["quarantined"] == quarantine.height
    assert stats["quarantined"] == sum(stats[f"quarantined_{r}"] for r in (*REASONS, *PAIR_REASONS))
    assert sum(stats[f"split_{x}"] for x in ("train", "validation", "test")) == curated.height
    assert dict(curated.schema) == PREFERENCE_PAIRS_SCHEMA
    assert dict(quarantine.schema) == CONVERSATION_QUARANTINE_SCHEMA
    return curated, quarantine, stats


def only_reject(prompt: list[dict], chosen: list[dict], rejected: list[dict]) -> dict:
    curated, quarantine, stats = run([("p1", "M1", prompt, chosen, rejected)])
    assert curated.height == 0 and quarantine.height == 1
    row = quarantine.row(0, named=True)
    assert row["conversation_id"] == "p1" and row["day"] == DAY
    assert stats[f"quarantined_{row['reason']}"] == 1
    return row


def test_a_valid_pair_is_curated_as_given_with_its_member_split() -> None:
    curated, quarantine, stats = run([("p1", "M1", PROMPT, CHOSEN, REJECTED, "t2", "t4")])
    assert quarantine.height == 0 and stats["rows_out"] == 1
    row = curated.row(0, named=True)
    assert (row["prompt"], row["chosen"], row["rejected"]) == (PROMPT, CHOSEN, REJECTED)
    assert row["pair_id"] == "p1" and row["kind"] == "behaviour" and row["day"] == DAY
    assert (row["chosen_title_id"], row["rejected_title_id"]) == ("t2", "t4")
    assert row["split"] == assign_splits(pl.Series(["M1"]), CFG)[0]
    assert len(row["content_hash"]) == 64


def test_a_member_has_the_same_split_for_pairs_as_for_conversations() -> None:
    cfg = CurationConfig(split_fractions=(0.34, 0.33, 0.33))
    members = [f"M{i}" for i in range(30)]
    rows = [(f"p{i}", m, PROMPT, [a(f"Pick {i}.")], [a(f"Not {i}.")]) for i, m in enumerate(members)]
    rows += [(f"q{i}", m, [u(f"Again {i}?")], [a("Yes.")], [a("No.")]) for i, m in enumerate(members)]
    curated, _, stats = run(rows, cfg)
    assert curated.height == 60
    split_of = dict(zip(members, assign_splits(pl.Series(members), cfg).to_list(), strict=True))
    assert len(set(split_of.values())) == 3, "the members must spread over all splits for this test to mean much"
    for row in curated.iter_rows(named=True):
        assert row["split"] == split_of[row["member_id"]], row["pair_id"]
    assert {k: stats[f"split_{k}"] for k in split_of.values()} == {
        k: 2 * list(split_of.values()).count(k) for k in split_of.values()
    }

    conversations = pl.DataFrame(
        {
            "conversation_id": [f"c{i}" for i in range(len(members))],
            "day": [DAY] * len(members),
            "kind": ["recommendation"] * len(members),
            "member_id": members,
            "messages": [[u(f"hi {i}"), a("hello")] for i in range(len(members))],
        },
        schema={c: CONVERSATIONS_SCHEMA[c] for c in ("conversation_id", "day", "kind", "member_id", "messages")},
    )
    sft, _, _ = curate(conversations, DAY, cfg)
    assert dict(zip(sft["member_id"], sft["split"], strict=True)) == split_of


def test_a_pair_without_member_is_split_by_its_id() -> None:
    cfg = CurationConfig(split_fractions=(0.34, 0.33, 0.33))
    ids = [f"pair-{i}" for i in range(30)]
    rows = [(pid, "  " if i % 2 else None, [u(f"q {i}")], [a("yes")], [a("no")]) for i, pid in enumerate(ids)]
    curated, _, _ = run(rows, cfg)
    assert curated["member_id"].null_count() == 30, "a blank member is no member"
    expected = dict(zip(ids, assign_splits(pl.Series(ids), cfg).to_list(), strict=True))
    assert dict(zip(curated["pair_id"], curated["split"], strict=True)) == expected


@pytest.mark.parametrize(
    ("chosen", "rejected"),
    [
        ([a("You might enjoy:\n1. Ronin (1998)")], [a("You  might enjoy:\n1.   Ronin (1998)  ")]),
        ([a("Ronin (1998)")], [a("Ronin\u00a0(1998)\t")]),
        ([a("Write me at eve@example.com")], [a("Write me at bob@example.org")]),  # equal once scrubbed
    ],
)
def test_completions_equal_after_normalization_are_same_completion(chosen: list[dict], rejected: list[dict]) -> None:
    row = only_reject(PROMPT, chosen, rejected)
    assert row["reason"] == "same_completion"
    assert "same text" in row["detail"]


@pytest.mark.parametrize(
    ("prompt", "chosen", "rejected", "side"),
    [
        # two assistant turns in a completion, alternating with a user turn in between
        (PROMPT, [a("Ronin."), u("And?"), a("Heat.")], REJECTED, "chosen"),
        (PROMPT, CHOSEN, [a("Big."), u("And?"), a("Jaws.")], "rejected"),
        # completions that open with a user turn (after a prompt ending with an answer)
        ([u("Hi"), a("Hello")], [u("Ronin?"), a("Yes.")], [u("Big?"), a("No.")], "chosen"),
    ],
)
def test_a_completion_that_is_not_one_assistant_message_is_bad_completion(
    prompt: list[dict], chosen: list[dict], rejected: list[dict], side: str
) -> None:
    row = only_reject(prompt, chosen, rejected)
    assert row["reason"] == "bad_completion"
    assert row["detail"].startswith(f"{side} must be exactly one assistant message")


@pytest.mark.parametrize(
    ("prompt", "chosen", "rejected", "reason", "detail_start"),
    [
        ([s("Be brief."), u("   ")], CHOSEN, REJECTED, "empty_turn", "chosen: message 2"),
        (PROMPT, CHOSEN, [a(" \n ")], "empty_turn", "rejected: message 3"),
        ([u("Hi"), a("Hello")], CHOSEN, REJECTED, "bad_alternation", "chosen: message 3"),
        ([u("Hi"), a("Hello")], [a("Ronin."), a("Heat.")], REJECTED, "bad_alternation", "chosen: "),
        ([], CHOSEN, REJECTED, "bad_alternation", "chosen: message 1"),
        (PROMPT, [u("Ronin?")], REJECTED, "bad_alternation", "chosen: message 3"),
        (PROMPT, CHOSEN, [], "no_assistant_turn", "rejected: "),
        (PROMPT, [{"role": "bot", "content": "x"}], REJECTED, "bad_role", "chosen: message 3"),
        (PROMPT, CHOSEN, [a("x" * 4001)], "too_long", "rejected: message 3"),
    ],
)
def test_the_conversation_rules_apply_to_prompt_plus_each_side(
    prompt: list[dict], chosen: list[dict], rejected: list[dict], reason: str, detail_start: str
) -> None:
    row = only_reject(prompt, chosen, rejected)
    assert row["reason"] == reason
    assert row["detail"].startswith(detail_start), row["detail"]
    payload = json.loads(row["payload"])
    assert (payload["prompt"], payload["chosen"], payload["rejected"]) == (prompt, chosen, rejected)


def test_duplicates_in_the_batch_keep_the_first() -> None:
    rows = [
        ("p1", "M1", PROMPT, CHOSEN, REJECTED),
        ("p2", "M2", PROMPT, CHOSEN, REJECTED),  # the same pair from another member
        ("p3", "M1", [s("Be  brief."), u("i just watched HEAT (1995).  What next?")], CHOSEN, REJECTED),
        ("p4", "M1", PROMPT, REJECTED, CHOSEN),  # swapped: another pair
    ]
    curated, quarantine, stats = run(rows)
    assert curated["pair_id"].to_list() == ["p1", "p4"]
    assert dict(zip(quarantine["conversation_id"], quarantine["reason"], strict=True)) == {
        "p2": "duplicate",
        "p3": "duplicate",
    }
    assert all("p1" in d for d in quarantine["detail"])
    assert stats["quarantined_duplicate"] == 2


def test_a_pair_another_day_kept_is_duplicate_of_earlier_day() -> None:
    earlier, _, _ = run([("p1", "M1", PROMPT, CHOSEN, REJECTED)])
    seen = earlier["content_hash"].to_list()
    rows = [("p1-again", "M1", PROMPT, CHOSEN, REJECTED), ("p2", "M1", PROMPT, CHOSEN, [a("Jaws (1975).")])]
    curated, quarantine, stats = run(rows, seen_hashes=seen)
    assert curated["pair_id"].to_list() == ["p2"]
    assert quarantine["reason"].to_list() == ["duplicate_of_earlier_day"]
    assert seen[0] in quarantine["detail"][0]
    assert stats["quarantined_duplicate_of_earlier_day"] == 1
    _, again, _ = run(rows, seen_hashes=pl.Series(seen))
    assert again["reason"].to_list() == ["duplicate_of_earlier_day"]


def test_pii_is_scrubbed_in_curated_pairs_and_in_quarantine_payloads() -> None:
    prompt = [u("Reply to eve@example.com please")]
    rows = [
        ("ok", "M1", prompt, [a("Sent to eve@example.com: Ronin (1998)")], [a("Call +1 415 555 0123")]),
        ("bad", "M2", prompt, [a("Sent to eve@example.com: Ronin (1998)")], [a("")]),  # empty_turn
    ]
    curated, quarantine, stats = run(rows)
    assert curated["pair_id"].to_list() == ["ok"] and quarantine["conversation_id"].to_list() == ["bad"]
    row = curated.row(0, named=True)
    assert row["prompt"][0]["content"] == "Reply to [EMAIL] please"
    assert row["chosen"][0]["content"] == "Sent to [EMAIL]: Ronin (1998)"
    assert row["rejected"][0]["content"] == "Call [PHONE]"
    payload = quarantine["payload"][0]
    assert "eve@example.com" not in payload and "[EMAIL]" in payload
    assert json.loads(payload)["chosen"][0]["content"] == "Sent to [EMAIL]: Ronin (1998)"
    assert stats["pii_emails"] == 4 and stats["pii_phones"] == 1


def test_candidates_missing_columns_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="rejected"):
        curate_pairs(candidates([("p1", "M1", PROMPT, CHOSEN, REJECTED)]).drop("rejected"), DAY, CFG)


def test_an_empty_day_curates_to_nothing() -> None:
    curated, quarantine, stats = run([])
    assert curated.height == quarantine.height == 0 and stats["rows_in"] == 0


def test_behaviour_pairs_pass_curation_unchanged() -> None:
    catalog = pl.DataFrame({"title_id": ["t1", "t2", "t3", "t4"], "title": ["Heat", "Ronin", "Big", "Jaws"]})
    catalog = catalog.with_columns(pl.Series("year", [1995, 1998, 1988, None], dtype=pl.Int32))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        ("m1", "t1", 1, "play", None),
        ("m1", "t2", 5, "rate", 5.0),
        ("m1", "t3", 9, "complete", 0.1),
        ("m1", "t4", 10, "rate", 1.0),
        ("m2", "t1", 1, "complete", 0.5),
        ("m2", "t4", 5, "complete", 1.0),
        ("m2", "t2", 9, "rate", 2.0),
    ]
    events = conform(
        pl.DataFrame(
            {
                "member_id": [r[0] for r in rows],
                "title_id": [r[1] for r in rows],
                "ts": [start + timedelta(minutes=r[2]) for r in rows],
                "event": [r[3] for r in rows],
                "value": [r[4] for r in rows],
                "day": [DAY] * len(rows),
            },
            schema_overrides={"value": pl.Float64},
        ),
        INTERACTIONS_SCHEMA,
    )
    built = behaviour_pairs(catalog, events, DAY, PairBuilderConfig()).pairs
    assert built.height == 3
    curated, quarantine, stats = curate_pairs(built, DAY, CFG)
    assert quarantine.height == 0 and stats["rows_out"] == 3
    keep = ["pair_id", "kind", "member_id", "prompt", "chosen", "rejected", "chosen_title_id", "rejected_title_id"]
    assert curated.select(keep).sort("pair_id").equals(built.select(keep).sort("pair_id"))
    assert curated["chosen"].list.first().struct.field("content").str.ends_with("1. Jaws").sum() == 1
