"""packed_sdpa: per-conversation attention gives the same logits and gradients as the masked full row."""

from pathlib import Path

import pytest
import torch
from support.training_builders import make_base_model
from transformers import AutoModelForCausalLM

from training.attention import PACKED_SDPA, _packed_sdpa_loop, packed_sdpa_forward, resolve_attn
from training.config import TrainConfig
from training.cpu import kernels as cpu_kernels
from training.cpu.attention import packed_attention_cpu
from training.data import segment_table
from training.distributed import DistContext


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("base"))


def test_segments_start_at_every_row_and_position_restart() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5], [3, 4, 0, 1, 2, 3]])
    # Row 3 starts mid-conversation (an overlong conversation's continuation): still a new segment.
    table = [(0, 0, 3), (0, 3, 2), (0, 5, 1), (1, 0, 6), (2, 0, 2), (2, 2, 4)]
    assert segment_table(positions, 3).tolist() == [list(t) for t in table]
    assert segment_table(torch.arange(4)[None], 2).tolist() == [[0, 0, 4], [1, 0, 4]]  # one row, broadcast


def _packed_batch(rows: int, seq_len: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    position_ids = torch.empty(rows, seq_len, dtype=torch.int64)
    for r in range(rows):
        cursor = 0
        while cursor < seq_len:
            size = min(seq_len - cursor, int(torch.randint(1, 40, (), generator=g)))
            position_ids[r, cursor : cursor + size] = torch.arange(size)
            cursor += size
    return {"input_ids": torch.randint(0, 300, (rows, seq_len), generator=g), "position_ids": position_ids}


def test_logits_and_gradients_match_masked_sdpa(base_model: Path) -> None:
    batch = _packed_batch(rows=3, seq_len=96, seed=0)
    target = torch.randint(0, 300, (3, 96), generator=torch.Generator().manual_seed(1))
    results = {}
    for attn in ("sdpa", PACKED_SDPA):
        model = AutoModelForCausalLM.from_pretrained(base_model, attn_implementation=attn, dtype=torch.float32)
        logits = model(**batch, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1)).backward()
        results[attn] = (logits.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(results[PACKED_SDPA][0], results["sdpa"][0], rtol=0, atol=1e-5)
    for name, grad in results["sdpa"][1].items():
        torch.testing.assert_close(results[PACKED_SDPA][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_an_attention_mask_is_refused_with_the_way_out() -> None:
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="use attn_implementation='sdpa' for padded batches"):
        packed_sdpa_forward(torch.nn.Module(), q, q, q, attention_mask=torch.ones(1, 1, 4, 4, dtype=torch.bool))


def test_auto_is_per_conversation_attention_on_cpu(tmp_path: Path) -> None:
    cfg = TrainConfig(base_model_dir=str(tmp_path), shard_dirs=[str(tmp_path)], output_dir=str(tmp_path))
    cpu = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), initialized=False)
    assert cfg.attn_implementation == "auto" and resolve_attn(cfg, cpu) == PACKED_SDPA
    cuda = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cuda"), initialized=False)
    assert resolve_attn(cfg, cuda) == "sdpa"
    explicit = TrainConfig(**{**cfg.__dict__, "attn_implementation": "eager"})
    assert resolve_attn(explicit, cpu) == "eager"


def _grouped_qkv(lengths: list[int], head_dim: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Two rows of grouped-query heads laid out as transformers hands them over ([B, T, H, D] viewed as
    [B, H, T, D]), and position_ids: row 0 packs `lengths`, row 1 is one conversation."""
    seq_len = sum(lengths)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, seq_len, 6, head_dim, generator=g).transpose(1, 2).requires_grad_()
    k, v = (torch.randn(2, seq_len, 2, head_dim, generator=g).transpose(1, 2).requires_grad_() for _ in range(2))
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in lengths]), torch.arange(seq_len)])
    return q, k, v, position_ids


@pytest.fixture(params=["kernel", "flash"])
def cpu_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the CPU operator computes: our C kernel, and ATen's flash kernel it falls back to."""
    if request.param == "flash":
        monkeypatch.setattr(cpu_kernels, "attention_kernel", lambda *tensors: None)
    elif cpu_kernels._attention(8) is None:
        pytest.skip("no C compiler here to build the CPU attention kernel")
    return request.param


# Conversations of length 1, around the kernel's blocks (8 rows, 32 keys) and past 64 keys.
LENGTHS = [1, 7, 33, 1, 70, 9]


@pytest.mark.parametrize("head_dim", [8, 32, 64])
def test_cpu_operator_matches_stock_attention_per_conversation(cpu_backend: str, head_dim: int) -> None:
    results = []
    for path in ("operator", "stock"):
        q, k, v, position_ids = _grouped_qkv(LENGTHS, head_dim, seed=3)
        if path == "operator":
            out = packed_sdpa_forward(torch.nn.Module(), q, k, v, None, position_ids=position_ids)[0]
        else:
            out = _packed_sdpa_loop(q, k, v, position_ids, 0.0, None)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((out.detach(), q.grad, k.grad, v.grad))
    for name, got, want in zip(("output", "dq", "dk", "dv"), *results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


def test_cpu_operator_registration_is_consistent_for_autograd_and_compile(cpu_backend: str) -> None:
    q, k, v, position_ids = _grouped_qkv([5, 3, 4], 8, seed=4)
    torch.library.opcheck(packed_attention_cpu, (q, k, v, position_ids, 8**-0.5))
