"""Grounded answers about one title, shared by the recommendation and search follow-ups.

Each takes the prefix of the title's attribute columns (``Catalog.attrs``), so the same
template serves the recommended target and the title found by a search.
"""

from __future__ import annotations

import polars as pl

from core.conversation_builder.templating import pick


def describe(p: str, variant: pl.Expr) -> pl.Expr:
    """Grounded description of the title whose attributes carry prefix ``p``."""
    c = lambda name: pl.col(f"{p}{name}")  # noqa: E731
    genre_clause = pl.when(c("genres").list.len() > 0).then(pl.format(" ({})", c("genres_text"))).otherwise(pl.lit(""))
    syn = pl.when(c("synopsis").is_null()).then(pl.lit("The catalog has no synopsis for it.")).otherwise(c("synopsis"))
    return pick(
        variant,
        [
            pl.format("{} is a {}{}. {}", c("display"), c("kind_word"), genre_clause, syn),
            pl.format("{}: a {}{}. {}", c("display"), c("kind_word"), genre_clause, syn),
        ],
    )


def year_or_kind(p: str, which: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(question, answer) about the year (which=0) or the kind (which=1) of title ``p``."""
    c = lambda name: pl.col(f"{p}{name}")  # noqa: E731
    year_a = (
        pl.when(c("year").is_null())
        .then(pl.format("The catalog doesn't list a release year for {}.", c("title")))
        .otherwise(pl.format("{} came out in {}.", c("title"), c("year")))
    )
    kind_a = pl.format("{} is a {}.", c("display"), c("kind_word"))
    q = pick(which, ["When did it come out?", "Is it a movie or a series?"])
    return q, pick(which, [year_a, kind_a])
