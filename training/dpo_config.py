"""`DPOConfig`: a preference run's config, an SFT `TrainConfig` plus the preference loss and its reference.

Every SFT key keeps its meaning (data loading, optimizer, schedule, checkpoints, DDP/FSDP2, threads); the
shards are `preference_shards` versions, and a packed row holds whole pairs (prompt, chosen, rejected), so
`seq_len` bounds one pair's prompt + chosen + rejected tokens. The defaults are sized for a short run on top of an
SFT checkpoint: a low learning rate and few steps.

Preference keys
- beta: the strength of the KL anchor to the reference (the implicit reward is beta * log-ratio).
- loss_type: "sigmoid" (DPO: -log sigmoid of the reward margin) or "ipo" (squared distance of the per-token
  mean log-ratio margin from 1 / (2 beta)).
- label_smoothing: sigmoid only; the share of pairs assumed mislabelled (conservative DPO), 0 <= x < 0.5.
- sft_weight: weight of the chosen completion's per-token negative log-likelihood added to each pair's loss
  (default 1; 0 = plain DPO/IPO). It keeps the liked completion likely while the margin grows, so preference
  training does not trade away what SFT learned (the recommendation metrics); see training/dpo_loss.py.
- reference: "precomputed" (the reference's log-probs of every pair are computed once, before the first step,
  and kept in output_dir, so no second model stays in memory while training) or "on_the_fly" (the
  reference model runs next to the policy on every micro-batch).
- reference_model_dir: the reference model; empty = base_model_dir (DPO starts from the model it is anchored to).
- attn_implementation: "pair_sdpa" (the default: attention computed block by block, each pair's prompt + chosen
  and its rejected completion over the prompt, training/attention.py) or "sdpa" (the whole row under an explicit
  mask; for models with windowed or soft-capped attention, which pair_sdpa refuses).
  With an `adapter` the reference is always the base: the policy with its adapter off, no second model (either
  `reference` mode); reference_model_dir must then stay empty.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.config import ConfigError, TrainConfig

LOSS_TYPES = ("sigmoid", "ipo")
REFERENCE_CHOICES = ("precomputed", "on_the_fly")


@dataclass
class DPOConfig(TrainConfig):
    seq_len: int = 512
    micro_batch_rows: int = 4
    max_steps: int = 60
    lr: float = 5e-5
    warmup_steps: int = 5
    checkpoint_every: int = 20
    compile: str = "off"
    attn_implementation: str = "pair_sdpa"
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    sft_weight: float = 1.0
    reference: str = "precomputed"
    reference_model_dir: str = ""

    def validate(self) -> None:
        super().validate()
        if not self.beta > 0:
            raise ConfigError(f"beta must be > 0, got {self.beta!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ConfigError("label_smoothing applies to loss_type 'sigmoid' only; set it to 0 for 'ipo'")
        if not 0 <= self.sft_weight < float("inf"):
            raise ConfigError(f"sft_weight must be finite and >= 0 (0 = no supervised term), got {self.sft_weight!r}")
        if self.reference not in REFERENCE_CHOICES:
            raise ConfigError(f"reference must be one of {REFERENCE_CHOICES}, got {self.reference!r}")
        if self.adapter is not None and self.reference_model_dir not in ("", self.base_model_dir):
            raise ConfigError(
                f"reference_model_dir must be empty with an adapter, got {self.reference_model_dir!r}: the reference "
                "is base_model_dir with the adapter off; to anchor to another model, make it base_model_dir"
            )
        if self.attn_implementation not in ("pair_sdpa", "sdpa"):
            raise ConfigError(
                f"attn_implementation must be 'pair_sdpa' (each pair's blocks only) or 'sdpa' (the row under a mask) "
                "for preference training, got "
                f"{self.attn_implementation!r}: a pair's rejected completion attends to its prompt across the "
                "chosen one"
            )

    @property
    def reference_dir(self) -> str:
        return self.reference_model_dir or self.base_model_dir
