"""Grounded answers about one title, shared by the recommendation and search follow-ups.

Each takes the prefix of the title's attribute columns (``Catalog.attrs``), so the same
template serves the recommended target and the title found by a search.

An answer is null when the catalog holds nothing to ground it: ``assemble`` then leaves
the exchange out. Sparse catalogs (MovieLens: no synopsis, no kind column) would otherwise
fill conversations with "the catalog has no synopsis" turns, which teach nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from core.conversation_builder.templating import indefinite, pick

_Col = Callable[[str], pl.Expr]


def _cols(p: str) -> _Col:
    """Column accessor for the attributes carrying prefix ``p``."""
    return lambda name: pl.col(f"{p}{name}")


def has_genres(c: _Col) -> pl.Expr:
    """The catalog lists at least one genre."""
    return c("genres").list.len() > 0


def has_kind(c: _Col) -> pl.Expr:
    """The catalog says movie or series (``kind_word`` "title" means it does not)."""
    return c("kind_word") != "title"


def _without_synopsis(c: _Col, variant: pl.Expr) -> pl.Expr:
    """A description from kind, year and genres alone, for titles without a synopsis; null when
    the catalog knows none of them."""
    genres, year = c("genres_text"), c("year").cast(pl.String)
    kind = indefinite(c("kind_word"))
    released = pl.when(c("year").is_not_null()).then(pl.format(" released in {}", year)).otherwise(pl.lit(""))
    listed = pl.when(has_genres(c)).then(pl.format(", listed under {}", genres)).otherwise(pl.lit(""))
    from_year = pl.when(c("year").is_not_null()).then(pl.format(" from {}", year)).otherwise(pl.lit(""))
    genre_line = pl.when(has_genres(c)).then(pl.format(" Genres: {}.", genres)).otherwise(pl.lit(""))
    text = pick(
        variant,
        [
            pl.format("{} is {}{}{}.", c("display"), kind, released, listed),
            pl.format("{}: {}{}.{}", c("display"), kind, from_year, genre_line),
        ],
    )
    return pl.when(has_genres(c) | c("year").is_not_null() | has_kind(c)).then(text)


def describe(p: str, variant: pl.Expr) -> pl.Expr:
    """Grounded description of the title whose attributes carry prefix ``p``: its synopsis when
    the catalog has one, else what it does have (kind, year, genres); null when it has nothing."""
    c = _cols(p)
    genre_clause = pl.when(has_genres(c)).then(pl.format(" ({})", c("genres_text"))).otherwise(pl.lit(""))
    kind = indefinite(c("kind_word"))
    with_synopsis = pick(
        variant,
        [
            pl.format("{} is {}{}. {}", c("display"), kind, genre_clause, c("synopsis")),
            pl.format("{}: {}{}. {}", c("display"), kind, genre_clause, c("synopsis")),
        ],
    )
    return pl.when(c("synopsis").is_not_null()).then(with_synopsis).otherwise(_without_synopsis(c, variant))


def year_or_kind(p: str, which: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(question, answer) about the year (which=0) or the kind (which=1) of title ``p``.

    The question switches to the other fact when the catalog lacks the chosen one; the answer
    is null when it lacks both.
    """
    c = _cols(p)
    has_year = c("year").is_not_null()
    which = pl.when((which == 0) & ~has_year).then(1).when((which == 1) & ~has_kind(c)).then(0).otherwise(which)
    year_a = pl.when(has_year).then(pl.format("{} came out in {}.", c("title"), c("year")))
    kind_a = pl.when(has_kind(c)).then(pl.format("{} is {}.", c("display"), indefinite(c("kind_word"))))
    q = pick(which, ["When did it come out?", "Is it a movie or a series?"])
    return q, pick(which, [year_a, kind_a])
