"""The day-independent synthetic world (catalog + members), built once per config and shared by every day."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import polars as pl

from core.synthetic.catalog import build_catalog
from core.synthetic.config import SyntheticConfig
from core.synthetic.members import build_members


@dataclass(frozen=True)
class World:
    """Day-independent latent structure: the catalog and the members' tastes."""

    catalog: pl.DataFrame  # landing format (genres "|"-joined)
    genre_mask: np.ndarray  # per title: bit g set when the title has genre g
    genre_keys: np.ndarray  # g + cumulative popularity within genre g (sorted)
    genre_titles: np.ndarray  # title index for each entry of genre_keys
    genre_count: np.ndarray  # titles per genre
    pop_cum: np.ndarray  # cumulative global popularity (normalized)
    runtime_ms: np.ndarray  # per title
    member_fav: np.ndarray  # (n_members, 3) favourite genre indices
    member_k: np.ndarray  # number of favourite genres (1..3)
    member_mask: np.ndarray  # bitmask of favourite genres
    member_z: np.ndarray  # activity propensity (lognormal)
    p_active: np.ndarray  # probability of being active on a given day


@functools.lru_cache(maxsize=8)
def build_world(cfg: SyntheticConfig) -> World:
    """Cached: every day of a backfill samples from the same world, which takes longer to build than a day."""
    catalog = build_catalog(cfg)
    members = build_members(cfg)
    return World(
        catalog=catalog.frame,
        genre_mask=catalog.genre_mask,
        genre_keys=catalog.genre_keys,
        genre_titles=catalog.genre_titles,
        genre_count=catalog.genre_count,
        pop_cum=catalog.pop_cum,
        runtime_ms=catalog.runtime_ms,
        member_fav=members.fav,
        member_k=members.k,
        member_mask=members.mask,
        member_z=members.z,
        p_active=members.p_active,
    )


def sample_popular(world: World, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(world.pop_cum, u, side="right"), len(world.pop_cum) - 1)


def generate_catalog(cfg: SyntheticConfig) -> pl.DataFrame:
    """The catalog in landing format: CATALOG_SCHEMA columns, genres as a "|"-joined string."""
    return build_world(cfg).catalog.clone()
