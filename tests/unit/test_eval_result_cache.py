"""A model's evaluation results are reused only while the model, the held-out data and the settings are unchanged."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import evaluation.suite as suite
from evaluation.recommendation import RecoCase
from evaluation.result_cache import ResultCache, model_fingerprint
from evaluation.settings import SuiteSettings
from evaluation.suite import Judge, Prepared


def _model(root: Path, weights: bytes = b"weights-1") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.safetensors").write_bytes(weights)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "tokenizer.json").write_text('{"version": "1.0"}')
    return root


def _prepared(target: str = "T1") -> Prepared:
    rows = pl.DataFrame(
        {
            "conversation_id": ["c1", "c2"],
            "split": ["validation", "test"],
            "kind": ["recommendation", "search"],
            "input_ids": [[1, 2, 3], [4, 5]],
            "loss_mask": [[0, 1, 1], [0, 1]],
        }
    )
    case = RecoCase("c1", "test", ({"role": "user", "content": "I watched A (1999)."},), target, "B (2001)", ("T0",))
    return Prepared(rows, None, [case], [], pl.DataFrame(), {}, [[target, "T2", "T3"]])  # type: ignore[arg-type]


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []

    def fake_evaluate(model_dir: Path, p: Any, settings: Any, encoded: Any) -> dict:
        calls.append(Path(model_dir))
        return {
            "loss": {"splits": {"validation": {"loss": 0.5, "perplexity": None}}, "by_kind": {}},
            "ranking": {"ranks": [1, None], "skipped_by_reason": {"prompt_error": 1}, "seconds": 2.0},
            "generation": {"hit@1": 0.25, "samples": [{"prompt": "p", "answer": "a"}]},
        }

    monkeypatch.setattr(suite, "evaluate_model", fake_evaluate)
    return calls


def test_an_unchanged_model_on_unchanged_data_is_evaluated_once(tmp_path: Path, evaluations: list[Path]) -> None:
    model = _model(tmp_path / "base")
    first = Judge(_prepared(), SuiteSettings(), tmp_path / "cache")(model)
    again = Judge(_prepared(), SuiteSettings(), tmp_path / "cache")(model)
    assert evaluations == [model]
    assert again.pop("cached") is True and again == first


def test_new_weights_new_data_or_new_settings_are_evaluated_again(tmp_path: Path, evaluations: list[Path]) -> None:
    model = _model(tmp_path / "m")
    cache = tmp_path / "cache"
    Judge(_prepared(), SuiteSettings(), cache)(model)
    Judge(_prepared(target="T9"), SuiteSettings(), cache)(model)  # other held-out cases
    Judge(_prepared(), SuiteSettings(ranking_candidates=50), cache)(model)
    rows = _prepared().rows.with_columns(pl.Series("input_ids", [[1, 2, 4], [4, 5]]))
    Judge(replace(_prepared(), rows=rows), SuiteSettings(), cache)(model)  # other token ids
    _model(model, weights=b"weights-2")
    Judge(_prepared(), SuiteSettings(), cache)(model)
    assert len(evaluations) == 5


def test_an_unreadable_entry_is_a_miss_and_is_rewritten(tmp_path: Path, evaluations: list[Path]) -> None:
    model, cache = _model(tmp_path / "m"), tmp_path / "cache"
    Judge(_prepared(), SuiteSettings(), cache)(model)
    (entry,) = cache.glob("*.json")
    entry.write_text('{"loss": ')  # torn by hand: atomic writes never leave this
    result = Judge(_prepared(), SuiteSettings(), cache)(model)
    assert len(evaluations) == 2 and "cached" not in result
    assert Judge(_prepared(), SuiteSettings(), cache)(model)["cached"] is True


def test_without_a_cache_dir_every_call_evaluates(tmp_path: Path, evaluations: list[Path]) -> None:
    model = _model(tmp_path / "m")
    judge = Judge(_prepared(), SuiteSettings(), None)
    judge(model), judge(model)
    assert len(evaluations) == 2


def test_the_fingerprint_reads_contents_not_paths_and_refuses_a_dir_without_weights(tmp_path: Path) -> None:
    assert model_fingerprint(_model(tmp_path / "a")) == model_fingerprint(_model(tmp_path / "b"))
    assert model_fingerprint(_model(tmp_path / "c", b"other")) != model_fingerprint(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        model_fingerprint(tmp_path / "empty")
    assert ResultCache(tmp_path / "cache").get("missing") is None


def test_models_with_one_tokenizer_rank_one_encoding_of_the_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint and its base model share a tokenizer: their candidates are tokenized once per suite run."""
    encodings: list[Any] = []

    def fake_encode(tokenizer: Any, cases: Any, candidates: Any, matcher: Any) -> list:
        encodings.append(tokenizer)
        return [([1, 2], [[3], [4, 5]])]

    monkeypatch.setattr(suite, "encode_cases", fake_encode)
    base, trained = _model(tmp_path / "base"), _model(tmp_path / "trained", weights=b"weights-2")
    other = _model(tmp_path / "other")
    (other / "tokenizer.json").write_text('{"version": "2.0"}')
    judge = Judge(_prepared(), SuiteSettings(), None)
    first = judge.encoded(base, "tokenizer of base")
    assert judge.encoded(trained, "tokenizer of trained") is first
    assert judge.encoded(other, "tokenizer of other") is not first
    assert encodings == ["tokenizer of base", "tokenizer of other"]
