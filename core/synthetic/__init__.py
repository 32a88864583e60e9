"""Deterministic, seeded synthetic landing drops for a streaming service.

Why this exists: every layer above the landing area (ingestion, curation,
tokenization, packing, training, evals) must be exercised on data with the shape
of production data, without shipping any real data. So the generator reproduces
the properties that break naive pipelines:

* Zipf-like title popularity (a popularity baseline is strong, the long tail is thin);
* heavy-tailed member activity (most members idle on a day, a few very active);
* length-skewed synopses (most short, a long tail of long ones: padding waste);
* members' plays follow their genre taste (recommendations are learnable);
* a small rate of deliberately broken raw rows and malformed chats (quarantine paths).

Everything is a pure function of ``(SyntheticConfig, day)``: the random streams are
seeded from ``cfg.seed`` plus a stream tag (catalog, members) or the day's ordinal,
so any day can be regenerated alone, in any order, byte for byte. Generation is
vectorized numpy/polars so a ~1M-event day takes seconds, not minutes.

Modules: `config` (SyntheticConfig, random streams), `vocabulary` (words and categories), `catalog`, `members`,
`world` (both, cached per config), `events` (a day's interactions), `conversations` (a day's partner chats),
`drops` (writing the landing area) and `cli` (`python -m core.synthetic drop`).

Landing layout (``landing_paths``)::

    catalog/catalog.parquet
    interactions/day=YYYY-MM-DD/events.parquet
    conversations/day=YYYY-MM-DD/external.jsonl
"""

from core.synthetic.cli import main
from core.synthetic.config import SyntheticConfig, config_days
from core.synthetic.conversations import EXTERNAL_DEFECTS, generate_external_conversations
from core.synthetic.drops import ensure_drop, existing_days, landing_paths, next_day, write_catalog, write_drop
from core.synthetic.events import EVENTS, INJECTED_DEFECTS, generate_interactions
from core.synthetic.vocabulary import GENRES, LANGUAGES, MOVIE_RATINGS, SERIES_RATINGS
from core.synthetic.world import generate_catalog

__all__ = [
    "EVENTS",
    "EXTERNAL_DEFECTS",
    "GENRES",
    "INJECTED_DEFECTS",
    "LANGUAGES",
    "MOVIE_RATINGS",
    "SERIES_RATINGS",
    "SyntheticConfig",
    "config_days",
    "ensure_drop",
    "existing_days",
    "generate_catalog",
    "generate_external_conversations",
    "generate_interactions",
    "landing_paths",
    "main",
    "next_day",
    "write_catalog",
    "write_drop",
]
