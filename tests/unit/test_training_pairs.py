"""Packed preference rows: each prompt computed once, and still exactly the log-probs and gradients of
prompt + completion run on its own."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from support.training_builders import make_base_model, make_pair_shards, random_pairs
from transformers import AutoModelForCausalLM

from core.shards import ShardDataError, write_shard_directory
from training.dpo_loss import preference_losses
from training.pair_data import PairLoader, build_batch, completion_logps, load_pairs

pytestmark = pytest.mark.usefixtures("restore_torch_globals")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def corpus(base_model: Path, tmp_path_factory: pytest.TempPathFactory):
    shard = make_pair_shards(tmp_path_factory.mktemp("pairs") / "v1", base_model, n=12, seed=3)
    return load_pairs([shard], "train")[0]


def _model(base_model: Path, attention: str = "sdpa") -> torch.nn.Module:
    import training.attention  # noqa: F401  registers pair_sdpa with transformers

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(base_model, attn_implementation=attention, dtype=torch.float32)


def _plain_logp(model: torch.nn.Module, prompt: np.ndarray, completion: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """The straightforward way: prompt + completion alone, next-token log-probs summed where the mask is 1."""
    ids = torch.tensor(np.concatenate([prompt, completion]))[None]
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    rows = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(completion))
    picked = logp[rows, torch.tensor(completion)]
    return picked[torch.tensor(mask, dtype=torch.bool)].sum()


@pytest.mark.parametrize("attention", ["sdpa", "pair_sdpa"])
def test_packed_log_probs_equal_each_completion_run_alone(base_model: Path, corpus, attention: str) -> None:
    model = _model(base_model, attention)
    rows = [[0, 1, 2, 3], [4, 5], [6]]
    with torch.no_grad():
        sums, counts = completion_logps(model, build_batch(corpus, rows, 128, 0))
        for slot, i in enumerate([0, 1, 2, 3, 4, 5, 6]):
            for side, name in enumerate(("chosen", "rejected")):
                expected = _plain_logp(model, corpus.part("prompt", i), corpus.part(name, i), corpus.mask(name, i))
                assert sums[slot, side].item() == pytest.approx(expected.item(), abs=1e-4)
                assert counts[slot, side].item() == corpus.mask(name, i).sum()


@pytest.mark.parametrize("attention", ["sdpa", "pair_sdpa"])
def test_the_rejected_completion_never_sees_the_chosen_one(base_model: Path, corpus, attention: str) -> None:
    model = _model(base_model, attention)
    batch = build_batch(corpus, [[0]], 64, 0)
    with torch.no_grad():
        before, _ = completion_logps(model, batch)
        p, c = len(corpus.part("prompt", 0)), len(corpus.part("chosen", 0))
        batch["input_ids"][0, p : p + c] = (batch["input_ids"][0, p : p + c] + 7) % 300
        after, _ = completion_logps(model, batch)
    assert after[0, 1].item() == pytest.approx(before[0, 1].item(), abs=1e-5)
    assert after[0, 0].item() != pytest.approx(before[0, 0].item(), abs=1e-3)


@pytest.mark.parametrize("attention", ["sdpa", "pair_sdpa"])
def test_dpo_loss_and_gradients_equal_an_unpacked_reference_implementation(
    base_model: Path, corpus, attention: str
) -> None:
    reference = torch.tensor([[-30.0, -31.0], [-20.0, -25.0], [-28.0, -22.0]], dtype=torch.float64)
    packed_model, plain_model = _model(base_model, attention), _model(base_model)
    sums, _ = completion_logps(packed_model, build_batch(corpus, [[0, 1], [2]], 96, 0))
    packed = preference_losses(sums[:, 0].double(), sums[:, 1].double(), reference[:, 0], reference[:, 1], beta=0.1)
    packed.loss.mean().backward()
    plain_losses = []
    for slot, i in enumerate([0, 1, 2]):
        chosen = _plain_logp(plain_model, corpus.part("prompt", i), corpus.part("chosen", i), corpus.mask("chosen", i))
        rejected = _plain_logp(
            plain_model, corpus.part("prompt", i), corpus.part("rejected", i), corpus.mask("rejected", i)
        )
        margin = 0.1 * ((chosen.double() - reference[slot, 0]) - (rejected.double() - reference[slot, 1]))
        plain_losses.append(-torch.nn.functional.logsigmoid(margin))
    plain = torch.stack(plain_losses).mean()
    plain.backward()
    assert packed.loss.mean().item() == pytest.approx(plain.item(), abs=1e-6)
    for (name, a), (_, b) in zip(packed_model.named_parameters(), plain_model.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_a_pair_longer_than_the_row_is_skipped_and_counted(corpus) -> None:
    longest = max(corpus.length(i) for i in range(len(corpus)))
    loader = PairLoader(corpus, seq_len=longest - 1, rows_per_batch=2, buffer_pairs=64)
    loader.next_batch()
    too_long = sum(corpus.length(i) > longest - 1 for i in range(len(corpus)))
    assert loader.state.pairs_too_long == too_long >= 1
    assert loader.state.pairs_packed == len(corpus) - too_long


def test_the_loader_resumes_to_the_same_batches(corpus) -> None:
    loader = PairLoader(corpus, seq_len=96, rows_per_batch=2, buffer_pairs=5, seed=4)
    for _ in range(3):
        loader.next_batch()
    saved = loader.state_dict()
    expected = [loader.next_batch() for _ in range(4)]
    resumed = PairLoader(corpus, seq_len=96, rows_per_batch=2, buffer_pairs=5, seed=4)
    resumed.load_state_dict(saved)
    for want in expected:
        got = resumed.next_batch()
        assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["pair_index"], want["pair_index"])


def test_conversation_shards_are_refused(base_model: Path, tmp_path: Path) -> None:
    from support.training_builders import make_shards

    with pytest.raises(ShardDataError, match="preference_pairs"):
        load_pairs([make_shards(tmp_path / "sft", base_model, n=4)], "train")


def test_a_completion_without_loss_tokens_is_refused(base_model: Path, tmp_path: Path) -> None:
    from core.preferences.tokenize import PAIR_LAYOUT
    from core.tokenizer_training import tokenizer_fingerprint

    rows = random_pairs(3, vocab=300, seed=1)
    rows = rows.with_columns(rejected_mask=rows["rejected_mask"].list.eval(pl.element() * 0))
    out = tmp_path / "v"
    out.mkdir()
    write_shard_directory(
        out,
        rows,
        partition="2026-01-01",
        tokenizer_fingerprint=tokenizer_fingerprint(base_model),
        source_data_version="x",
        layout=PAIR_LAYOUT,
    )
    with pytest.raises(ShardDataError, match="rejected completion"):
        load_pairs([out], "train")
