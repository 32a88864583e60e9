"""The training loop's progress, as a checkpoint carries it (trainer_state.json).

What each rank needs besides (RNG states, the data loader's position) is saved per rank by
training/checkpoint.py; this is the part that is the same on every rank.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from training.config import ConfigError, TrainConfig
from training.loss import StepLoss

# Config keys that fix the data stream; resuming with different values would not continue the same run.
RESUME_LOCKED_KEYS = (
    "shard_dirs",
    "split",
    "seq_len",
    "micro_batch_rows",
    "grad_accum_steps",
    "pack_buffer_rows",
    "overlong",
    "seed",
)


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    tokens_seen: int = 0  # global non-pad tokens
    loss_tokens: int = 0  # global loss tokens
    best_loss: float | None = None
    loss_curve: list[dict[str, Any]] = field(default_factory=list)  # {"step", "loss", "lr"} per step
    resumed_from: list[str] = field(default_factory=list)  # checkpoint dirs, oldest first

    def record(self, loss: StepLoss, lr: float) -> None:
        """Account for one optimizer step that used learning rate `lr`."""
        self.step += 1
        self.tokens_seen += loss.tokens
        self.loss_tokens += loss.loss_tokens
        self.loss_curve.append({"step": self.step, "loss": loss.mean_loss, "lr": lr})
        if self.best_loss is None or loss.mean_loss < self.best_loss:
            self.best_loss = loss.mean_loss

    @property
    def final_loss(self) -> float | None:
        return self.loss_curve[-1]["loss"] if self.loss_curve else None

    def to_checkpoint(self, cfg: TrainConfig) -> dict[str, Any]:
        """trainer_state.json: this state and the config that produced it (checked on resume)."""
        return {**asdict(self), "config": cfg.to_dict()}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], cfg: TrainConfig, path: Path) -> TrainerState:
        """The state saved at `path`, resumed by this run; refuses a config that would change the data stream."""
        saved_config = saved["config"]
        changed = [k for k in RESUME_LOCKED_KEYS if saved_config.get(k) != getattr(cfg, k)]
        if changed:
            raise ConfigError(f"cannot resume {path}: config keys {changed} differ from the run that wrote it")
        state = cls(**{f.name: saved[f.name] for f in fields(cls)})
        state.resumed_from = [*state.resumed_from, str(path)]
        return state
