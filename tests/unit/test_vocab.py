"""Vocabulary growth and padding on tiny Llama and Qwen3 models built offline from their config classes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from support.masking_fixtures import tokenizer_for
from support.model_dirs import tiny_model
from transformers import AutoModelForCausalLM

from core.vocab import (
    PAD_MULTIPLE,
    VocabPadding,
    add_tokens,
    padded_size,
    read_vocab_padding,
    save_vocab_padding,
    vocab_padding,
)


def _tiny(kind: str, vocab_size: int, *, tied: bool) -> torch.nn.Module:
    return tiny_model(kind, vocab_size, tie_word_embeddings=tied, use_cache=False).eval()


def _tokenizer():
    return copy.deepcopy(tokenizer_for("chatml"))


def test_padded_size_rounds_up_to_the_multiple() -> None:
    assert [padded_size(n) for n in (0, 1, 64, 65, 151_669)] == [0, 64, 64, 128, 151_680]
    assert padded_size(10, multiple=8) == 16
    with pytest.raises(ValueError):
        padded_size(5, multiple=0)


def test_vocab_padding_names_a_tokenizer_larger_than_the_embeddings() -> None:
    tokenizer = _tokenizer()
    model = _tiny("llama", len(tokenizer) - 1, tied=True)
    with pytest.raises(ValueError, match="tokens were added to the tokenizer without resizing"):
        vocab_padding(model.config, tokenizer)
    padding = vocab_padding(_tiny("llama", 896, tied=True).config, tokenizer)
    assert padding.padding_rows == 896 - len(tokenizer) and padding.aligned


@pytest.mark.parametrize(("kind", "tied"), [("llama", True), ("llama", False), ("qwen3", True), ("qwen3", False)])
def test_added_tokens_pad_to_64_with_mean_rows(kind: str, tied: bool) -> None:
    tokenizer = _tokenizer()
    real_before = len(tokenizer)
    model = _tiny(kind, real_before, tied=tied)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    rng_before = torch.random.get_rng_state()

    padding = add_tokens(model, tokenizer, ["<item_1>", "<item_2>", "<item_3>"], special=True)

    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert padding.real_vocab_size == len(tokenizer) == real_before + 3
    assert padding.embedding_rows == padded_size(real_before + 3) and padding.embedding_rows % PAD_MULTIPLE == 0
    assert model.config.vocab_size == padding.embedding_rows
    new_in = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    assert new_in.shape[0] == new_out.shape[0] == padding.embedding_rows
    assert torch.equal(new_in[:real_before], old_in)  # trained rows are untouched
    assert torch.equal(new_out[:real_before], old_out)
    assert torch.allclose(new_in[real_before:], old_in.mean(0).expand(padding.embedding_rows - real_before, -1))
    assert torch.allclose(new_out[real_before:], old_out.mean(0).expand(padding.embedding_rows - real_before, -1))
    assert (new_in.data_ptr() == new_out.data_ptr()) == tied
    assert tokenizer.convert_tokens_to_ids("<item_2>") == real_before + 1


def test_generation_gives_padding_ids_no_probability() -> None:
    """Padding rows have weights (the mean row), so only suppression keeps their probability at zero."""
    tokenizer = _tokenizer()
    model = _tiny("llama", len(tokenizer), tied=False)
    padding = add_tokens(model, tokenizer, ["<item_1>"])
    assert padding.padding_rows > 0
    assert model.generation_config.suppress_tokens == padding.padding_ids

    def scores() -> torch.Tensor:
        out = model.generate(
            torch.tensor([[1, 2, 3]]),
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_scores=True,
        )
        return torch.stack(out.scores)

    suppressed = scores()
    assert torch.isneginf(suppressed[..., padding.real_vocab_size :]).all()
    assert torch.isfinite(suppressed[..., : padding.real_vocab_size]).all()
    model.generation_config.suppress_tokens = None
    assert torch.isfinite(scores()[..., padding.real_vocab_size :]).all()  # the check above is not vacuous


def test_tokens_that_fit_in_existing_padding_do_not_resize() -> None:
    tokenizer = _tokenizer()
    rows = padded_size(len(tokenizer) + 10)
    model = _tiny("qwen3", rows, tied=True)
    old = model.get_input_embeddings().weight.detach().clone()
    real_before = len(tokenizer)
    padding = add_tokens(model, tokenizer, ["<a>", "<b>"])
    assert padding.embedding_rows == rows and padding.real_vocab_size == real_before + 2
    weight = model.get_input_embeddings().weight.detach()
    assert torch.equal(weight[:real_before], old[:real_before])
    assert torch.allclose(weight[real_before : real_before + 2], old[:real_before].mean(0).expand(2, -1))


def test_padding_survives_save_and_load(tmp_path: Path) -> None:
    tokenizer = _tokenizer()
    model = _tiny("llama", len(tokenizer), tied=True)
    padding = add_tokens(model, tokenizer, ["<item_1>"])
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    save_vocab_padding(tmp_path, padding)
    assert read_vocab_padding(tmp_path) == padding
    assert read_vocab_padding(tmp_path / "nowhere") is None
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.generation_config.suppress_tokens == padding.padding_ids
    assert loaded.config.vocab_size == padding.embedding_rows
    assert VocabPadding(10, 64).to_dict() == {
        "real_vocab_size": 10,
        "embedding_rows": 64,
        "multiple": 64,
        "padding_rows": 54,
        "aligned": True,
    }
