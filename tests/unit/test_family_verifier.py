"""training/family_verifier.py and packed_sdpa's windowed / soft-capped fallback against transformers' eager math."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers.models.gemma3.modeling_gemma3 import eager_attention_forward

from core.model_families import FAMILIES, GEMMA3_SLIDING_WINDOW
from training import attention
from training.family_verifier import LOGIT_TOLERANCE, ROWS, main, verify


@pytest.mark.slow  # a verification takes a few seconds per family
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_our_packed_step_matches_transformers(family_dirs: dict[str, Path], name: str) -> None:
    report = verify(family_dirs[name])
    assert report["passed"], report
    assert report["logits_max_abs_diff"] <= LOGIT_TOLERANCE and report["parameters_compared"] > 0
    assert report["architecture"] == FAMILIES[name].model_class.__name__


@pytest.mark.slow  # a verification takes a few seconds per family
def test_gemma3_conversations_exceed_its_window_and_the_log_says_so(family_dirs: dict[str, Path]) -> None:
    report = verify(family_dirs["gemma3"])
    assert report["sliding_window"] == GEMMA3_SLIDING_WINDOW and report["window_exceeded"]
    assert any("sliding window" in note for note in report["attention_notes"])
    assert verify(family_dirs["qwen3"])["sliding_window"] is None  # Qwen3 keeps a window it does not use


@pytest.mark.slow  # a verification takes a few seconds per family
def test_a_trainer_that_ignored_the_window_fails(family_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention, "_window_binds", lambda segments, window: False)
    report = verify(family_dirs["gemma3"])
    assert not report["passed"] and report["logits_max_abs_diff"] > 100 * LOGIT_TOLERANCE


@pytest.mark.slow  # a verification takes a few seconds per family
def test_loss_chunking_on_passes_where_it_applies(family_dirs: dict[str, Path]) -> None:
    report = verify(family_dirs["qwen3_moe"], loss_chunking="on")
    assert report["loss_chunked"] and report["passed"], report
    assert not verify(family_dirs["gemma3"], loss_chunking="on")["loss_chunked"]  # soft-capped logits: full path


@pytest.mark.slow  # a verification takes a few seconds per family
def test_cli_prints_the_json_report(family_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model-dir", str(family_dirs["qwen3"])]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["conversations"] == sum(len(row) for row in ROWS)


@pytest.mark.slow
def test_compiled_layers_match_too(family_dirs: dict[str, Path]) -> None:
    """Gemma3: inductor compiles its layers around packed_sdpa, the windowed fallback included."""
    report = verify(family_dirs["gemma3"], compile_layers=True)
    assert report["compiled"] and report["passed"], report


def _segments_reference(query, key, value, lengths, window, softcap, scale):
    """transformers' Gemma eager attention, one conversation at a time, with its causal (windowed) mask."""
    outs, start = [], 0
    groups = query.shape[1] // key.shape[1]
    module = torch.nn.Module()
    module.num_key_value_groups, module.training, module.head_dim = groups, False, query.shape[-1]
    for length in lengths:
        piece = slice(start, start + length)
        index = torch.arange(length)
        distance = index[:, None] - index[None, :]
        allowed = (distance >= 0) & ((distance < window) if window else True)
        mask = torch.zeros(length, length).masked_fill(~allowed, float("-inf"))[None, None]
        out, _ = eager_attention_forward(
            module, query[:, :, piece], key[:, :, piece], value[:, :, piece], mask, scaling=scale, softcap=softcap
        )
        outs.append(out)
        start += length
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize(("window", "softcap"), [(8, None), (None, 20.0), (8, 20.0), (64, None)])
def test_packed_attention_honours_windows_and_caps(window: int | None, softcap: float | None) -> None:
    torch.manual_seed(0)
    lengths = [20, 5, 30, 9]
    seq = sum(lengths)
    query = torch.randn(1, 4, seq, 16, requires_grad=True)
    key, value = (torch.randn(1, 2, seq, 16, requires_grad=True) for _ in range(2))
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    ours, _ = attention.packed_sdpa_forward(
        None, query, key, value, None, scaling=0.25, position_ids=position_ids, sliding_window=window, softcap=softcap
    )
    expected = _segments_reference(query, key, value, lengths, window, softcap, 0.25)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(ours.sum(), (query, key, value))
    expected_grads = torch.autograd.grad(expected.sum(), (query, key, value))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
