"""Our C kernels for CPU training: built once per machine and kept, ATen when they cannot be, same numbers."""

import functools
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_training_attention import LENGTHS, _grouped_qkv

from training.attention import packed_sdpa_forward
from training.cpu import kernels as cpu_kernels
from training.data import IGNORE_INDEX
from training.loss import token_loss_sum

needs_compiler = pytest.mark.skipif(cpu_kernels._compiler() is None, reason="no C compiler here to build the kernels")


@needs_compiler
def test_a_library_is_built_once_per_source_and_head_size_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTTRAIN_KERNEL_CACHE", str(tmp_path))
    first = cpu_kernels.build("packed_attention", HEAD_DIM=32)
    modified = first.stat().st_mtime_ns
    assert cpu_kernels.build("packed_attention", HEAD_DIM=32) == first and first.stat().st_mtime_ns == modified
    other = cpu_kernels.build("packed_attention", HEAD_DIM=64)
    assert other != first and other.name.startswith("packed_attention_head_dim64_")
    assert cpu_kernels.build("cross_entropy").name.startswith("cross_entropy_")
    assert len(list(tmp_path.iterdir())) == 3  # no partial files left behind


def test_without_a_compiler_ours_step_aside_for_aten_and_say_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fresh_load = functools.cache(cpu_kernels.load.__wrapped__)
    monkeypatch.setattr(cpu_kernels, "load", fresh_load)
    monkeypatch.setattr(cpu_kernels, "_compiler", lambda: None)
    with caplog.at_level(logging.WARNING):
        assert cpu_kernels.load("cross_entropy") is None
    assert "ATen's kernel is used instead: no C compiler" in caplog.text
    monkeypatch.setattr(cpu_kernels, "load", functools.cache(cpu_kernels.load.__wrapped__))
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "off")
    assert cpu_kernels.load("packed_attention", HEAD_DIM=32) is None


def _threads(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: count)


@needs_compiler
def test_attention_kernel_gives_the_same_bits_on_one_thread_or_several(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = []
    for threads in (1, 3):
        _threads(monkeypatch, threads)
        q, k, v, position_ids = _grouped_qkv(LENGTHS, 16, seed=5)
        out = packed_sdpa_forward(torch.nn.Module(), q, k, v, None, position_ids=position_ids)[0]
        out.sum().backward()
        runs.append([out.detach(), q.grad, k.grad, v.grad])
    for got, want in zip(*runs, strict=True):
        assert torch.equal(got, want)


def _logits_and_labels(rows: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=g) * 8).requires_grad_()  # peaked rows, like a trained head
    labels = torch.randint(0, vocab, (rows,), generator=g)
    labels[::5] = IGNORE_INDEX
    return logits, labels


@needs_compiler
@pytest.mark.parametrize("threads", [1, 3])
def test_cross_entropy_kernel_matches_aten_in_loss_and_gradient(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    _threads(monkeypatch, threads)
    assert cpu_kernels.cross_entropy_kernel(*_logits_and_labels(2, 3, 0)) is not None
    results = []
    for path in ("ours", "aten"):
        logits, labels = _logits_and_labels(37, 1723, seed=1)
        if path == "ours":
            loss = token_loss_sum(logits, labels)
        else:
            loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        (loss * 0.37).backward()
        results.append((loss.detach(), logits.grad))
    (loss, grad), (aten_loss, aten_grad) = results
    torch.testing.assert_close(loss, aten_loss, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(grad, aten_grad, rtol=1e-5, atol=1e-7)
    assert not grad[::5].any()  # ignored rows get no gradient


@needs_compiler
def test_cross_entropy_kernel_names_a_label_outside_the_vocabulary() -> None:
    logits, labels = _logits_and_labels(6, 50, seed=2)
    labels[4] = 50
    with pytest.raises(IndexError, match="label 50 of row 4 is outside the vocabulary of 50"):
        token_loss_sum(logits, labels)


@needs_compiler
def test_the_summary_names_only_the_kernels_the_steps_called(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from training.config import TrainConfig
    from training.distributed import DistContext
    from training.summary import cpu_kernels_used

    model = torch.nn.Module()
    model.config = SimpleNamespace(hidden_size=64, num_attention_heads=2)

    def used(device: str, dtype: torch.dtype, attn: str = "auto") -> list[str]:
        cfg = TrainConfig(
            base_model_dir=str(tmp_path), shard_dirs=[str(tmp_path)], output_dir=str(tmp_path), attn_implementation=attn
        )
        ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device(device), initialized=False)
        return cpu_kernels_used(model, cfg, ctx, dtype)

    assert used("cpu", torch.float32) == ["attention", "cross_entropy"]
    assert used("cpu", torch.bfloat16) == ["cross_entropy"]  # bf16 attention runs in ATen; the loss is fp32
    assert used("cpu", torch.float32, attn="sdpa") == ["cross_entropy"]
    assert used("cuda", torch.bfloat16) == []
