"""``title_qa`` conversations: questions on a title's genre, year, kind and synopsis, answered from the catalog.

No member: the id hashes the title and the question set, so identical content gets an
identical id (and therefore split).
"""

from __future__ import annotations

from datetime import date
from itertools import permutations

import polars as pl

from core.conversation_builder.catalog import Catalog
from core.conversation_builder.config import CANDIDATE_SCHEMA, BuilderConfig
from core.conversation_builder.templating import assemble, bits, conversation_ids, fmt, pick, row_hashes, system_flag

_QA_TYPES = ("genre", "year", "kind", "synopsis")
_PERMS = list(permutations(range(len(_QA_TYPES))))


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
    has_genres = pl.col("a_genres").list.len() > 0
    no_genre = pl.format("The catalog lists no genres for {}.", disp)
    genre_a = [
        pl.when(has_genres)
        .then(pl.format("{} is listed under {}.", disp, pl.col("a_genres_text")))
        .otherwise(no_genre),
        pl.when(has_genres)
        .then(pl.format("{} is a {} {}.", disp, pl.col("a_genres_text"), pl.col("a_kind_word")))
        .otherwise(no_genre),
    ]
    no_year = pl.format("The catalog doesn't list a release year for {}.", name)
    year_a = [
        pl.when(pl.col("a_year").is_null())
        .then(no_year)
        .otherwise(pl.format("{} was released in {}.", name, pl.col("a_year"))),
        pl.when(pl.col("a_year").is_null())
        .then(no_year)
        .otherwise(pl.format("{} came out in {}.", name, pl.col("a_year"))),
    ]
    kind_a = [
        pl.format("{} is a {}.", disp, pl.col("a_kind_word")),
        pl.format("It's a {}: {}.", pl.col("a_kind_word"), disp),
    ]
    no_syn = pl.format("I don't have a synopsis for {}.", disp)
    syn = pl.col("a_synopsis")
    syn_a = [
        pl.when(syn.is_null()).then(no_syn).otherwise(syn),
        pl.when(syn.is_null()).then(no_syn).otherwise(pl.lit("Here's the synopsis: ") + syn),
    ]
    answers = [genre_a, year_a, kind_a, syn_a]
    question = pick(q, [pick(t, qs[i]) for i in range(len(_QA_TYPES))])
    answer = pick(q, [pick(t, answers[i]) for i in range(len(_QA_TYPES))])
    return question, answer


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
    perms = pl.DataFrame(
        {"_perm": list(range(len(_PERMS)))} | {f"_q{s}": [p[s] for p in _PERMS] for s in range(4)},
        schema={"_perm": pl.Int64} | {f"_q{s}": pl.Int64 for s in range(4)},
    )
    titles = titles.with_columns(
        bits(h, 8, len(_PERMS)).alias("_perm"),
        (1 + bits(h, 24, cfg.max_exchanges)).alias("_n"),
        system_flag(h, cfg).alias("_sys"),
        *[bits(h, 16 + s, 2).alias(f"_t{s}") for s in range(4)],
    ).join(perms, on="_perm", how="left", maintain_order="left")
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
