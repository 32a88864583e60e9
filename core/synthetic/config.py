"""`SyntheticConfig` (the knobs of the synthetic world) and the seeded random streams it is generated from.

The defaults of the world's size, seed and first day are the platform's (`core.settings.SYNTHETIC_DEFAULTS`),
so a config built here, the `LandingArea` resource and the drop CLI describe the same world unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from core.settings import SYNTHETIC_DEFAULTS, SyntheticWorldSettings


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic world. Same config + same day = same bytes."""

    seed: int = SYNTHETIC_DEFAULTS.seed
    n_titles: int = SYNTHETIC_DEFAULTS.titles
    n_members: int = SYNTHETIC_DEFAULTS.members
    start_day: date = SYNTHETIC_DEFAULTS.start
    days: int = SYNTHETIC_DEFAULTS.days
    mean_events_per_active_member: float = 6.0
    bad_row_rate: float = 0.004  # injected broken raw rows (see INJECTED_DEFECTS)
    external_conversations_per_day: int = 40
    # Exact re-deliveries of a good event (at-least-once delivery); not a defect:
    # ingestion collapses them and counts them.
    duplicate_event_rate: float = 0.002

    def __post_init__(self) -> None:
        if self.n_titles < 1 or self.n_members < 1:
            raise ValueError(
                f"SyntheticConfig needs n_titles >= 1 and n_members >= 1, got "
                f"n_titles={self.n_titles}, n_members={self.n_members}"
            )
        if not 0.0 <= self.bad_row_rate <= 1.0 or not 0.0 <= self.duplicate_event_rate <= 1.0:
            raise ValueError("SyntheticConfig rates (bad_row_rate, duplicate_event_rate) must lie in [0, 1]")

    @classmethod
    def from_settings(cls, world: SyntheticWorldSettings) -> SyntheticConfig:
        """The world the platform settings describe (SYNTHETIC_* and PLATFORM_PARTITION_START)."""
        return cls(
            seed=world.seed, n_titles=world.titles, n_members=world.members, start_day=world.start, days=world.days
        )


def config_days(cfg: SyntheticConfig) -> list[date]:
    """The ``cfg.days`` consecutive days starting at ``cfg.start_day``."""
    return [cfg.start_day + timedelta(days=i) for i in range(cfg.days)]


def stream(*key: int) -> np.random.Generator:
    """An independent random stream per key (seed + a stream tag or a day's ordinal): any part of the world can
    be regenerated alone, in any order, with the same bytes."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))
