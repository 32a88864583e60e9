"""The loss is the mean over the loss tokens of the GLOBAL batch (all ranks, all micro-steps)."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from support.training_builders import make_base_model
from transformers import AutoModelForCausalLM

import training.attention  # noqa: F401  (registers packed_sdpa)
from training.data import IGNORE_INDEX
from training.distributed import DistContext, wrap_model
from training.loss import LossSettings, accumulate_gradients, forward_logits, micro_batch_loss_sum, token_loss_sum

SINGLE = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), initialized=False)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("base"))


def _micro_batch(seed: int, loss_tokens_per_row: int, rows: int = 2, seq_len: int = 32) -> dict[str, torch.Tensor]:
    """Packed rows (two conversations + pad) whose labels carry `loss_tokens_per_row` targets each."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 300, (rows, seq_len), generator=g)
    position_ids = torch.cat([torch.arange(12), torch.arange(14), torch.arange(seq_len - 26)]).repeat(rows, 1)
    labels = torch.full((rows, seq_len), IGNORE_INDEX)
    for r in range(rows):
        where = torch.randperm(26, generator=g)[:loss_tokens_per_row]
        labels[r, where] = torch.randint(0, 300, (loss_tokens_per_row,), generator=g)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "tokens": torch.full((rows,), 26)}


# Very different loss-token densities: a mean of per-micro-batch means would be wrong here.
GLOBAL_BATCH = [_micro_batch(0, 2), _micro_batch(1, 20), _micro_batch(2, 7), _micro_batch(3, 25)]


def _load(base_model: Path, attn: str = "sdpa") -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32, attn_implementation=attn).train()


def _reference_grads(base_model: Path, batches: list[dict]) -> dict[str, torch.Tensor]:
    """Plain definition: one cross-entropy mean over every loss token of the global batch."""
    model = _load(base_model)
    logits = torch.cat([forward_logits(model, b) for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_token_loss_sum_ignores_unmasked_positions() -> None:
    logits = torch.randn(1, 4, 10)
    labels = torch.tensor([[3, IGNORE_INDEX, 7, IGNORE_INDEX]])
    expected = F.cross_entropy(logits[0, [0, 2]], torch.tensor([3, 7]), reduction="sum")
    torch.testing.assert_close(token_loss_sum(logits, labels), expected)


@pytest.mark.parametrize("attn", ["sdpa", "packed_sdpa"])
def test_accumulated_gradient_is_the_global_token_mean(base_model: Path, attn: str) -> None:
    """Full logits + stock attention (the definition) vs the training path: labelled-only logits, `attn`."""
    reference = _reference_grads(base_model, GLOBAL_BATCH)
    model = _load(base_model, attn)
    result = accumulate_gradients(model, GLOBAL_BATCH, SINGLE)
    assert result.loss_tokens == 2 * (2 + 20 + 7 + 25) and result.tokens == 4 * 2 * 26
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, reference[name], rtol=1e-5, atol=1e-7, msg=name)
    # The naive mean of micro-batch means gives a visibly different gradient on this data.
    naive = _load(base_model)
    for b in GLOBAL_BATCH:
        (token_loss_sum(forward_logits(naive, b), b["labels"]) / (b["labels"] != IGNORE_INDEX).sum() / 4).backward()
    grad = naive.model.embed_tokens.weight.grad
    assert not torch.allclose(grad, reference["model.embed_tokens.weight"], rtol=1e-3, atol=1e-6)


def test_micro_batch_without_labels_contributes_nothing(base_model: Path) -> None:
    """A micro-batch whose rows carry no label (all prompt) adds 0 loss and 0 gradient, and does not fail."""
    model = _load(base_model, "packed_sdpa")
    empty = {**GLOBAL_BATCH[0], "labels": torch.full_like(GLOBAL_BATCH[0]["labels"], IGNORE_INDEX)}
    loss = micro_batch_loss_sum(model, empty)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    with_labels = accumulate_gradients(_load(base_model, "packed_sdpa"), [empty, GLOBAL_BATCH[1]], SINGLE)
    assert with_labels.loss_tokens == 2 * 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, base_model: str, out_dir: str, port: int) -> None:
    """One of two gloo ranks: its half of GLOBAL_BATCH under DDP, FSDP2, then DDP with the chunked loss."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ctx = DistContext(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"), initialized=True)
    mine = GLOBAL_BATCH[rank * 2 : rank * 2 + 2]
    for side, strategy, chunked in (("ddp", "ddp", False), ("fsdp2", "fsdp2", False), ("ddp_chunked", "ddp", True)):
        model = wrap_model(_load(Path(base_model)), ctx, strategy)
        result = accumulate_gradients(model, mine, ctx, settings=LossSettings(chunked=chunked))
        grads = {}
        for name, param in model.named_parameters():
            grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
            grads[name.removeprefix("module.")] = grad.clone()
        if rank == 0:
            torch.save(
                {"grads": grads, "loss_tokens": result.loss_tokens, "loss": result.mean_loss},
                Path(out_dir) / f"{side}.pt",
            )
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gradient_equals_single_process_reference(base_model: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(str(base_model), str(tmp_path), _free_port()), nprocs=2, join=True)
    reference = _reference_grads(base_model, GLOBAL_BATCH)
    for strategy in ("ddp", "fsdp2", "ddp_chunked"):
        got = torch.load(tmp_path / f"{strategy}.pt", weights_only=True)
        assert got["loss_tokens"] == 108
        assert set(got["grads"]) == set(reference)
        for name, grad in got["grads"].items():
            torch.testing.assert_close(grad, reference[name], rtol=1e-5, atol=1e-7, msg=f"{strategy} {name}")
