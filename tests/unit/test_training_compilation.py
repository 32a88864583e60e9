"""Compiled decoder layers: the same loss and gradients as eager, and compile only where it is verified."""

import copy
from pathlib import Path

import pytest
import torch
from support.training_builders import make_base_model
from transformers import AutoModelForCausalLM

from training.attention import PACKED_SDPA
from training.config import TrainConfig
from training.cpu import compilation
from training.cpu.compilation import compile_decoder_layers, should_compile
from training.data import IGNORE_INDEX
from training.distributed import DistContext
from training.loss import micro_batch_loss_sum

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), initialized=False)


def _cfg(tmp_path: Path, **overrides: object) -> TrainConfig:
    return TrainConfig(base_model_dir=str(tmp_path), shard_dirs=[str(tmp_path)], output_dir=str(tmp_path), **overrides)


def test_auto_compiles_on_cpu_only_where_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert should_compile(_cfg(tmp_path), CPU)[0] is True
    assert should_compile(_cfg(tmp_path, compile="off"), CPU)[0] is False
    two_ranks = DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), initialized=True)
    assert should_compile(_cfg(tmp_path, distributed="fsdp2"), two_ranks) == (False, "compile auto: off with FSDP2")
    assert should_compile(_cfg(tmp_path, distributed="ddp"), two_ranks)[0] is True
    assert should_compile(_cfg(tmp_path, activation_checkpointing=True), CPU)[0] is False
    gpu = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cuda"), initialized=False)
    assert should_compile(_cfg(tmp_path), gpu)[0] is False and should_compile(_cfg(tmp_path, compile="on"), gpu)[0]
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compilation.shutil, "which", lambda name: None)
    compile_on, why = should_compile(_cfg(tmp_path), CPU)
    assert compile_on is False and "no C++ compiler" in why


@pytest.mark.slow  # inductor compiles the forward and backward of each layer
def test_compiled_layers_match_eager_loss_and_gradients(tmp_path: Path) -> None:
    base = make_base_model(tmp_path / "base")
    eager = AutoModelForCausalLM.from_pretrained(base, attn_implementation=PACKED_SDPA, dtype=torch.float32).train()
    compiled = copy.deepcopy(eager)
    assert compile_decoder_layers(compiled) == eager.config.num_hidden_layers
    assert all(layer._compiled_call_impl is not None for layer in compiled.model.layers)
    g = torch.Generator().manual_seed(0)
    position_ids = torch.cat([torch.arange(20), torch.arange(30), torch.arange(14)]).repeat(2, 1)
    labels = torch.randint(0, 300, (2, 64), generator=g)
    labels[:, ::3] = IGNORE_INDEX
    batch = {"input_ids": torch.randint(0, 300, (2, 64), generator=g), "position_ids": position_ids, "labels": labels}
    torch._dynamo.utils.counters.clear()
    for _ in range(2):  # the second call runs the cached compiled graphs
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
            loss = micro_batch_loss_sum(model, batch)
            loss.backward()
            model.last_loss = loss.detach()
        torch.testing.assert_close(compiled.last_loss, eager.last_loss, rtol=1e-5, atol=1e-4)
        for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    # The attention operator is traced, not a break: one graph per layer, forward and backward.
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    assert set(compiled.state_dict()) == set(eager.state_dict())  # checkpoints keep their keys
