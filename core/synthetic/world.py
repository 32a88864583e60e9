"""The day-independent synthetic world (catalog + members), built once per config and shared by every day."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import polars as pl

from core.synthetic.catalog import Catalog, build_catalog
from core.synthetic.config import SyntheticConfig
from core.synthetic.members import Members, build_members


@dataclass(frozen=True)
class World:
    """Day-independent latent structure: the catalog and the members' tastes."""

    titles: Catalog
    members: Members


@functools.lru_cache(maxsize=8)
def build_world(cfg: SyntheticConfig) -> World:
    """Cached: every day of a backfill samples from the same world, which takes longer to build than a day."""
    return World(titles=build_catalog(cfg), members=build_members(cfg))


def sample_popular(world: World, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(world.titles.pop_cum, u, side="right"), len(world.titles.pop_cum) - 1)


def generate_catalog(cfg: SyntheticConfig) -> pl.DataFrame:
    """The catalog in landing format: CATALOG_SCHEMA columns, genres as a "|"-joined string."""
    return build_world(cfg).titles.frame.clone()
