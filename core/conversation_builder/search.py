"""``search`` conversations: a member's search event becomes a query derived from the found title.

The query is genre + kind, genre + decade, kind + decade or a word of the title; the
answer lists matching catalog titles ranked by the day's popularity, the found title
always among them.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from core.conversation_builder.answers import describe, year_or_kind
from core.conversation_builder.catalog import Catalog
from core.conversation_builder.config import CANDIDATE_SCHEMA, BuilderConfig
from core.conversation_builder.templating import (
    assemble,
    bits,
    conversation_ids,
    fmt,
    numbered,
    pick,
    row_hashes,
    system_flag,
)

# Search query types; the first four are the order of ``flags`` in search.
_Q_GENRE_KIND, _Q_GENRE_DECADE, _Q_WORD, _Q_KIND_DECADE, _Q_KIND = range(5)


def search(cat: Catalog, inter: pl.DataFrame, day: date, cfg: BuilderConfig) -> pl.DataFrame:
    """One conversation per distinct search event (member, time, found title)."""
    k = cfg.search_results
    s = (
        inter.filter(pl.col("event") == "search")
        .select("member_id", "title_id", "ts")
        .join(cat.rank_of, on="title_id", how="inner")
        .unique(["member_id", "ts", "title_id"])
        .sort(["member_id", "ts", "title_id"])
        .join(cat.attrs("f_"), left_on="rank", right_on="f_rank", how="left", maintain_order="left")
    )
    ts_us = pl.col("ts").dt.epoch("us").cast(pl.String)
    key = pl.format("{}|{}|{}", pl.col("member_id"), ts_us, pl.col("title_id"))
    s = s.with_columns(row_hashes(s, pl.format("search|{}|{}", pl.lit(cfg.seed), key)))
    h = pl.col("_h")
    has_g = pl.col("f_genres").list.len() > 0
    has_y = pl.col("f_year").is_not_null()
    has_w = pl.col("f_words").list.len() > 0
    # Pick uniformly among the query types this title supports (kind alone if none):
    # the j-th supported type, j = hash % count, via cumulative counts.
    flags = [has_g, has_g & has_y, has_w, has_y]
    count = pl.sum_horizontal([f.cast(pl.Int64) for f in flags])
    j = bits(h, 0, pl.max_horizontal(count, pl.lit(1)))
    qtype = pl.lit(_Q_KIND, dtype=pl.Int64)
    for code, f in enumerate(flags):
        before = pl.sum_horizontal([pl.lit(0, dtype=pl.Int64), *[g.cast(pl.Int64) for g in flags[:code]]])
        qtype = pl.when(f & (j == before)).then(pl.lit(code, dtype=pl.Int64)).otherwise(qtype)
    s = s.with_columns(
        qtype.alias("_qt"),
        pl.col("f_genres")
        .list.get(bits(h, 8, pl.max_horizontal(pl.col("f_genres").list.len(), 1)), null_on_oob=True)
        .alias("_genre"),
        pl.col("f_words")
        .list.get(bits(h, 16, pl.max_horizontal(pl.col("f_words").list.len(), 1)), null_on_oob=True)
        .alias("_word"),
        pl.col("f_kind_word").alias("_kind"),
        pl.col("f_decade").alias("_decade"),
    )
    fkey = pick(
        pl.col("_qt"),
        [
            pl.format("gk|{}|{}", pl.col("_genre"), pl.col("_kind")),
            pl.format("gd|{}|{}", pl.col("_genre"), pl.col("_decade")),
            pl.format("tw|{}", pl.col("_word")),
            pl.format("kd|{}|{}", pl.col("_kind"), pl.col("_decade")),
            pl.format("k|{}", pl.col("_kind")),
        ],
    )
    s = s.with_columns(fkey.alias("_fkey"))
    # The index holds exactly the filter keys used today.
    c = cat.df.rename({"kind_word": "_kind", "decade": "_decade"})
    idx_parts = [
        c.explode("genres").select(pl.format("gk|{}|{}", pl.col("genres"), pl.col("_kind")).alias("_fkey"), "rank"),
        c.explode("genres").select(pl.format("gd|{}|{}", pl.col("genres"), pl.col("_decade")).alias("_fkey"), "rank"),
        c.explode("words").select(pl.format("tw|{}", pl.col("words")).alias("_fkey"), "rank"),
        c.select(pl.format("kd|{}|{}", pl.col("_kind"), pl.col("_decade")).alias("_fkey"), "rank"),
        c.select(pl.format("k|{}", pl.col("_kind")).alias("_fkey"), "rank"),
    ]
    wanted = s.select("_fkey").unique()
    index = (
        pl.concat(idx_parts)
        .drop_nulls()
        .join(wanted, on="_fkey", how="semi")
        .group_by("_fkey")
        .agg(pl.col("rank").unique().sort().head(k).alias("_top"))
    )
    s = s.join(index, on="_fkey", how="left", maintain_order="left")
    top = pl.col("_top").fill_null(pl.lit([], dtype=pl.List(pl.Int64)))
    results = (
        pl.when(top.list.contains(pl.col("rank")))
        .then(top)
        .otherwise(pl.concat_list(top.list.head(k - 1), pl.col("rank")).list.sort())
    )
    s = s.with_columns(cat.display(results).alias("_names"))

    genre = pl.col("_genre").str.to_lowercase()
    kinds = pl.col("f_kind_plural")
    dec = pl.col("_decade").cast(pl.String)
    word = pl.col("_word")
    t = bits(h, 32, 3)
    query = pick(
        pl.col("_qt"),
        [
            pick(
                t,
                [
                    fmt("Show me some {g} {k}.", g=genre, k=kinds),
                    fmt("Any good {g} {k}?", g=genre, k=kinds),
                    fmt("I'm looking for {g} {k}.", g=genre, k=kinds),
                ],
            ),
            pick(
                t,
                [
                    fmt("Any {g} titles from the {d}s?", g=genre, d=dec),
                    fmt("Find me {g} from the {d}s.", g=genre, d=dec),
                    fmt("What {g} do you have from the {d}s?", g=genre, d=dec),
                ],
            ),
            pick(
                t,
                [
                    fmt('Find titles with "{w}" in the name.', w=word),
                    fmt('Search for "{w}".', w=word),
                    fmt('Which titles have "{w}" in the title?', w=word),
                ],
            ),
            pick(
                t,
                [
                    fmt("Show me {k} from the {d}s.", k=kinds, d=dec),
                    fmt("Any {k} from the {d}s?", k=kinds, d=dec),
                    fmt("I'd like some {k} from the {d}s.", k=kinds, d=dec),
                ],
            ),
            pick(
                t,
                [
                    fmt("What are the most popular {k} today?", k=kinds),
                    fmt("Show me popular {k}.", k=kinds),
                    fmt("Any {k} everyone is watching?", k=kinds),
                ],
            ),
        ],
    )
    answer = (
        pick(
            bits(h, 36, 3),
            ["Here's what matches, most popular first:", "I found these titles:", "Top matches right now:"],
        )
        + pl.lit("\n")
        + numbered(pl.col("_names"))
    )
    user2 = pick(
        bits(h, 44, 2),
        [
            pl.format("Tell me more about {}.", pl.col("f_title")),
            pl.format("What is {} about?", pl.col("f_title")),
        ],
    )
    asst2 = describe("f_", bits(h, 46, 2))
    user3, asst3 = year_or_kind("f_", bits(h, 48, 2))
    n_ex = 1 + bits(h, 50, min(3, cfg.max_exchanges))
    messages = assemble(
        s, [(query, answer), (user2, asst2), (user3, asst3)], n_ex, system_flag(h, cfg), cfg.system_prompt
    )
    out = s.with_columns(messages)
    return out.with_columns(
        conversation_ids(out, pl.concat_str([pl.lit("search|"), key])),
        pl.lit("search").alias("kind"),
        pl.lit(day, dtype=pl.Date).alias("day"),
    ).select(list(CANDIDATE_SCHEMA))
