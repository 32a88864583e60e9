"""Held-out evaluation: exact masked loss, aggregation, title matching, hit@k, generation."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.base_model import TinyModelPreset, save_preset
from core.conversation_builder import DEFAULT_SYSTEM_PROMPT
from core.shards import write_shard_directory
from core.tokenize_partition import tokenize_conversations
from training.evaluate import (
    RecoCase,
    TitleMatcher,
    end_of_turn_ids,
    evaluate_loss_by,
    evaluate_popularity,
    evaluate_recommendations,
    generate_greedy,
    heldout_rows,
    hit_at_k,
    masked_loss,
    match_titles,
    normalize_title,
    popularity_baseline,
    popularity_ranking,
    recommendation_prompts,
)

CATALOG = pl.DataFrame(
    {
        "title_id": ["T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10"],
        "title": [
            "The Silent Harbor",
            "The Silent Harbor",
            "Up",
            "Night Train",
            "Quiet Rivers",
            "Moonfall",
            "Matrix, The",
            "Amélie",
            "Schindler's List",
            "Fast & Furious",
        ],
        "year": [1995, 2010, 2009, 2001, 2004, 2022, 1999, 2001, 1993, 2009],
    },
    schema={"title_id": pl.String, "title": pl.String, "year": pl.Int32},
)
MATCHER = TitleMatcher(CATALOG)


def _reco(history: str, recs: str, *, system: bool = True) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}] if system else []
    return [
        *msgs,
        {"role": "user", "content": f"I just watched {history}. What should I watch next?"},
        {"role": "assistant", "content": f"Here are a few picks for you:\n{recs}"},
        {"role": "user", "content": "Tell me more about the first one."},
        {"role": "assistant", "content": "It is a drama about a harbor town."},
    ]


CONVERSATIONS = pl.DataFrame(
    {
        "conversation_id": ["c01", "c02", "c03", "c04", "c05", "c06"],
        "day": [date(2026, 1, 1)] * 6,
        "kind": ["recommendation", "recommendation", "title_qa", "recommendation", "recommendation", "search"],
        "member_id": ["m1", "m2", None, "m3", "m4", "m5"],
        "split": ["validation", "test", "validation", "train", "validation", "test"],
        "messages": [
            _reco(
                "Night Train (2001), Quiet Rivers (2004)",
                "1. The Silent Harbor (2010)\n2. Moonfall (2022)\n3. Up (2009)",
            ),
            _reco("Moonfall (2022)", "1. Amélie (2001)\n2. Night Train (2001)\n3. Quiet Rivers (2004)", system=False),
            [
                {"role": "user", "content": "What year did Moonfall come out?"},
                {"role": "assistant", "content": "Moonfall came out in 2022."},
            ],
            _reco("Up (2009)", "1. Moonfall (2022)\n2. Night Train (2001)\n3. Amélie (2001)"),
            _reco("Up (2009), Amélie (2001)", "1. Schindler's List (1993)\n2. Moonfall (2022)\n3. Night Train (2001)"),
            [
                {"role": "user", "content": "Show me some drama movies."},
                {"role": "assistant", "content": "Here's what matches:\n1. Quiet Rivers (2004)\n2. Night Train (2001)"},
            ],
        ],
    },
    schema_overrides={"day": pl.Date},
)
TEXTS = [m["content"] for msgs in CONVERSATIONS["messages"].to_list() for m in msgs] * 20 + [
    f"Member {i} watched Night Train ({1990 + i % 30}) and liked drama." for i in range(100)
]
TINY = TinyModelPreset(
    vocab_size=400,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=512,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    save_preset(out, TEXTS, TINY)
    return out


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def tokenized(tokenizer: Any) -> pl.DataFrame:
    part = tokenize_conversations(tokenizer, CONVERSATIONS, date(2026, 1, 1), max_length=None)
    assert part.quarantine.height == 0
    kinds = CONVERSATIONS.select("conversation_id", "kind")
    return part.rows.join(kinds, on="conversation_id", how="left")


def _random_rows(n: int, vocab: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ids, masks = [], []
    for i in range(n):
        length = int(rng.integers(1, 60)) if i else 1  # a one-token row has no target at all
        ids.append(rng.integers(0, vocab, length).tolist())
        masks.append(rng.integers(0, 2, length).tolist())
    masks[1] = [0] * len(masks[1])  # a row without loss tokens
    return pl.DataFrame(
        {"conversation_id": [f"r{i}" for i in range(n)], "input_ids": ids, "loss_mask": masks},
        schema={"conversation_id": pl.String, "input_ids": pl.List(pl.Int32), "loss_mask": pl.List(pl.UInt8)},
    )


def _naive(model: Any, ids: list[int], mask: list[int]) -> tuple[float, int]:
    """One conversation alone, the training definition spelled out token by token."""
    if len(ids) < 2:
        return 0.0, 0
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    total, count = 0.0, 0
    for t in range(1, len(ids)):
        if mask[t] == 1:
            total += float(F.cross_entropy(logits[t - 1 : t], torch.tensor([ids[t]])))
            count += 1
    return total, count


# ----------------------------------------------------------------------------- loss


def test_masked_loss_equals_one_conversation_at_a_time(model: Any, tokenized: pl.DataFrame) -> None:
    rows = pl.concat([tokenized.select("conversation_id", "input_ids", "loss_mask"), _random_rows(14, 300, seed=1)])
    # Small batches force several batches, each with heavy padding.
    totals = masked_loss(model, rows, batch_tokens=150)
    expected = [
        _naive(model, i, m) for i, m in zip(rows["input_ids"].to_list(), rows["loss_mask"].to_list(), strict=True)
    ]
    assert totals.skipped == []
    assert totals.row_loss_tokens.tolist() == [c for _, c in expected]
    for got, (want, count) in zip(totals.row_loss_sum, expected, strict=True):
        assert abs(got - want) <= 1e-5 * max(1, count)
        if count:
            assert abs(got / count - want / count) < 1e-5
    assert totals.loss_tokens == sum(c for _, c in expected)
    assert abs(totals.mean_loss - sum(s for s, _ in expected) / totals.loss_tokens) < 1e-5
    assert (
        totals.padded_tokens
        >= totals.tokens
        == int(rows["input_ids"].list.len().filter(pl.Series(totals.row_loss_tokens) > 0).sum())
    )
    # One big batch gives the same numbers: batching never changes the result.
    again = masked_loss(model, rows, batch_tokens=100_000)
    np.testing.assert_allclose(again.row_loss_sum, totals.row_loss_sum, atol=1e-4)
    assert not model.training


def test_masked_loss_counts_only_masked_targets_of_real_masks(model: Any, tokenized: pl.DataFrame) -> None:
    totals = masked_loss(model, tokenized)
    masks = tokenized["loss_mask"].to_list()
    assert totals.row_loss_tokens.tolist() == [sum(m[1:]) for m in masks]
    assert all(sum(m) > 0 for m in masks)


def test_malformed_rows_are_skipped_with_reasons_not_fatal(model: Any) -> None:
    rows = pl.DataFrame(
        {
            "conversation_id": ["ok", "oov", "mismatch", "null"],
            "input_ids": [[1, 2, 3, 4], [1, 99_999, 3], [1, 2, 3], None],
            "loss_mask": [[0, 1, 1, 1], [0, 1, 1], [0, 1], [0, 1]],
        },
        schema={"conversation_id": pl.String, "input_ids": pl.List(pl.Int32), "loss_mask": pl.List(pl.UInt8)},
    )
    totals = masked_loss(model, rows)
    assert {s.key: s.reason for s in totals.skipped} == {
        "oov": "token_out_of_vocab",
        "mismatch": "length_mismatch",
        "null": "null_row",
    }
    assert "99999" in next(s.detail for s in totals.skipped if s.key == "oov")
    assert totals.row_loss_tokens.tolist() == [3, 0, 0, 0]
    assert totals.loss_tokens == 3 and totals.mean_loss == pytest.approx(totals.row_loss_sum[0] / 3)


def test_loss_aggregates_by_split_and_kind_as_token_weighted_means(model: Any) -> None:
    rows = _random_rows(12, 300, seed=5).with_columns(
        pl.Series("split", ["validation"] * 8 + ["train"] * 4),
        pl.Series("kind", ["recommendation", "title_qa", None] * 4),
    )
    out = evaluate_loss_by(model, rows, batch_tokens=200)
    per_row = masked_loss(model, rows, batch_tokens=200)
    frame = rows.with_columns(
        pl.Series("s", per_row.row_loss_sum),
        pl.Series("n", per_row.row_loss_tokens),
        pl.col("kind").fill_null("unknown"),
    )
    val = frame.filter(pl.col("split") == "validation")
    assert out["splits"]["validation"]["loss_tokens"] == int(val["n"].sum())
    assert out["splits"]["validation"]["loss"] == pytest.approx(val["s"].sum() / val["n"].sum(), abs=1e-9)
    assert out["splits"]["validation"]["perplexity"] == pytest.approx(math.exp(out["splits"]["validation"]["loss"]))
    assert out["splits"]["validation"]["conversations"] == 8
    for kind in ("recommendation", "title_qa", "unknown"):
        part = val.filter(pl.col("kind") == kind)
        got = out["by_kind"]["validation"][kind]
        assert got["loss_tokens"] == int(part["n"].sum())
        assert got["loss"] == pytest.approx(part["s"].sum() / part["n"].sum(), abs=1e-9)
        assert got["perplexity"] == pytest.approx(math.exp(got["loss"]))
    # Token-weighted: the split loss is not the mean of per-kind means.
    kinds = out["by_kind"]["validation"].values()
    assert out["splits"]["validation"]["loss"] == pytest.approx(
        sum(k["loss"] * k["loss_tokens"] for k in kinds) / sum(k["loss_tokens"] for k in kinds)
    )
    # An empty held-out split is present with no loss rather than missing.
    assert out["splits"]["test"] == {"loss": None, "perplexity": None, "loss_tokens": 0, "conversations": 0}
    assert out["splits"]["train"]["conversations"] == 4


def test_heldout_rows_reads_verified_shards_with_kinds(tmp_path: Path, tokenized: pl.DataFrame) -> None:
    write_shard_directory(
        tmp_path, tokenized.drop("kind"), partition="2026-01-01", tokenizer_fingerprint="f", source_data_version="s"
    )
    rows = heldout_rows([tmp_path], CONVERSATIONS)
    assert sorted(rows["conversation_id"].to_list()) == ["c01", "c02", "c03", "c05", "c06"]
    assert dict(zip(rows["conversation_id"], rows["kind"], strict=True))["c03"] == "title_qa"
    assert set(rows["split"]) == {"validation", "test"}
    (tmp_path / "test-00000.parquet").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="failed verification"):
        heldout_rows([tmp_path], CONVERSATIONS)


# ---------------------------------------------------------------------- title matching


def test_numbered_list_with_articles_punctuation_and_years() -> None:
    text = (
        "Here are a few picks for you:\n1. The Silent Harbor (1995)\n2) night train!\n3. **Moonfall** (2022) - sci-fi"
    )
    assert MATCHER.match(text) == ["T1", "T4", "T6"]
    assert (
        normalize_title("The Matrix")
        == normalize_title("Matrix, The")
        == normalize_title("the  MATRIX!")
        == ("matrix",)
    )


def test_year_disambiguates_same_named_titles() -> None:
    assert MATCHER.match("1. The Silent Harbor (2010)") == ["T2"]
    assert MATCHER.match("1. The Silent Harbor (1995)") == ["T1"]
    assert MATCHER.match("Try Silent Harbor (2009).") == ["T2"]  # closest year when none is equal
    assert MATCHER.match("1. The Silent Harbor") == ["T1"]  # no year: catalog order


def test_articles_tell_apart_titles_that_differ_only_by_them() -> None:
    matcher = TitleMatcher(
        pl.DataFrame({"title_id": ["A", "B"], "title": ["The Velvet Painter", "Velvet Painter"], "year": [1991, 2023]})
    )
    assert matcher.match("1. Velvet Painter") == ["B"]
    assert matcher.match("1. The Velvet Painter") == ["A"]
    assert matcher.match("Watch the velvet painter next") == ["A"]
    assert matcher.match("1. Velvet Painter (1991)") == ["A"]  # a written year outweighs the article


def test_unknown_titles_are_skipped_and_duplicates_dropped() -> None:
    text = "1. The Lost City (2020)\n2. Up (2009)\n3. Night Train (2001)\n4. Up (2009)\n5. Nowhere Land"
    assert MATCHER.match(text) == ["T3", "T4"]
    assert MATCHER.match("") == [] and MATCHER.match("I have no idea, sorry.") == []


def test_free_text_mentions_and_the_one_word_rule() -> None:
    text = "You liked it, so try Quiet Rivers or maybe Night Train; if you want something up-beat, Up (2009)."
    assert MATCHER.match(text) == ["T3", "T5", "T4"]  # Title (Year) first, then free-text mentions in order
    assert MATCHER.match("Things are looking up today") == []  # a one-word title needs a list item or a year
    found = MATCHER.find("Quiet Rivers (2004) and then Night Train")
    assert [(m.title_id, m.how, m.year) for m in found] == [("T5", "year", 2004), ("T4", "free", None)]


def test_unicode_apostrophes_ampersands_and_movielens_style_titles() -> None:
    text = "1. Amelie (2001)\n2. Schindler’s List\n3. The Matrix (1999)\n4. Fast and Furious (2009)"
    assert match_titles(text, CATALOG) == ["T8", "T9", "T7", "T10"]
    assert MATCHER.match("1. AMÉLIE") == ["T8"]
    assert MATCHER.display("T7") == "Matrix, The (1999)"


def test_matching_is_fast_on_a_large_catalog() -> None:
    n = 50_000
    big = pl.DataFrame(
        {
            "title_id": [f"X{i}" for i in range(n)],
            "title": [f"Harbor of Kestrel {i}" for i in range(n)],
            "year": [2000] * n,
        }
    )
    import time

    start = time.perf_counter()
    matcher = TitleMatcher(big)
    texts = ["Here you go:\n1. Harbor of Kestrel 17 (2000)\n2. Harbor of Kestrel 4242\n3. nothing"] * 500
    results = [matcher.match(t) for t in texts]
    assert results[0] == ["X17", "X4242"]
    assert time.perf_counter() - start < 10


# ------------------------------------------------------------------------ hit@k, baseline


def test_hit_at_k_maths() -> None:
    recs = [["a", "b", "c"], ["x", "y"], [], ["b", "a"]]
    targets = ["b", "y", "z", "a"]
    assert hit_at_k(recs, targets, 1) == 0.0
    assert hit_at_k(recs, targets, 2) == 0.75
    assert hit_at_k(recs, targets, 5) == 0.75
    assert hit_at_k([], [], 5) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        hit_at_k(recs, targets, 0)
    with pytest.raises(ValueError, match="targets"):
        hit_at_k(recs, targets[:2], 1)


def test_popularity_baseline_excludes_history_and_counts_watch_events_only() -> None:
    events = pl.DataFrame(
        {
            "title_id": ["A", "A", "A", "B", "B", "C", "D", "D", "D", "D"],
            "event": ["play", "complete", "rate", "play", "play", "play", "search", "search", "search", "search"],
        }
    )
    ranking = popularity_ranking(events)
    assert ranking == ["A", "B", "C"]  # searches are not watches
    assert popularity_ranking({"x": 1, "y": 5, "w": 5}) == ["w", "y", "x"]  # ties by id
    assert popularity_baseline(ranking, 2) == ["A", "B"]
    assert popularity_baseline(ranking, 2, exclude=["A"]) == ["B", "C"]
    cases = [
        RecoCase("1", "validation", (), "B", "B", ("A",)),  # A excluded -> B first
        RecoCase("2", "test", (), "C", "C", ()),
    ]
    out = evaluate_popularity(cases, ranking)
    assert out["hit@1"] == 0.5 and out["hit@5"] == 1.0 and out["n"] == 2
    assert out["by_split"]["validation"]["hit@1"] == 1.0 and out["by_split"]["test"]["hit@1"] == 0.0


def test_recommendation_prompts_take_target_history_and_prompt_from_the_first_exchange() -> None:
    broken = CONVERSATIONS.head(1).with_columns(
        pl.lit("c99").alias("conversation_id"),
        pl.Series("messages", [_reco("Up (2009)", "1. Nothing We Know (1990)")]),
    )
    cases, skipped = recommendation_prompts(pl.concat([CONVERSATIONS, broken]), MATCHER)
    assert [c.conversation_id for c in cases] == ["c01", "c02", "c05"]  # held-out recommendations only
    first = cases[0]
    assert first.target_title_id == "T2" and first.target == "The Silent Harbor (2010)"
    assert first.history_title_ids == ("T4", "T5")
    assert [m["role"] for m in first.prompt_messages] == ["system", "user"]
    assert [m["role"] for m in cases[1].prompt_messages] == ["user"]
    assert cases[2].target_title_id == "T9" and cases[2].history_title_ids == ("T3", "T8")
    assert [(s.key, s.reason) for s in skipped] == [("c99", "no_target_title")]


# ------------------------------------------------------------------------- generation


def test_end_of_turn_is_the_templates_token(tokenizer: Any) -> None:
    assert end_of_turn_ids(tokenizer)[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_generation_end_to_end_serves_add_generation_prompt_prompts(model: Any, tokenizer: Any) -> None:
    cases, _ = recommendation_prompts(CONVERSATIONS, MATCHER)
    seen: list[list[int]] = []
    original = model.generate

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        for ids, att in zip(kwargs["input_ids"], kwargs["attention_mask"], strict=True):
            assert att.tolist() == sorted(att.tolist())  # left padding
            seen.append(ids[att.bool()].tolist())
        assert kwargs["generation_config"].do_sample is False
        return original(*args, **kwargs)

    model.generate = spy
    try:
        out = evaluate_recommendations(model, tokenizer, cases, MATCHER, batch_size=2, max_new_tokens=12, n_samples=2)
    finally:
        del model.generate
    expected = [
        tokenizer.apply_chat_template(
            list(c.prompt_messages), add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for c in cases
    ]
    assert sorted(seen) == sorted(expected)
    assert out["n"] == 3 and 0.0 <= out["hit@1"] <= out["hit@5"] <= 1.0
    assert [r["conversation_id"] for r in out["per_case"]] == ["c01", "c02", "c05"]
    assert all(isinstance(r["recommended"], list) for r in out["per_case"])
    assert len(out["samples"]) == 2 and out["samples"][0]["prompt"].endswith("<|im_start|>assistant\n")
    assert out["generated_tokens"] <= 3 * 12


def test_batched_greedy_generation_equals_one_at_a_time(model: Any, tokenizer: Any) -> None:
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for text in ["Hi", "I just watched Night Train (2001). What should I watch next?", "What year did Up come out?"]
    ]
    batched = generate_greedy(model, tokenizer, prompts, batch_size=3, max_new_tokens=8)
    single = [generate_greedy(model, tokenizer, [p], batch_size=1, max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert all(len(g) <= 8 for g in batched)


class _Oracle(torch.nn.Module):
    """Answers each prompt with a fixed text: checks parsing and hit@k end to end."""

    def __init__(self, tokenizer: Any, answers: dict[tuple[int, ...], str]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tok = tokenizer
        self.answers = answers
        self.eot = end_of_turn_ids(tokenizer)[0]

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generation_config: Any) -> torch.Tensor:
        rows = []
        for ids, att in zip(input_ids, attention_mask, strict=True):
            text = self.answers[tuple(ids[att.bool()].tolist())]
            rows.append(ids.tolist() + self.tok.encode(text, add_special_tokens=False) + [self.eot])
        width = max(map(len, rows))
        return torch.tensor([r + [self.eot] * (width - len(r)) for r in rows])


def test_hits_come_from_parsed_generations(tokenizer: Any) -> None:
    from core.masking import encode_prompt

    cases, _ = recommendation_prompts(CONVERSATIONS, MATCHER)
    answers = {
        "c01": "Here are a few picks for you:\n1. The Silent Harbor (2010)\n2. Up (2009)",  # hit@1
        "c02": "You might enjoy these next:\n1. Night Train (2001)\n2. Amélie (2001)",  # hit@5 only
        "c05": "Sorry, nothing comes to mind.",  # miss, no titles
    }
    oracle = _Oracle(
        tokenizer, {tuple(encode_prompt(tokenizer, list(c.prompt_messages))): answers[c.conversation_id] for c in cases}
    )
    out = evaluate_recommendations(oracle, tokenizer, cases, MATCHER, batch_size=2)
    assert out["hit@1"] == pytest.approx(1 / 3) and out["hit@5"] == pytest.approx(2 / 3)
    assert out["no_title_outputs"] == 1
    assert out["by_split"]["test"] == {"hit@1": 0.0, "hit@5": 1.0, "n": 1}
    assert out["samples"][0]["recommended"] == ["The Silent Harbor (2010)", "Up (2009)"]
    assert out["samples"][0]["hit@1"] is True
    limited = evaluate_recommendations(oracle, tokenizer, cases, MATCHER, limit=1)
    assert limited["n"] == 1 and limited["hit@1"] == 1.0


def test_unservable_prompts_are_skipped_with_a_reason(model: Any, tokenizer: Any) -> None:
    bad = RecoCase("bad", "validation", ({"role": "user", "content": ""},), "T1", "x", ())
    good = RecoCase("good", "validation", ({"role": "user", "content": "Hi"},), "T1", "x", ())
    out = evaluate_recommendations(model, tokenizer, [bad, good], MATCHER, max_new_tokens=4)
    assert out["n"] == 1 and out["skipped_by_reason"] == {"prompt_error": 1}
    assert out["skipped"][0]["conversation_id"] == "bad"
