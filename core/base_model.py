"""The `base_model` artifact: a Hugging Face model directory (tokenizer + weights).

Two sources:
- the built-in preset: a byte-level BPE tokenizer trained on the curated text,
  our ChatML-style chat template with generation markers, and a tiny
  Llama-architecture causal LM initialised from a seed (nothing downloaded);
- a local Hugging Face model directory, used as is with its own chat template, after the
  checks of core.model_checks (architecture, chat template, end-of-turn token, vocabulary).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.chat_templates import TEMPLATES
from core.template_defaults import TemplateValue, validate_defaults, write_template_defaults
from core.tokenizer_training import tokenizer_fingerprint, train_bpe_tokenizer

# torch and transformers are imported inside the functions that build or check a model: the Dagster code
# location (and every run worker it starts) imports this module for TinyModelPreset, and must not pay for them.
if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

MODEL_CARD = "base_model.json"


@dataclass(frozen=True)
class TinyModelPreset:
    """A few-million-parameter Llama-style model that trains in minutes on a CPU."""

    vocab_size: int = 4096
    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    template: str = "chatml"
    seed: int = 0


def build_preset_tokenizer(texts: Iterable[str], preset: TinyModelPreset) -> PreTrainedTokenizerBase:
    if preset.template not in TEMPLATES:
        raise ValueError(f"unknown chat template {preset.template!r}; choose one of {sorted(TEMPLATES)}")
    return train_bpe_tokenizer(texts, vocab_size=preset.vocab_size, spec=TEMPLATES[preset.template])


def build_preset_model(tokenizer: PreTrainedTokenizerBase, preset: TinyModelPreset) -> LlamaForCausalLM:
    """Initialise the tiny model deterministically from `preset.seed`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        max_position_embeddings=preset.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": preset.rope_theta},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=False,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(preset.seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_preset(out_dir: Path, texts: Iterable[str], preset: TinyModelPreset) -> dict:
    """Train the tokenizer, build the model and save both to `out_dir`; returns the model card."""
    from transformers.utils import logging as hf_logging

    tokenizer = build_preset_tokenizer(texts, preset)
    model = build_preset_model(tokenizer, preset)
    hf_logging.disable_progress_bar()  # keep Dagster's run logs free of progress bars
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    card = {
        "source": "preset",
        "preset": asdict(preset),
        "parameters": count_parameters(model),
        "vocab_size": len(tokenizer),
        "architecture": "LlamaForCausalLM",
        "tokenizer_fingerprint": tokenizer_fingerprint(out_dir),
    }
    (out_dir / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True))
    return card


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _copy_range(fin: int, fout: int, size: int) -> None:
    """Kernel-side copy; on btrfs/XFS (reflink) and NFS 4.2 it shares or server-copies blocks copy-on-write."""
    copied = 0
    while copied < size:
        n = os.copy_file_range(fin, fout, size - copied)
        if n == 0:
            break
        copied += n


def copy_file(src: Path, dst: Path) -> None:
    """Copy the bytes of `src` to a new file `dst`: a copy (or copy-on-write clone), never a hard link.

    A hard link shares the inode, so an in-place edit of the user's file (save_pretrained rewrites its files)
    would change an "immutable" version and its fingerprint.
    """
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        size = os.fstat(fin.fileno()).st_size
        try:
            if not hasattr(os, "copy_file_range"):
                raise OSError("copy_file_range is not available here")
            _copy_range(fin.fileno(), fout.fileno(), size)
        except OSError:  # another filesystem, an old kernel, not Linux: a plain read/write copy
            fin.seek(0)
            fout.seek(0)
            fout.truncate()
            shutil.copyfileobj(fin, fout, 1 << 20)
    shutil.copystat(src, dst)


def _snapshot(src: Path, out_dir: Path) -> None:
    """Byte-copy every file of `src` (hidden ones aside) under `out_dir`; refuses a file that changes meanwhile."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts):
            continue
        target = out_dir / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            before = _stat_key(path)
            copy_file(path, target)
            if _stat_key(path) != before or target.stat().st_size != before[1]:
                raise RuntimeError(
                    f"{path} changed while it was copied from BASE_MODEL_PATH={src}; "
                    "materialize base_model again once nothing writes to that directory"
                )


def import_local_model(src: Path, out_dir: Path, template_defaults: Mapping[str, TemplateValue] | None = None) -> dict:
    """Snapshot a local HF model directory into the artifact version and check it; returns the model card.

    The copy is a byte copy, never a hard link, and refuses a file that changes while it is copied (a torn
    snapshot of half-old weights must not become a version). Two files may then differ from the source: when
    the embedding has padding rows that generation_config.json does not suppress, the copy's does; with
    `template_defaults` (core.template_defaults), chat_template.jinja holds the template with those defaults.

    The architecture is checked from config.json before anything is copied; the tokenizer, chat template,
    end-of-turn token and vocabulary padding are checked on the copy (core.model_checks), so the findings
    describe exactly the files the version holds. A model the platform cannot train fails here with a
    message naming what is missing, instead of deep inside tokenization or training.
    """
    src = Path(src).expanduser().resolve()
    if not (src / "config.json").is_file():
        raise FileNotFoundError(
            f"BASE_MODEL_PATH={src} is not a Hugging Face model directory (no config.json); "
            "point it at a folder written by save_pretrained (or by huggingface-cli download)"
        )
    from transformers import AutoConfig

    from core.model_checks import check_architecture, check_model_dir, load_chat_tokenizer, warnings_for
    from core.vocab import suppress_padding_in_dir

    config = AutoConfig.from_pretrained(src, local_files_only=True)
    family = check_architecture(config, src)
    defaults = validate_defaults(template_defaults or {})
    _snapshot(src, out_dir)
    if defaults:
        write_template_defaults(load_chat_tokenizer(out_dir, src), out_dir, defaults)
    findings, padding = check_model_dir(out_dir, config, src)
    card = {
        "source": "local",
        "source_path": str(src),
        "architecture": (config.architectures or ["unknown"])[0],
        "family": family,
        "chat_template_defaults": defaults,
        **findings,
        "padding_suppression_written": suppress_padding_in_dir(out_dir, config, padding),
        "tokenizer_fingerprint": tokenizer_fingerprint(out_dir),
    }
    card["warnings"] = warnings_for(card)
    (out_dir / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True))
    return card


def read_model_card(model_dir: Path) -> dict:
    path = Path(model_dir) / MODEL_CARD
    return json.loads(path.read_text()) if path.is_file() else {}
