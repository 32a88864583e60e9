"""Large vocabularies and MoE in the loss: chunked head, padding rows of the vocabulary, the router's aux loss."""

import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from training import loss as loss_module
from training.cpu import kernels
from training.data import IGNORE_INDEX
from training.distributed import DistContext
from training.loss import (
    LossSettings,
    accumulate_gradients,
    chunked_head_loss_sum,
    loss_settings,
    micro_batch_losses,
    non_pad_mask,
    router_statistics,
    token_loss_sum,
)

SINGLE = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), initialized=False)


def _head_case(rows: int = 37, hidden: int = 16, vocab: int = 320, bias: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, generator=g, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.3).requires_grad_()
    b = (torch.randn(vocab, generator=g) * 0.1).requires_grad_() if bias else None
    labels = torch.randint(0, vocab, (rows,), generator=g)
    labels[::5] = IGNORE_INDEX
    return h, w, b, labels


def _reference(h, w, b, labels, real=None):
    logits = F.linear(h, w, b)
    if real is not None:
        logits = logits[:, :real]
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    grads = torch.autograd.grad(loss * 0.5, [t for t in (h, w, b) if t is not None])
    return loss.detach(), grads


@pytest.mark.parametrize("use_kernel", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_chunked_head_equals_full_logits(monkeypatch: pytest.MonkeyPatch, use_kernel: bool, bias: bool) -> None:
    """Loss and the gradients of hidden, weight and bias match one full-logits cross-entropy within 1e-5."""
    if not use_kernel:
        monkeypatch.setattr(kernels, "cross_entropy_kernel", lambda *a: None)
    h, w, b, labels = _head_case(bias=bias)
    expected, expected_grads = _reference(h, w, b, labels)
    got = chunked_head_loss_sum(h, w, b, labels, chunk_rows=4)
    grads = torch.autograd.grad(got * 0.5, [t for t in (h, w, b) if t is not None])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_chunked_head_stays_fp32_under_bf16_autocast() -> None:
    h, w, b, labels = _head_case()
    expected, expected_grads = _reference(h, w, b, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked_head_loss_sum(h, w, b, labels, chunk_rows=8)
    grads = torch.autograd.grad(got * 0.5, [h, w, b])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_chunked_head_uses_the_c_kernel_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    if kernels.cross_entropy_kernel(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64)) is None:
        pytest.skip("no C compiler here: the kernel path is the ATen one")
    calls = []
    real = kernels.cross_entropy_kernel
    monkeypatch.setattr(kernels, "cross_entropy_kernel", lambda *a: calls.append(1) or real(*a))
    h, w, b, labels = _head_case()
    chunked_head_loss_sum(h, w, b, labels, chunk_rows=10)
    assert len(calls) == 4  # one per chunk of 37 rows


def test_padding_rows_of_the_vocabulary_get_no_probability_nor_gradient() -> None:
    """ids >= the real vocabulary are cut from the softmax: same loss as logits[:, :real], zero grad on those rows."""
    h, w, b, labels = _head_case(vocab=320)
    labels = torch.where(labels >= 300, 299, labels)
    expected, expected_grads = _reference(h, w, b, labels, real=300)
    got = chunked_head_loss_sum(h, w, b, labels, real_vocab_size=300, chunk_rows=8)
    grads = torch.autograd.grad(got * 0.5, [h, w, b])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    assert not grads[1][300:].any() and not grads[2][300:].any()
    # The unchunked path cuts the same columns.
    logits = F.linear(h, w, b).detach()
    torch.testing.assert_close(token_loss_sum(logits, labels, real_vocab_size=300), expected, rtol=1e-5, atol=1e-5)
    assert token_loss_sum(logits, labels) > expected  # the padding columns would take probability


def test_loss_settings_rules() -> None:
    big, small = LlamaConfig(vocab_size=151_936), LlamaConfig(vocab_size=4096)
    assert loss_settings("auto", big, 151_643).chunked and not loss_settings("auto", small, 4096).chunked
    assert loss_settings("on", small, 4096).chunked and not loss_settings("off", big, None).chunked
    assert not loss_settings("on", big, None, fsdp=True).chunked  # FSDP2 keeps the full-logits path
    assert loss_settings("auto", big, 151_643).real_vocab_size == 151_643
    assert loss_settings("auto", small, 4096).real_vocab_size is None
    capped = SimpleNamespace(vocab_size=262_144, final_logit_softcapping=30.0)
    assert not loss_settings("on", capped, None).chunked
    moe = Qwen3MoeConfig(num_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.01)
    assert loss_settings("auto", moe, None).router_top_k == 2 and loss_settings("auto", moe, None).router_aux_coef == 0
    moe.output_router_logits = True
    assert loss_settings("auto", moe, None).router_aux_coef == 0.01
    assert loss_settings("auto", small, None).router_top_k == 0


def _packed_batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two rows of two conversations each plus tail padding; labels on about half the positions."""
    g = torch.Generator().manual_seed(seed)
    rows, seq_len, lengths = 2, 24, [(9, 8), (11, 6)]
    input_ids = torch.randint(0, vocab, (rows, seq_len), generator=g)
    position_ids = torch.zeros(rows, seq_len, dtype=torch.int64)
    labels = torch.full((rows, seq_len), IGNORE_INDEX)
    for r, (a, b) in enumerate(lengths):
        used = a + b
        position_ids[r] = torch.cat([torch.arange(a), torch.arange(b), torch.arange(seq_len - used)])
        labels[r, 2:used:2] = torch.randint(0, vocab, (len(range(2, used, 2)),), generator=g)
    tokens = torch.tensor([a + b for a, b in lengths])
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "tokens": tokens}


def _llama(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, attn_implementation="sdpa",
    )  # fmt: skip
    return LlamaForCausalLM(cfg).train()


@pytest.mark.slow
def test_training_step_chunked_equals_unchunked_with_padded_vocabulary() -> None:
    """The whole step (model forward through the hidden-state path, DDP-free) gives the same loss and gradients."""
    vocab, real = 1024, 1000
    batches = [_packed_batch(real, seed) for seed in range(2)]
    grads, losses = [], []
    for chunked in (False, True):
        model = _llama(vocab)
        step = accumulate_gradients(model, batches, SINGLE, settings=LossSettings(chunked, real_vocab_size=real))
        losses.append(step.mean_loss)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        assert model.lm_head.forward.__func__ is type(model.lm_head).forward  # the head is restored
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert not grads[1]["lm_head.weight"][real:].any()


def _moe(output_router_logits: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
        decoder_sparse_step=1, output_router_logits=output_router_logits, router_aux_loss_coef=0.05,
        attn_implementation="sdpa",
    )  # fmt: skip
    return Qwen3MoeForCausalLM(cfg).train()


def _unpacked(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed rows' conversations, one per row, right-padded, with their attention mask."""
    convs = []
    for r in range(batch["input_ids"].shape[0]):
        starts = [t for t in range(int(batch["tokens"][r])) if batch["position_ids"][r, t] == 0]
        bounds = [*starts, int(batch["tokens"][r])]
        convs += [batch["input_ids"][r, a:b] for a, b in itertools.pairwise(bounds)]
    width = max(len(c) for c in convs)
    ids = torch.zeros(len(convs), width, dtype=torch.int64)
    mask = torch.zeros(len(convs), width, dtype=torch.int64)
    for i, c in enumerate(convs):
        ids[i, : len(c)], mask[i, : len(c)] = c, 1
    return ids, mask


def test_router_aux_loss_on_packed_rows_equals_hf_on_the_unpacked_batch() -> None:
    """Packing conversations into rows changes neither the aux loss nor the expert counts; padding is left out."""
    model, batch = _moe(True), _packed_batch(256)
    with torch.no_grad():
        losses = micro_batch_losses(model, batch, loss_settings("auto", model.config, None))
        ids, mask = _unpacked(batch)
        hf = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
        packed_hf = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], output_router_logits=True)
    expected = load_balancing_loss_func(hf.router_logits, 4, 2, mask)
    torch.testing.assert_close(losses.router_aux, expected, rtol=1e-5, atol=1e-6)
    _, hf_counts = router_statistics(hf.router_logits, 2, mask.bool())
    torch.testing.assert_close(losses.expert_tokens, hf_counts)
    assert int(losses.expert_tokens.sum()) == 2 * 2 * int(batch["tokens"].sum())  # layers x top-k x tokens
    assert abs(float(packed_hf.aux_loss) - float(expected)) > 1e-4  # HF without a mask counts the padding


def test_moe_step_adds_the_weighted_aux_loss_and_reports_expert_counts() -> None:
    batches = [_packed_batch(256, seed) for seed in range(2)]
    with_aux, plain = _moe(True), _moe(False)
    step = accumulate_gradients(with_aux, batches, SINGLE, settings=loss_settings("auto", with_aux.config, None))
    plain_step = accumulate_gradients(plain, batches, SINGLE, settings=loss_settings("auto", plain.config, None))
    assert step.mean_loss == pytest.approx(plain_step.mean_loss, rel=1e-6)  # the token loss does not include it
    assert step.router_aux is not None and plain_step.router_aux is not None
    assert sum(map(sum, step.expert_tokens)) == 2 * 2 * sum(int(b["tokens"].sum()) for b in batches)
    gate = "model.layers.0.mlp.gate.weight"
    got = dict(with_aux.named_parameters())[gate].grad
    without = dict(plain.named_parameters())[gate].grad
    assert not torch.allclose(got, without)  # the aux loss reaches the routers
    # ... by exactly coef * aux / micro-batches.
    ref = _moe(True)
    for b in batches:
        aux = micro_batch_losses(ref, b, loss_settings("auto", ref.config, None)).router_aux
        (aux * 0.05 / 2).backward()
    torch.testing.assert_close(got - without, dict(ref.named_parameters())[gate].grad, rtol=1e-4, atol=1e-7)


def test_non_pad_mask_is_the_row_tail() -> None:
    mask = non_pad_mask(torch.Size([2, 5]), torch.tensor([3, 5]))
    assert mask.tolist() == [[True, True, True, False, False], [True] * 5]
    assert loss_module.CHUNK_VOCAB_THRESHOLD == 65_536
