"""Preference pairs to tokens: the prompt once as served, each completion with its exact loss mask, in shards."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from support.masking_fixtures import decode_ids, tokenizer_for

from core.chat_templates import TEMPLATES
from core.masking import encode_conversation
from core.preferences.tokenize import PAIR_LAYOUT, audit_pairs, completion_start, pair_conversation, tokenize_pairs
from core.schemas import CONVERSATION_QUARANTINE_SCHEMA, PREFERENCE_PAIRS_SCHEMA
from core.shards import (
    ShardDataError,
    read_manifest,
    read_split,
    read_verified_manifest,
    verify_checksums,
    write_shard_directory,
)

DAY = date(2026, 1, 1)


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def s(text: str) -> dict:
    return {"role": "system", "content": text}


# (pair_id, split, prompt, chosen, rejected)
PAIRS = [
    ("p1", "train", [u("What should I watch tonight?")], [a("Try the heist movie.")], [a("A dark western.")]),
    (
        "p2",
        "test",
        [s("Be brief."), u("Any thriller?"), a("Dark night."), u("Something funny?")],
        [a("A cozy comedy series.")],
        [a("The space drama, a long award winning classic.")],
    ),
    ("p3", "train", [s("Be nice."), u("A western?")], [a("The western (2019).")], [a("A family anime.")]),
    ("p4", "validation", [u("Why the finale?")], [a("Because you liked the pilot.")], [a("Watch the sequel.")]),
]


def curated(rows: list[tuple] = PAIRS, kind: str = "external") -> pl.DataFrame:
    """Curated pairs (PREFERENCE_PAIRS_SCHEMA), in the order given."""
    return pl.DataFrame(
        [
            {
                "pair_id": r[0],
                "day": DAY,
                "kind": kind,
                "member_id": None,
                "split": r[1],
                "prompt": r[2],
                "chosen": r[3],
                "rejected": r[4],
                "chosen_title_id": None,
                "rejected_title_id": None,
                "content_hash": r[0] * 16,
            }
            for r in rows
        ],
        schema=PREFERENCE_PAIRS_SCHEMA,
    )


def stock_ids(tok, messages: list[dict], *, add_generation_prompt: bool = False) -> list[int]:
    """transformers' own token ids of a chat, whatever container apply_chat_template returns them in."""
    out = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        out = out["input_ids"]
    return [int(i) for i in out]


def masked_text(tok, ids: list[int], mask: list[int]) -> str:
    return decode_ids(tok, [i for i, m in zip(ids, mask, strict=True) if m])


@pytest.fixture(scope="module")
def chatml():
    return tokenizer_for("chatml")


@pytest.fixture(scope="module")
def tokenized(chatml):
    return tokenize_pairs(chatml, curated(), DAY, max_length=None)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_each_side_is_exactly_the_templates_own_tokens(template: str) -> None:
    tok = tokenizer_for(template)
    pairs = curated()
    out = tokenize_pairs(tok, pairs, DAY, max_length=None)
    assert out.quarantine.height == 0
    assert out.rows["pair_id"].to_list() == ["p1", "p2", "p3", "p4"]
    for row, pair in zip(out.rows.iter_rows(named=True), pairs.iter_rows(named=True), strict=True):
        assert row["prompt_ids"] == stock_ids(tok, pair["prompt"], add_generation_prompt=True)
        for side in ("chosen", "rejected"):
            assert row["prompt_ids"] + row[f"{side}_ids"] == stock_ids(tok, pair["prompt"] + pair[side])
            assert len(row[f"{side}_mask"]) == len(row[f"{side}_ids"])


def test_each_mask_covers_its_completion_and_the_end_of_turn_token(chatml, tokenized) -> None:
    by_id = {r[0]: r for r in PAIRS}
    for row in tokenized.rows.iter_rows(named=True):
        for side, k in (("chosen", 3), ("rejected", 4)):
            content = by_id[row["pair_id"]][k][0]["content"]
            ids, mask = row[f"{side}_ids"], row[f"{side}_mask"]
            assert masked_text(chatml, ids, mask) == content + "<|im_end|>"
            ones = [i for i, m in enumerate(mask) if m]
            assert ones == list(range(len(ones))), "the completion's masked tokens are one run from its first token"
            assert decode_ids(chatml, ids[len(ones) :]) == "\n", "only the template's trailing newline is unmasked"


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_a_behaviour_pair_scores_its_title_but_not_the_end_of_the_turn(template: str) -> None:
    """A behaviour pair's answer goes on after the compared title, so the end-of-turn carries no loss; the audit
    still checks the rest of the mask exactly."""
    tok = tokenizer_for(template)
    pairs = curated(kind="behaviour")
    out = tokenize_pairs(tok, pairs, DAY, max_length=None)
    external = tokenize_pairs(tok, curated(), DAY, max_length=None)
    by_id = {r[0]: r for r in PAIRS}
    for row, whole in zip(out.rows.iter_rows(named=True), external.rows.iter_rows(named=True), strict=True):
        for side, k in (("chosen", 3), ("rejected", 4)):
            content = by_id[row["pair_id"]][k][0]["content"]
            assert masked_text(tok, row[f"{side}_ids"], row[f"{side}_mask"]).strip() == content
            assert sum(row[f"{side}_mask"]) < sum(whole[f"{side}_mask"])
    masks, serving, checked = audit_pairs(tok, out.rows, pairs)
    assert (masks, serving, checked) == ([], [], 4)
    first_unmasked = [[0, *m[1:]] for m in out.rows["chosen_mask"].to_list()]
    corrupted = out.rows.with_columns(pl.Series("chosen_mask", first_unmasked, dtype=pl.List(pl.UInt8)))
    assert audit_pairs(tok, corrupted, pairs)[0], "a mask missing the title's first token is reported"


def test_an_earlier_assistant_turn_of_the_prompt_carries_no_loss(chatml, tokenized) -> None:
    row = tokenized.rows.filter(pl.col("pair_id") == "p2").row(0, named=True)
    assert "Dark night.<|im_end|>" in decode_ids(chatml, row["prompt_ids"])
    ids, mask = pair_conversation(row["prompt_ids"], row["chosen_ids"], row["chosen_mask"])
    assert masked_text(chatml, ids, mask) == "A cozy comedy series.<|im_end|>"
    # the SFT encoding of the same conversation trains on both answers; the pair only on its completion
    prompt, chosen = PAIRS[1][2], PAIRS[1][3]
    sft = encode_conversation(chatml, prompt + chosen)
    assert sft.input_ids == ids
    assert masked_text(chatml, sft.input_ids, sft.loss_mask) == "Dark night.<|im_end|>A cozy comedy series.<|im_end|>"


def test_rows_come_sorted_by_pair_id_with_their_split(chatml) -> None:
    out = tokenize_pairs(chatml, curated(list(reversed(PAIRS))), DAY, max_length=None)
    assert out.rows["pair_id"].to_list() == ["p1", "p2", "p3", "p4"]
    assert out.rows["split"].to_list() == ["train", "test", "train", "validation"]
    assert out.rows.columns == ["split", *PAIR_LAYOUT.polars_schema]


def test_audit_passes_good_rows(chatml, tokenized) -> None:
    masks, serving, checked = audit_pairs(chatml, tokenized.rows, curated())
    assert (masks, serving, checked) == ([], [], 4)


def test_audit_reports_a_corrupted_mask(chatml, tokenized) -> None:
    unmask_eot = pl.col("chosen_mask").list.eval(pl.when(pl.int_range(pl.len()) == 0).then(0).otherwise(pl.element()))
    bad = tokenized.rows.with_columns(
        pl.when(pl.col("pair_id") == "p3").then(unmask_eot).otherwise(pl.col("chosen_mask")).alias("chosen_mask")
    )
    masks, _, _ = audit_pairs(chatml, bad, curated())
    assert [pid for pid, _ in masks] == ["p3"]
    assert masks[0][1].startswith("chosen: ")

    all_ones = tokenized.rows.with_columns(
        pl.col("rejected_mask").list.eval(pl.element() * 0 + 1).cast(pl.List(pl.UInt8))
    )
    masks, _, _ = audit_pairs(chatml, all_ones, curated())
    assert sorted(pid for pid, _ in masks) == ["p1", "p2", "p3", "p4"]
    assert all(problem.startswith("rejected: ") for _, problem in masks)


def test_audit_reports_a_prompt_that_is_not_the_served_one(chatml, tokenized) -> None:
    skewed = tokenized.rows.with_columns(
        pl.when(pl.col("pair_id") == "p1")
        .then(pl.col("prompt_ids").list.slice(1))  # the first token of the prompt lost
        .otherwise(pl.col("prompt_ids"))
        .alias("prompt_ids")
    )
    masks, serving, _ = audit_pairs(chatml, skewed, curated())
    assert masks == [], "the completions themselves are intact"
    assert serving and {pid for pid, _ in serving} == {"p1"}
    assert {problem.split(":")[0] for _, problem in serving} == {"chosen", "rejected"}


def test_audit_reports_a_row_without_its_curated_pair(chatml, tokenized) -> None:
    masks, _, checked = audit_pairs(chatml, tokenized.rows, curated().filter(pl.col("pair_id") != "p4"))
    assert masks == [("p4", "row has no curated pair")] and checked == 4


def test_a_side_over_max_length_quarantines_the_pair(chatml, tokenized) -> None:
    p2 = tokenized.rows.filter(pl.col("pair_id") == "p2").row(0, named=True)
    chosen_len = len(p2["prompt_ids"]) + len(p2["chosen_ids"])
    rejected_len = len(p2["prompt_ids"]) + len(p2["rejected_ids"])
    assert chosen_len < rejected_len
    longest_other = max(
        len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"]))
        for r in tokenized.rows.iter_rows(named=True)
        if r["pair_id"] != "p2"
    )
    assert longest_other < rejected_len

    fits = tokenize_pairs(chatml, curated(), DAY, max_length=rejected_len)
    assert fits.quarantine.height == 0 and fits.rows.height == 4

    cut = max(chosen_len, longest_other, rejected_len - 1)
    out = tokenize_pairs(chatml, curated(), DAY, max_length=cut)
    assert out.rows["pair_id"].to_list() == ["p1", "p3", "p4"]
    assert dict(out.quarantine.schema) == CONVERSATION_QUARANTINE_SCHEMA
    row = out.quarantine.row(0, named=True)
    assert (row["conversation_id"], row["reason"], row["day"]) == ("p2", "too_long", DAY)
    assert row["detail"].startswith("rejected: ") and str(rejected_len) in row["detail"]
    payload = json.loads(row["payload"])
    assert payload == {"prompt": PAIRS[1][2], "chosen": PAIRS[1][3], "rejected": PAIRS[1][4]}


def test_shards_round_trip_with_the_pair_layout(tmp_path: Path, tokenized) -> None:
    rows = tokenized.rows
    manifest = write_shard_directory(
        tmp_path,
        rows,
        partition="2026-01-01",
        tokenizer_fingerprint="fp",
        source_data_version="sv",
        rows_per_file=1,
        quarantine=tokenized.quarantine,
        layout=PAIR_LAYOUT,
    )
    assert manifest["layout"] == "preference_pairs"
    for split in ("train", "validation", "test"):
        part = rows.filter(pl.col("split") == split)
        back = read_split(tmp_path, split, layout=PAIR_LAYOUT)
        assert back.equals(part.drop("split")), split
        assert dict(back.schema) == PAIR_LAYOUT.polars_schema
        tokens = sum(
            len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in part.iter_rows(named=True)
        )
        loss = sum(sum(r["chosen_mask"]) + sum(r["rejected_mask"]) for r in part.iter_rows(named=True))
        got = manifest["splits"][split]
        assert (got["pairs"], got["tokens"], got["loss_tokens"]) == (part.height, tokens, loss)
        assert "conversations" not in got
    assert manifest["totals"]["pairs"] == 4
    assert manifest["splits"]["train"]["files"] == ["train-00000.parquet", "train-00001.parquet"]
    assert read_manifest(tmp_path) == manifest
    assert verify_checksums(tmp_path) == [] and read_verified_manifest(tmp_path) == manifest


def test_pair_shards_are_refused_by_the_conversation_reader_and_the_reverse(tmp_path: Path, tokenized) -> None:
    pairs_dir, sft_dir = tmp_path / "pairs", tmp_path / "sft"
    pairs_dir.mkdir()
    sft_dir.mkdir()
    write_shard_directory(
        pairs_dir, tokenized.rows, partition="d", tokenizer_fingerprint="f", source_data_version="s", layout=PAIR_LAYOUT
    )
    with pytest.raises(ShardDataError, match="preference_pairs"):
        read_split(pairs_dir, "train")
    sft = pl.DataFrame(
        {"conversation_id": ["c"], "split": ["train"], "input_ids": [[1, 2, 3]], "loss_mask": [[0, 1, 1]]}
    )
    write_shard_directory(sft_dir, sft, partition="d", tokenizer_fingerprint="f", source_data_version="s")
    with pytest.raises(ShardDataError, match="conversations"):
        read_split(sft_dir, "train", layout=PAIR_LAYOUT)


def test_an_empty_batch_gives_empty_rows_and_shards(tmp_path: Path, chatml) -> None:
    out = tokenize_pairs(chatml, curated([]), DAY, max_length=None)
    assert out.rows.height == 0 and out.quarantine.height == 0
    manifest = write_shard_directory(
        tmp_path, out.rows, partition="d", tokenizer_fingerprint="f", source_data_version="s", layout=PAIR_LAYOUT
    )
    assert manifest["totals"] == {"pairs": 0, "tokens": 0, "loss_tokens": 0}
    assert read_split(tmp_path, "train", layout=PAIR_LAYOUT).columns == list(PAIR_LAYOUT.polars_schema)


@pytest.mark.parametrize(
    ("mask", "start"),
    [
        ([0, 0, 1, 1, 0], 2),
        ([1, 1, 0], 0),
        ([0, 1, 1, 0, 0, 1, 1, 1, 0], 5),
        ([1, 0, 1, 0, 1], 4),
        ([0, 0, 0, 1], 3),
    ],
)
def test_completion_start_is_the_first_token_of_the_last_masked_run(mask: list[int], start: int) -> None:
    assert completion_start(mask) == start


def test_completion_start_refuses_a_side_without_masked_tokens() -> None:
    with pytest.raises(ValueError, match="no completion"):
        completion_start([0, 0, 0])


REASONING_PAIR = (
    "r1",
    "train",
    [u("hi"), a("<think>\nhm\n</think>\n\nok"), u("and?")],
    [a("<think>\nwell\n</think>\n\nyes")],
    [a("no")],
)


@pytest.mark.parametrize("policy", ["expand", "as_rendered"])
def test_a_prompt_the_template_rewrites_is_the_served_prompt(policy: str) -> None:
    """A reasoning template drops an earlier turn's <think> once a user turn follows: the prompt is what serving
    renders, and the completion keeps its reasoning."""
    tok = tokenizer_for("reasoning")
    pairs = curated([REASONING_PAIR])
    out = tokenize_pairs(tok, pairs, DAY, max_length=None, rewrite_policy=policy)
    assert out.quarantine.height == 0
    row = out.rows.row(0, named=True)
    assert row["prompt_ids"] == stock_ids(tok, REASONING_PAIR[2], add_generation_prompt=True)
    assert "hm" not in decode_ids(tok, row["prompt_ids"])
    assert masked_text(tok, row["chosen_ids"], row["chosen_mask"]) == "<think>\nwell\n</think>\n\nyes<|im_end|>"
    assert audit_pairs(tok, out.rows, pairs) == ([], [], 1)


def test_a_side_the_engine_rejects_quarantines_the_pair_with_its_reason() -> None:
    tok = tokenizer_for("reasoning")
    pairs = curated([REASONING_PAIR, PAIRS[0]])
    out = tokenize_pairs(tok, pairs, DAY, max_length=None, rewrite_policy="quarantine")
    assert out.rows["pair_id"].to_list() == ["p1"]
    assert out.quarantine.select("conversation_id", "reason").rows() == [("r1", "turn_rewritten")]
    assert out.quarantine["detail"][0].startswith("chosen: ")
