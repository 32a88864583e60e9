"""`TrainConfig`: every knob of an SFT run, read from a JSON (or YAML) file.

The config file is the whole contract between a launcher and the trainer, so it
is strict: an unknown key is an error (a typo like `max_step` must not silently
fall back to a default), and values are checked before any process group or
model is created.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

OVERLONG_CHOICES = ("split", "drop")
DISTRIBUTED_CHOICES = ("ddp", "fsdp2")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DTYPE_CHOICES = ("auto", "fp32", "bf16")
ATTN_CHOICES = ("auto", "packed_sdpa", "pair_sdpa", "sdpa", "eager")
COMPILE_CHOICES = ("auto", "on", "off")
LOSS_CHUNKING_CHOICES = ("auto", "on", "off")
ADAPTER_TYPES = ("lora",)
# The adapter keys a config may leave out, with what they default to (`type` has no default: it says which adapter).
LORA_DEFAULTS: dict[str, Any] = {
    "r": 8,
    "alpha": 16,
    "dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


class ConfigError(ValueError):
    """The training config is invalid; the message names the key and what to change."""


@dataclass
class TrainConfig:
    """One SFT run.

    The defaults here are THE training defaults: `python -m training.sft` with a minimal config file and a
    `trained_checkpoint` run with an empty Launchpad form both get them (`assets.training.TrainingRunConfig`
    takes its defaults from `TrainConfig.defaults()`, so the two cannot drift). They are sized for the built-in
    tiny preset on a CPU, which is what the demo trains: a few hundred optimizer steps of a bigger model want
    their own max_steps, lr and checkpoint_every.

    Paths
    - base_model_dir: HF model directory (weights + tokenizer) to start from.
    - shard_dirs: `tokenized_shards` version directories (each with manifest.json).
    - split: which split of the shards to train on.
    - output_dir: final HF model dir + summary.json + checkpoints/ go here.

    Data
    - seq_len: length of every packed row (tokens).
    - micro_batch_rows: packed rows per forward/backward per process.
    - grad_accum_steps: micro-batches per optimizer step per process.
      Global batch = micro_batch_rows * grad_accum_steps * world_size rows.
    - overlong: "split" cuts a conversation longer than seq_len into seq_len chunks;
      "drop" skips it. Both are counted in summary.json.
    - pack_buffer_rows: conversations packed together by best-fit-decreasing (larger
      = fuller rows, more memory, less shuffling locality).
    - check_tokenizer_fingerprint: refuse shards tokenized by a different tokenizer
      than base_model_dir's (that mismatch is silent train/serve skew).

    Optimization
    - max_steps: optimizer steps (the loader cycles epochs as needed).
    - lr, min_lr_ratio: peak LR; cosine decays to lr * min_lr_ratio at max_steps.
    - warmup_steps: linear warmup from lr/warmup_steps to lr.
    - weight_decay, betas: AdamW (decay applies to matrices only, not norms/biases).
    - grad_clip: max global gradient L2 norm (0 disables clipping).
    - seed: model-independent randomness: data order and torch/numpy/python RNGs.
    - activation_checkpointing: recompute activations in backward (less memory).

    Checkpoints
    - checkpoint_every: steps between checkpoints (a final one is always written).
    - keep_checkpoints: newest checkpoints kept on disk.

    Runtime
    - distributed: "ddp" (replicated weights) or "fsdp2" (sharded with fully_shard).
    - device: "auto" = cuda if available else cpu.
    - dtype: "auto" = fp32 on CPU, bf16 autocast on GPU.
    - attn_implementation: "packed_sdpa" (each conversation of a packed row attended on its
      own, training/attention.py), "sdpa" or "eager" (a block-diagonal mask over the whole
      row); all three honour packed position_ids. "auto" = packed_sdpa on CPU, sdpa on GPU.
    - compile: torch.compile each decoder layer ("auto": on for CPU runs without FSDP2 or
      activation checkpointing when a C++ compiler is present; training/cpu/compilation.py).
      The first step then includes compilation (summary: warmup_seconds).
    - deterministic: torch.use_deterministic_algorithms (bit-exact CPU resume).
    - cpu_threads: torch intra-op threads per process (0 = torch default).
    - log_every: steps between progress lines / Dagster Pipes messages.
    - peak_flops: per-device peak FLOP/s for the MFU estimate; 0 = measure with a
      matmul probe (which underestimates the datasheet peak, so MFU reads high).
    - loss_chunking: "on" projects the labelled positions to the vocabulary a chunk at a time,
      so no [tokens x vocabulary] logits tensor exists (training/loss.py); "auto" = on when the
      vocabulary holds 65,536 ids or more (Qwen3, Gemma 3, Llama 3), off below.

    Adapter
    - adapter: null (the default) trains every weight; a mapping trains a LoRA adapter (training/adapters.py)
      and freezes the base: {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0,
      "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}. Keys left out take those values; the
      output is the merged model, with the adapter alone in output_dir/adapter/.
    """

    base_model_dir: str
    shard_dirs: list[str]
    output_dir: str
    split: str = "train"
    seq_len: int = 1024
    micro_batch_rows: int = 2
    grad_accum_steps: int = 1
    max_steps: int = 700
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    overlong: str = "split"
    pack_buffer_rows: int = 512
    check_tokenizer_fingerprint: bool = True
    activation_checkpointing: bool = False
    distributed: str = "ddp"
    log_every: int = 5
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "auto"
    compile: str = "auto"
    deterministic: bool = False
    cpu_threads: int = 0
    peak_flops: float = 0.0
    loss_chunking: str = "auto"
    adapter: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check types first, so a wrong type is a ConfigError naming the key, never a TypeError later."""
        if isinstance(self.shard_dirs, str) or not self.shard_dirs:
            raise ConfigError("shard_dirs must be a non-empty list of tokenized_shards version directories")
        for f in fields(self):
            _check_type(f.name, str(f.type), getattr(self, f.name))
        for name in (
            "seq_len",
            "micro_batch_rows",
            "grad_accum_steps",
            "max_steps",
            "checkpoint_every",
            "keep_checkpoints",
            "pack_buffer_rows",
            "log_every",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup_steps", "cpu_threads", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.seq_len < 2:
            raise ConfigError(f"seq_len must be >= 2 to hold a next-token target, got {self.seq_len}")
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.peak_flops < 0:
            raise ConfigError("weight_decay, grad_clip and peak_flops must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        for name, choices in (
            ("overlong", OVERLONG_CHOICES),
            ("distributed", DISTRIBUTED_CHOICES),
            ("device", DEVICE_CHOICES),
            ("dtype", DTYPE_CHOICES),
            ("attn_implementation", ATTN_CHOICES),
            ("compile", COMPILE_CHOICES),
            ("loss_chunking", LOSS_CHUNKING_CHOICES),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.adapter is not None:
            self.adapter = asdict(LoraSettings.from_mapping(self.adapter))  # the summary records every value

    @property
    def lora(self) -> LoraSettings | None:
        """The adapter's settings, or None for full fine-tuning."""
        return None if self.adapter is None else LoraSettings.from_mapping(self.adapter)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default of every optional key (a fresh copy of list defaults), for forms that expose some keys."""
        out: dict[str, Any] = {}
        for f in fields(cls):
            if f.default is not MISSING:
                out[f.name] = f.default
            elif f.default_factory is not MISSING:
                out[f.name] = f.default_factory()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            hints = [f"{k!r} -> {close[0]!r}" for k in unknown if (close := difflib.get_close_matches(k, known, n=1))]
            hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
            raise ConfigError(f"unknown config keys {unknown}{hint}; valid keys are {sorted(known)}")
        required = sorted(f.name for f in fields(cls) if f.name not in data and _is_required(f))
        if required:
            raise ConfigError(f"missing required config keys {required}")
        return cls(**data)


@dataclass(frozen=True)
class LoraSettings:
    """A validated `adapter` mapping: the LoRA rank, its scale (alpha / r), dropout and the layers it adapts."""

    type: str
    r: int
    alpha: float
    dropout: float
    target_modules: list[str]

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> LoraSettings:
        """Check every key of ``data`` (each error names ``adapter.<key>``); missing keys take LORA_DEFAULTS."""
        known = ("type", *LORA_DEFAULTS)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown adapter keys {unknown}; valid keys are {list(known)}")
        if "type" not in data:
            raise ConfigError(f"adapter.type is missing: set it to one of {ADAPTER_TYPES}")
        if data["type"] not in ADAPTER_TYPES:
            raise ConfigError(f"adapter.type must be one of {ADAPTER_TYPES}, got {data['type']!r}")
        values = {**LORA_DEFAULTS, **data}
        _check_lora_values(values)
        return cls(
            type=values["type"],
            r=values["r"],
            alpha=values["alpha"],
            dropout=values["dropout"],
            target_modules=list(values["target_modules"]),
        )


def _check_lora_values(values: dict[str, Any]) -> None:
    r, alpha, dropout, targets = values["r"], values["alpha"], values["dropout"], values["target_modules"]
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ConfigError(f"adapter.r must be an integer >= 1 (the LoRA rank), got {r!r}")
    if not (_is_number(alpha) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(
            f"adapter.alpha must be a finite number > 0 (the update is scaled by alpha / r), got {alpha!r}"
        )
    if not (_is_number(dropout) and 0 <= dropout < 1):
        raise ConfigError(f"adapter.dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ConfigError(
            f"adapter.target_modules must be a non-empty list of module names such as 'q_proj', got {targets!r}"
        )
    if len(set(targets)) != len(targets):
        raise ConfigError(f"adapter.target_modules names a module twice: {targets!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_type(name: str, annotation: str, value: Any) -> None:
    """Raise ConfigError unless ``value`` fits the field's annotation (as written in this module)."""
    ok = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: _is_number(v) and math.isfinite(v),
        "bool": lambda v: isinstance(v, bool),
        "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "list[float]": lambda v: isinstance(v, list) and all(_is_number(x) and math.isfinite(x) for x in v),
        "dict[str, Any] | None": lambda v: v is None or (isinstance(v, dict) and all(isinstance(k, str) for k in v)),
    }[annotation]
    if not ok(value):
        kinds = {
            "float": "a finite number",
            "bool": "true or false",
            "int": "an integer",
            "dict[str, Any] | None": "a mapping of keys to values, or null",
        }
        kind = kinds.get(annotation, annotation)
        raise ConfigError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")


def _is_required(f: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def load_config(path: str | Path, cls: type[TrainConfig] = TrainConfig) -> TrainConfig:
    """Read a config file of ``cls``: JSON, or YAML when the name ends in .yaml/.yml and PyYAML is installed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(f"{path} is YAML but PyYAML is not installed; install it or use JSON") from exc
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    try:
        return cls.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
