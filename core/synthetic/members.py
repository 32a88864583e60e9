"""The synthetic members: favourite genres and an era (their taste), and heavy-tailed activity.

Drawn from their own random stream (seed, 0, 2), independent of the catalog's, so that the catalog's size does not
change who the members are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.synthetic.config import SyntheticConfig, stream
from core.synthetic.vocabulary import sample_top3_genres

_BASE_ACTIVE_RATE = 0.3  # mean probability a member is active on a day
_ERA_RANGE = (1960, 2026)  # members' eras are spread evenly, so the era is information popularity does not have


@dataclass(frozen=True)
class Members:
    """Day-independent traits of every member; a day's events are sampled from them."""

    fav: np.ndarray  # (n_members, 3) favourite genre indices
    k: np.ndarray  # number of favourite genres (1..3)
    mask: np.ndarray  # bitmask of favourite genres
    z: np.ndarray  # activity propensity (lognormal)
    p_active: np.ndarray  # probability of being active on a given day
    era: np.ndarray  # the release year a member's taste centres on


def build_members(cfg: SyntheticConfig) -> Members:
    mrng = stream(cfg.seed, 0, 2)
    m = cfg.n_members
    # Tastes are spread over all genres, not just the common ones: a member who loves westerns is who a
    # recommender has to serve better than popularity does.
    fav = sample_top3_genres(mrng, m, weighted=False)
    k = mrng.choice([1, 2, 3], size=m, p=[0.3, 0.45, 0.25])
    bits = 1 << fav
    member_mask = bits[:, 0] | np.where(k >= 2, bits[:, 1], 0) | np.where(k >= 3, bits[:, 2], 0)
    z = mrng.lognormal(0.0, 1.1, size=m)
    p_active = np.clip(_BASE_ACTIVE_RATE * z / z.mean(), 0.01, 0.95)
    era = mrng.integers(_ERA_RANGE[0], _ERA_RANGE[1] + 1, size=m)
    return Members(fav=fav, k=k, mask=member_mask.astype(np.int64), z=z, p_active=p_active, era=era)
