"""``build_conversations``: one day's candidate conversations of all three kinds."""

from __future__ import annotations

from datetime import date

import polars as pl

from core.conversation_builder.catalog import Catalog
from core.conversation_builder.config import BuilderConfig
from core.conversation_builder.recommendation import recommendations
from core.conversation_builder.search import search
from core.conversation_builder.title_qa import title_qa
from core.schemas import INTERACTIONS_SCHEMA, conform
from core.signals import drop_negative_watches


def build_conversations(
    catalog: pl.DataFrame, interactions: pl.DataFrame, day: date, cfg: BuilderConfig
) -> pl.DataFrame:
    """Candidate conversations (recommendation, title_qa, search) for ``day``.

    Only interactions of ``day`` whose member and title are known are used; events on
    titles missing from the catalog cannot be grounded and produce no conversation.
    Rows come in a fixed order (kind, then member/title/ts), so re-runs are identical.
    """
    inter = conform(interactions, INTERACTIONS_SCHEMA).filter(
        (pl.col("day") == day) & pl.col("member_id").is_not_null() & pl.col("title_id").is_not_null()
    )
    # A title the member rated low or abandoned is not a watch: no history, target or popularity counts it.
    inter = drop_negative_watches(inter, cfg.signals)
    cat = Catalog(catalog, inter, cfg)
    parts = [
        recommendations(cat, inter, day, cfg),
        title_qa(cat, inter, day, cfg),
        search(cat, inter, day, cfg),
    ]
    return pl.concat(parts, how="vertical")
