"""Packing is exact: a packed row computes the same logits as each conversation run alone.

This is what makes `position_ids` restarts + no attention mask safe: transformers 5
(masking_utils.find_packed_sequence_indices, used by create_causal_mask when
attention_mask is None and there is no cache) turns the restarts into a
block-diagonal causal mask for sdpa and eager attention.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from support.training_builders import make_base_model
from transformers import AutoModelForCausalLM

import training.attention  # noqa: F401  (registers packed_sdpa)
from training.data import Corpus, PackedLoader
from training.loss import forward_logits


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("base"))


def _corpus(lengths: list[int]) -> Corpus:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 300, sum(lengths)).astype(np.int64)
    mask = np.ones(sum(lengths), dtype=np.uint8)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Corpus([f"c{i}" for i in range(len(lengths))], tokens, mask, offsets)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "packed_sdpa"])
def test_packed_logits_equal_each_conversation_alone(base_model: Path, attn: str) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_model, attn_implementation=attn, dtype=torch.float32).eval()
    corpus = _corpus([13, 7, 21, 9, 4])
    loader = PackedLoader(corpus, seq_len=64, rows_per_batch=1, buffer_conversations=5)
    row = loader.next_row()
    assert len(row.segments) == 5 and row.tokens == 54  # all five in one row, 10 pad slots
    batch = {k: torch.from_numpy(getattr(row, k))[None] for k in ("input_ids", "position_ids")}
    with torch.no_grad():
        packed = forward_logits(model, batch)[0]
        unpacked = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        cursor, crossed = 0, 0.0
        for conv, start, size in row.segments:
            lo = int(corpus.offsets[conv]) + start
            alone = model(input_ids=torch.from_numpy(corpus.tokens[lo : lo + size])[None], use_cache=False).logits[0]
            torch.testing.assert_close(packed[cursor : cursor + size], alone, rtol=0, atol=1e-5)
            if cursor:
                crossed = max(crossed, float((unpacked[cursor : cursor + size] - alone).abs().max()))
            cursor += size
    # Negative control: without restarting positions the conversations do attend to each other.
    assert crossed > 1e-2
