"""Throughput and MFU of a run: what the progress lines and summary.json report about speed.

Throughput counts only time spent in optimizer steps (data, forward/backward, optimizer),
never checkpoint writes, so a run that checkpoints often is not reported as slower. The
first step after a process starts or resumes compiles and initialises lazily; it is kept
apart as the warm-up (summary: warmup_seconds) and left out of the run's rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.config import TrainConfig
from training.flops import measure_peak_flops


@dataclass
class Throughput:
    """Token and second counts of this process's steps: the warm-up step, the rest, and the current log window."""

    warmup: tuple[int, float] | None = None  # (tokens, seconds) of the first step
    tokens: int = 0  # steps after the warm-up
    seconds: float = 0.0
    window_tokens: int = 0  # every step since the last progress line, the warm-up included
    window_seconds: float = 0.0

    def record(self, tokens: int, seconds: float) -> None:
        if self.warmup is None:
            self.warmup = (tokens, seconds)
        else:
            self.tokens, self.seconds = self.tokens + tokens, self.seconds + seconds
        self.window_tokens, self.window_seconds = self.window_tokens + tokens, self.window_seconds + seconds

    def take_window_rate(self) -> float:
        """Tokens/s since the last progress line; starts the next window."""
        rate = self.window_tokens / self.window_seconds
        self.window_tokens, self.window_seconds = 0, 0.0
        return rate

    def run_rate(self) -> float:
        """Tokens/s of the steps after the warm-up; of the warm-up itself when it was the only step."""
        tokens, seconds = self.tokens, self.seconds
        if not tokens and self.warmup is not None:
            tokens, seconds = self.warmup
        return tokens / seconds if tokens else 0.0

    @property
    def warmup_seconds(self) -> float | None:
        return self.warmup[1] if self.warmup else None


def peak_flops(cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(per-device peak FLOP/s, where it came from): the config's figure, else a matmul probe."""
    if cfg.peak_flops:
        return cfg.peak_flops, "config"
    return measure_peak_flops(device, dtype), "matmul_probe"


def mfu_estimate(parameters: int, tokens_per_second: float, peak: float, world_size: int) -> float:
    """Model FLOPs utilisation with the 6N FLOPs-per-token rule (forward 2N, backward 4N; attention not counted)."""
    return 6 * parameters * tokens_per_second / (peak * world_size)
