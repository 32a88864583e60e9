"""Vocabulary growth and padding: adding tokens to a model without disturbing what it already predicts.

Adding tokens (new control tokens, catalog item tokens) grows the embedding matrix. Its row count is
padded up to a multiple of ``PAD_MULTIPLE`` so the output projection keeps a matmul-friendly shape and
a few more tokens can be added later without another resize. Every new row starts at the mean of the
model's real rows: a token the model has never seen then looks like an average token instead of a
random direction, so the next-token distribution over the existing vocabulary barely moves.

Padding rows (ids the tokenizer can never produce, ``real_vocab_size <= id < embedding_rows``) must
never receive probability: generation suppresses them through ``generation_config.suppress_tokens``,
and the trainer's loss leaves them out. The real size is written next to the weights
(``VOCAB_PADDING_FILE``) so both sides read the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

PAD_MULTIPLE = 64
VOCAB_PADDING_FILE = "vocab_padding.json"


@dataclass(frozen=True)
class VocabPadding:
    """How a model's embedding rows relate to the ids its tokenizer can produce."""

    real_vocab_size: int  # len(tokenizer): ids 0 .. real_vocab_size - 1 are tokens
    embedding_rows: int  # rows of the input embedding = columns of the logits
    multiple: int = PAD_MULTIPLE

    @property
    def padding_rows(self) -> int:
        return self.embedding_rows - self.real_vocab_size

    @property
    def padding_ids(self) -> list[int]:
        return list(range(self.real_vocab_size, self.embedding_rows))

    @property
    def aligned(self) -> bool:
        """Whether the row count is a multiple of ``multiple`` (what the trainer's matmuls like)."""
        return self.embedding_rows % self.multiple == 0

    def to_dict(self) -> dict[str, int | bool]:
        return {**asdict(self), "padding_rows": self.padding_rows, "aligned": self.aligned}


def padded_size(n: int, multiple: int = PAD_MULTIPLE) -> int:
    """The smallest multiple of ``multiple`` that holds ``n`` rows."""
    if n < 0 or multiple < 1:
        raise ValueError(f"padded_size needs n >= 0 and multiple >= 1, got n={n}, multiple={multiple}")
    return -(-n // multiple) * multiple


def embedding_rows(config: Any) -> int:
    """The embedding row count a model config declares (multimodal configs keep it on the text config)."""
    return int(config.get_text_config().vocab_size)


def vocab_padding(config: Any, tokenizer: Any, multiple: int = PAD_MULTIPLE) -> VocabPadding:
    """The padding a model directory has as it stands; ValueError when the tokenizer outgrows the embeddings.

    A tokenizer with more ids than embedding rows would index past the matrix at the first such token, deep
    inside a training step; naming it here turns that into an import error that says what to do.
    """
    rows = embedding_rows(config)
    real = len(tokenizer)
    if real > rows:
        raise ValueError(
            f"the tokenizer has {real} tokens but the model has only {rows} embedding rows: tokens were added "
            "to the tokenizer without resizing the model; resize with core.vocab.add_tokens or "
            "model.resize_token_embeddings and save both again"
        )
    return VocabPadding(real_vocab_size=real, embedding_rows=rows, multiple=multiple)


def _initialise_rows_at_mean(weight: torch.Tensor, real_rows: int) -> None:
    """Set rows ``real_rows..`` to the mean of rows ``0..real_rows`` (the rows of real, trained tokens)."""
    if real_rows < weight.shape[0]:
        weight[real_rows:] = weight[:real_rows].mean(dim=0, keepdim=True)


def _suppress(generation_config: GenerationConfig, padding: VocabPadding) -> bool:
    """Add the padding ids to ``suppress_tokens``, keeping ids the config already suppresses; True if it changed."""
    before = list(generation_config.suppress_tokens or [])
    keep = [i for i in before if i < padding.real_vocab_size]
    generation_config.suppress_tokens = sorted(set(keep) | set(padding.padding_ids)) or None
    return list(generation_config.suppress_tokens or []) != before


def suppress_padding(model: Any, padding: VocabPadding) -> None:
    """Make ``generate`` give padding ids no probability."""
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        _suppress(generation_config, padding)


def suppress_padding_in_dir(model_dir: Path, config: Any, padding: VocabPadding) -> bool:
    """Write the padding suppression into a saved model's generation_config.json; True when the file changed.

    For directories that come padded already (Qwen3's 151,936 rows hold 151,669 tokens): their padding rows
    carry whatever the checkpoint left there, and only suppression keeps generation from sampling them.
    """
    if not padding.padding_rows:
        return False
    try:
        generation_config = GenerationConfig.from_pretrained(model_dir, local_files_only=True)
    except OSError:  # no generation_config.json: start from the model config, as from_pretrained would
        generation_config = GenerationConfig.from_model_config(config)
    if not _suppress(generation_config, padding):
        return False
    generation_config.save_pretrained(model_dir)
    return True


def add_tokens(
    model: Any,
    tokenizer: Any,
    tokens: Sequence[str],
    *,
    special: bool = False,
    multiple: int = PAD_MULTIPLE,
) -> VocabPadding:
    """Add ``tokens`` to the tokenizer and grow ``model`` to match; returns the new padding.

    Tokens the tokenizer already has are left alone. Every row from the first new id on (new tokens and
    padding, including padding rows the model already had) is set to the mean of the real rows before the
    call, in the input embedding and, when untied, the output projection. The row count becomes the next
    multiple of ``multiple``; a model whose existing padding already holds the new tokens is not resized.
    """
    before = vocab_padding(model.config, tokenizer, multiple)
    tokenizer.add_tokens(list(tokens), special_tokens=special)
    real = len(tokenizer)
    rows = max(before.embedding_rows, padded_size(real, multiple))
    if rows != before.embedding_rows:
        with torch.random.fork_rng(devices=[]):  # resizing draws random rows we overwrite; keep the caller's RNG
            model.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        _initialise_rows_at_mean(model.get_input_embeddings().weight, before.real_vocab_size)
        head = model.get_output_embeddings()
        if head is not None and head.weight is not model.get_input_embeddings().weight:
            _initialise_rows_at_mean(head.weight, before.real_vocab_size)
        if head is not None and getattr(head, "bias", None) is not None:
            _initialise_rows_at_mean(head.bias.unsqueeze(1), before.real_vocab_size)
    padding = VocabPadding(real_vocab_size=real, embedding_rows=rows, multiple=multiple)
    suppress_padding(model, padding)
    return padding


def save_vocab_padding(model_dir: Path, padding: VocabPadding) -> None:
    (Path(model_dir) / VOCAB_PADDING_FILE).write_text(json.dumps(padding.to_dict(), indent=2, sort_keys=True))


def read_vocab_padding(model_dir: Path) -> VocabPadding | None:
    """The padding recorded next to a model's weights, None where nothing was recorded."""
    path = Path(model_dir) / VOCAB_PADDING_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return VocabPadding(
        real_vocab_size=int(data["real_vocab_size"]),
        embedding_rows=int(data["embedding_rows"]),
        multiple=int(data.get("multiple", PAD_MULTIPLE)),
    )
