import json
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from support.masking_fixtures import long_conversation, tokenizer_for

from core.shards import read_manifest, read_split, verify_checksums, write_shard_directory


def _rows() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "conversation_id": ["a", "b", "c", "d"],
            "split": ["train", "train", "validation", "test"],
            "input_ids": [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]],
            "loss_mask": [[0, 1, 1], [0, 1], [1], [0, 0, 1, 1]],
        }
    )


def test_shard_directory_matches_the_contract(tmp_path: Path) -> None:
    manifest = write_shard_directory(
        tmp_path,
        _rows(),
        partition="2026-01-01",
        tokenizer_fingerprint="fp",
        source_data_version="sv",
        rows_per_file=1,
    )
    assert manifest["splits"]["train"] == {
        "conversations": 2,
        "tokens": 5,
        "loss_tokens": 3,
        "files": ["train-00000.parquet", "train-00001.parquet"],
    }
    assert manifest["totals"] == {"conversations": 4, "tokens": 10, "loss_tokens": 6}
    assert manifest["tokenizer_fingerprint"] == "fp" and manifest["source_data_version"] == "sv"
    schema = pq.read_schema(tmp_path / "train-00000.parquet")
    assert str(schema.field("input_ids").type) == "list<element: int32>"
    assert str(schema.field("loss_mask").type) == "list<element: uint8>"
    assert schema.names == ["conversation_id", "input_ids", "loss_mask"]
    assert read_split(tmp_path, "train")["conversation_id"].to_list() == ["a", "b"]
    assert verify_checksums(tmp_path) == []
    assert read_manifest(tmp_path) == json.loads((tmp_path / "manifest.json").read_text())


def test_checksums_catch_tampering_missing_and_extra_files(tmp_path: Path) -> None:
    write_shard_directory(tmp_path, _rows(), partition="d", tokenizer_fingerprint="f", source_data_version="s")
    (tmp_path / "test-00000.parquet").write_bytes(b"corrupt")
    (tmp_path / "validation-00000.parquet").unlink()
    (tmp_path / "stray.parquet").write_bytes(b"x")
    problems = verify_checksums(tmp_path)
    assert any("test-00000" in p and "sha256" in p for p in problems)
    assert any("validation-00000" in p and "missing" in p for p in problems)
    assert any("stray" in p for p in problems)


def test_unknown_split_is_refused(tmp_path: Path) -> None:
    rows = _rows().with_columns(pl.lit("dev").alias("split"))
    with pytest.raises(ValueError, match="unknown splits"):
        write_shard_directory(tmp_path, rows, partition="d", tokenizer_fingerprint="f", source_data_version="s")


def test_old_format_is_refused_with_advice(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 0}))
    with pytest.raises(ValueError, match="re-materialize"):
        read_manifest(tmp_path)


# --------------------------------------------------------------------------------------
# The tokenized_shards audits on long conversations.


def _one_conversation(exchanges: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"conversation_id": ["c"], "split": ["train"], "messages": [long_conversation(exchanges, seed=3)]}
    )


def _count_stock_renders(monkeypatch: pytest.MonkeyPatch, tok) -> list[int]:
    """Messages passed to the tokenizer's stock apply_chat_template, one entry per call."""
    calls: list[int] = []
    stock = tok.apply_chat_template

    def counting(conversation, *args, **kwargs):
        calls.append(len(conversation))
        return stock(conversation, *args, **kwargs)

    monkeypatch.setattr(tok, "apply_chat_template", counting)
    return calls


def test_serving_audit_work_grows_linearly_with_the_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The train/serve audit renders the history of a bounded number of turns per row, not of every
    turn: twice the turns, about twice the work (it was quadratic: ~50 s for 1,000 turns)."""
    from core.tokenize_partition import audit_serving, tokenize_conversations

    tok = tokenizer_for("chatml")
    calls = _count_stock_renders(monkeypatch, tok)
    work, checks = {}, {}
    for exchanges in (40, 80):
        curated = _one_conversation(exchanges)
        part = tokenize_conversations(tok, curated, date(2026, 1, 1), max_length=None)
        calls.clear()
        audit = audit_serving(tok, part.rows, curated, 0)
        assert audit.rows_checked == 1 and audit.failures == []
        work[exchanges], checks[exchanges] = sum(calls), len(calls)
    assert work[80] <= 2 * work[40] + 20, work
    assert checks == {40: 16, 80: 16}  # the default budget of checked turns per row


def test_serving_audit_turn_budget_zero_checks_every_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.tokenize_partition import audit_serving, tokenize_conversations

    tok = tokenizer_for("chatml")
    curated = _one_conversation(20)
    part = tokenize_conversations(tok, curated, date(2026, 1, 1), max_length=None)
    calls = _count_stock_renders(monkeypatch, tok)
    assert audit_serving(tok, part.rows, curated, 0, turns=0).failures == []
    assert len(calls) == 20
    skewed = part.rows.with_columns(pl.col("input_ids").list.eval(pl.element().shift(1, fill_value=0)))
    assert audit_serving(tok, skewed, curated, 0, turns=2).failures  # still caught with two turns checked


def test_expanded_rows_share_their_conversation_id_and_the_files_keep_the_contract(tmp_path: Path) -> None:
    """Under rewrite_policy="expand" a conversation the template rewrites gives one row per assistant
    turn; the audit columns (target_turn, as_rendered) stay out of the shard files."""
    from support.masking_fixtures import with_reasoning

    from core.tokenize_partition import tokenize_conversations

    messages = with_reasoning([long_conversation(3)], every=1)[0]
    curated = pl.DataFrame({"conversation_id": ["r"], "split": ["train"], "messages": [messages]})
    part = tokenize_conversations(tokenizer_for("reasoning"), curated, date(2026, 1, 1), max_length=None)
    assert part.counts == {"kept": 0, "expanded": 1, "expanded_examples": 3, "as_rendered": 0, "quarantined": 0}
    assert part.rows["target_turn"].to_list() == [2, 4, 6]
    write_shard_directory(
        tmp_path, part.rows, partition="2026-01-01", tokenizer_fingerprint="fp", source_data_version="sv"
    )
    train = read_split(tmp_path, "train")
    assert train.columns == ["conversation_id", "input_ids", "loss_mask"]
    assert train["conversation_id"].to_list() == ["r", "r", "r"]
    assert read_manifest(tmp_path)["splits"]["train"]["conversations"] == 3
