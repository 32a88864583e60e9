"""``title_qa`` conversations: questions on a title's genre, year, kind and synopsis, answered from the catalog.

Only what the catalog knows is asked: a sparse catalog (MovieLens has no synopsis and no
kind column) would otherwise fill conversations with "the catalog has no synopsis" answers.
A title with nothing to ask about gets no conversation.

No member: the id hashes the title and the question set, so identical content gets an
identical id (and therefore split).
"""

from __future__ import annotations

from datetime import date
from itertools import permutations

import polars as pl

from core.conversation_builder.answers import has_genres, has_kind
from core.conversation_builder.catalog import Catalog
from core.conversation_builder.config import CANDIDATE_SCHEMA, BuilderConfig
from core.conversation_builder.templating import (
    assemble,
    bits,
    conversation_ids,
    fmt,
    indefinite,
    pick,
    row_hashes,
    system_flag,
)

_QA_TYPES = ("genre", "year", "kind", "synopsis")
_PERMS = list(permutations(range(len(_QA_TYPES))))


def _a(name: str) -> pl.Expr:
    """The asked-about title's attribute ``name`` (joined with prefix ``a_``)."""
    return pl.col(f"a_{name}")


def _qa_turn(q: pl.Expr, t: pl.Expr, first: bool) -> tuple[pl.Expr, pl.Expr]:
    """(question, answer) for question type ``q`` (index into _QA_TYPES), template ``t``."""
    name = pl.col("a_title")
    disp = pl.col("a_display")
    if first:
        qs = [
            [fmt("What genre is {n}?", n=name), fmt("Which genres does {n} fall under?", n=name)],
            [fmt("When was {n} released?", n=name), fmt("What year did {n} come out?", n=name)],
            [fmt("Is {n} a movie or a series?", n=name), fmt("Is {n} a film or a show?", n=name)],
            [fmt("What is {n} about?", n=name), fmt("Give me a short summary of {n}.", n=name)],
        ]
    else:
        qs = [
            [pl.lit("What genre is it?"), pl.lit("Which genres is it listed under?")],
            [pl.lit("When was it released?"), pl.lit("What year did it come out?")],
            [pl.lit("Is it a movie or a series?"), pl.lit("Is it a film or a show?")],
            [pl.lit("What is it about?"), pl.lit("Can you summarize it?")],
        ]
    c = _a
    # Each answer is null when the catalog lacks the fact; _askable keeps such questions out.
    genre_a = [
        pl.when(has_genres(c)).then(pl.format("{} is listed under {}.", disp, c("genres_text"))),
        pl.when(has_genres(c)).then(pl.format("{} is {} {}.", disp, indefinite(c("genres_text")), c("kind_word"))),
    ]
    year = c("year")
    year_a = [
        pl.when(year.is_not_null()).then(pl.format("{} was released in {}.", name, year)),
        pl.when(year.is_not_null()).then(pl.format("{} came out in {}.", name, year)),
    ]
    kind_a = [
        pl.when(has_kind(c)).then(pl.format("{} is {}.", disp, indefinite(c("kind_word")))),
        pl.when(has_kind(c)).then(pl.format("It's {}: {}.", indefinite(c("kind_word")), disp)),
    ]
    syn = c("synopsis")
    syn_a = [syn, pl.lit("Here's the synopsis: ") + syn]
    answers = [genre_a, year_a, kind_a, syn_a]
    question = pick(q, [pick(t, qs[i]) for i in range(len(_QA_TYPES))])
    answer = pick(q, [pick(t, answers[i]) for i in range(len(_QA_TYPES))])
    return question, answer


def _askable() -> pl.DataFrame:
    """Per (question order, mask of known facts): the questions left to ask, in that order.

    ``_q0``.. hold the askable types of the permutation (nulls after them), ``_count`` how many.
    A title that knows every fact keeps its permutation unchanged, so complete catalogs give
    the same conversations as before this filter existed.
    """
    rows = []
    for perm_id, perm in enumerate(_PERMS):
        for mask in range(1 << len(_QA_TYPES)):
            kept = [q for q in perm if mask >> q & 1]
            rows.append([perm_id, mask, len(kept), *kept, *[None] * (len(_QA_TYPES) - len(kept))])
    names = ["_perm", "_mask", "_count", *[f"_q{s}" for s in range(len(_QA_TYPES))]]
    return pl.DataFrame(rows, schema=dict.fromkeys(names, pl.Int64), orient="row")


def _known_mask() -> pl.Expr:
    """Bit i set when the catalog holds the fact question type i (``_QA_TYPES``) asks about."""
    c = _a
    known = [has_genres(c), c("year").is_not_null(), has_kind(c), c("synopsis").is_not_null()]
    return pl.sum_horizontal([k.fill_null(False).cast(pl.Int64) * (1 << i) for i, k in enumerate(known)])


def title_qa(cat: Catalog, inter: pl.DataFrame, day: date, cfg: BuilderConfig) -> pl.DataFrame:
    """One conversation per title with events today, its questions in a per-row order."""
    titles = (
        inter.select("title_id")
        .unique()
        .join(cat.rank_of, on="title_id", how="inner")
        .sort("title_id")
        .join(cat.attrs("a_"), left_on="rank", right_on="a_rank", how="left", maintain_order="left")
    )
    day_s = day.isoformat()
    titles = titles.with_columns(
        row_hashes(titles, pl.format("title_qa|{}|{}|{}", pl.lit(cfg.seed), pl.col("title_id"), pl.lit(day_s)))
    )
    h = pl.col("_h")
    titles = (
        titles.with_columns(
            bits(h, 8, len(_PERMS)).alias("_perm"),
            _known_mask().alias("_mask"),
            system_flag(h, cfg).alias("_sys"),
            *[bits(h, 16 + s, 2).alias(f"_t{s}") for s in range(4)],
        )
        .join(_askable(), on=["_perm", "_mask"], how="left", maintain_order="left")
        .filter(pl.col("_count") > 0)
    )
    n_max = pl.min_horizontal(pl.lit(cfg.max_exchanges, dtype=pl.Int64), pl.col("_count"))
    titles = titles.with_columns((1 + bits(h, 24, n_max)).alias("_n"))
    exchanges = [_qa_turn(pl.col(f"_q{s}"), pl.col(f"_t{s}"), first=s == 0) for s in range(4)]
    out = titles.with_columns(assemble(titles, exchanges, pl.col("_n"), pl.col("_sys"), cfg.system_prompt))
    # The id names exactly what decides the content: title, system turn, questions, templates.
    used = [
        pl.when(pl.col("_n") > s).then(pl.format("{}{}", pl.col(f"_q{s}"), pl.col(f"_t{s}"))).otherwise(pl.lit(""))
        for s in range(4)
    ]
    sig = pl.concat_str(
        [
            pl.lit("title_qa|"),
            pl.col("title_id"),
            pl.lit("|"),
            pl.col("_sys").cast(pl.Int8).cast(pl.String),
            pl.lit("|"),
            *used,
        ]
    )
    return out.with_columns(
        conversation_ids(out, sig),
        pl.lit("title_qa").alias("kind"),
        pl.lit(day, dtype=pl.Date).alias("day"),
        pl.lit(None, dtype=pl.String).alias("member_id"),
    ).select(list(CANDIDATE_SCHEMA))
