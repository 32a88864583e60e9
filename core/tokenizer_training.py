"""Train a small byte-level BPE tokenizer that carries one of our chat templates.

The platform's toy base models need a tokenizer whose chat template, control tokens
and encoding behaviour match what a real chat model ships, so the masking and
train/serve-skew checks are exercised for real. Byte-level BPE means every unicode
string round-trips (``decode(encode(x)) == x``); control tokens are registered as
special added tokens so that they are single ids isolated before pre-tokenization.

``tokenizer_fingerprint`` hashes a saved tokenizer directory so shard manifests can
name the exact tokenizer (files + chat template) that produced their token ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from core.chat_templates import TemplateSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Pre-tokenization split, applied before the byte-level mapping. Unlike GPT-2's regex it
# has no look-ahead, so a run of newlines is one piece whatever follows it: a prompt
# that ends in "\n\n" (the header template's generation prompt) splits exactly like the
# same characters inside a full conversation. Without that, training and serving would
# tokenize the prompt boundary differently (the skew the masking checks reject).
# A single space stays attached to the word after it, as in GPT-2.
SPLIT_PATTERN = r" ?\p{L}+\p{M}*(?:\p{L}+\p{M}*)*| ?\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|[\r\n]+|[^\S\r\n]+"

# Files `save_pretrained` writes that define tokenization; the fingerprint hashes them.
_FINGERPRINT_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def train_bpe_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int,
    spec: TemplateSpec,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and return a transformers tokenizer for ``spec``.

    The result has ``spec``'s control strings as special added tokens (ids 0..k-1, in
    ``spec.special_tokens`` order), its chat template, and bos/eos/pad set, so
    ``save_pretrained`` + ``AutoTokenizer.from_pretrained`` reproduce it exactly.
    ``vocab_size`` counts the special tokens and the 256 byte symbols.
    """
    n_fixed = len(spec.special_tokens) + 256
    if vocab_size < n_fixed:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for template {spec.name!r}: it needs at least "
            f"{n_fixed} (256 byte symbols + {len(spec.special_tokens)} special tokens); raise vocab_size"
        )
    # Imported here: the Dagster code location imports this module for tokenizer_fingerprint alone.
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False) for t in spec.special_tokens]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # `train` registers the trainer's special tokens; make sure they are special added tokens.
    tok.add_special_tokens(special)

    extra = [t for t in spec.special_tokens if t not in {spec.bos_token, spec.eos_token, spec.pad_token}]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        extra_special_tokens=extra,
        chat_template=spec.template,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def tokenizer_fingerprint(tokenizer_dir: Path) -> str:
    """sha256 over a saved tokenizer's files (sorted names + bytes) and its chat template.

    Two directories with the same fingerprint tokenize and render identically, so a
    shard manifest that records it pins the exact tokenizer its ids came from.
    """
    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{tokenizer_dir} has no tokenizer.json; pass the directory written by save_pretrained")
    h = hashlib.sha256()
    for name in sorted(_FINGERPRINT_FILES):
        path = tokenizer_dir / name
        if path.is_file():
            h.update(name.encode() + b"\0")
            h.update(path.read_bytes())
            h.update(b"\0")
    h.update(b"chat_template\0")
    h.update(_chat_template_text(tokenizer_dir).encode())
    return h.hexdigest()


def _chat_template_text(tokenizer_dir: Path) -> str:
    """The chat template a saved tokenizer carries, wherever transformers put it."""
    jinja = tokenizer_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = tokenizer_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
        if template is not None:
            return json.dumps(template, sort_keys=True)
    return ""
