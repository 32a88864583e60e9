"""``recommendation`` conversations: a member's plays of the day before a target play.

The assistant's first named title is the target, the title the member actually played
next; follow-ups describe it, give its year or kind and list more titles (the member's
later plays, then popular titles of the target's genre).
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
from core.signals import WATCH_EVENTS

_NO_GENRE = "\x00no-genre"  # index key for titles without genres: overall popularity
RECS_PER_ANSWER = 3  # titles named in one recommendation answer
_MAX_LATER = 5  # later plays considered for follow-up recommendations
# The member's request ({h}: their recent titles) and the lead line of the answer. Evaluation serves the first
# request and scores candidates after the first lead (evaluation/heldout_cases.py), so these are shared.
REQUESTS = (
    "I just watched {h}. What should I watch next?",
    "Here's what I've watched today: {h}. Can you recommend something?",
    "My recent views: {h}. Any suggestions for what to watch next?",
)
ANSWER_LEADS = (
    "Based on what you've watched, here's what I'd suggest:",
    "You might enjoy these next:",
    "Here are a few picks for you:",
)


def recommendations(cat: Catalog, inter: pl.DataFrame, day: date, cfg: BuilderConfig) -> pl.DataFrame:
    """One conversation per member with at least two watched titles today (a history and a target)."""
    plays = (
        inter.filter(pl.col("event").is_in(WATCH_EVENTS))
        .join(cat.rank_of, on="title_id", how="inner")
        .sort(["member_id", "ts", "title_id"])
        .unique(["member_id", "rank"], keep="first", maintain_order=True)
    )
    seq = (
        plays.group_by("member_id", maintain_order=True)
        .agg(pl.col("rank").alias("seq"))
        .filter(pl.col("seq").list.len() >= 2)
    )
    day_s = day.isoformat()
    seq = seq.with_columns(
        row_hashes(seq, pl.format("recommendation|{}|{}|{}", pl.lit(cfg.seed), pl.col("member_id"), pl.lit(day_s)))
    )
    h = pl.col("_h")
    m = pl.col("seq").list.len()
    i = 1 + bits(h, 0, m - 1)
    start = pl.max_horizontal(i - cfg.history_size, pl.lit(0))
    seq = seq.with_columns(
        pl.col("seq").list.slice(start, i - start).alias("hist"),
        pl.col("seq").list.get(i).alias("target"),
        pl.col("seq").list.slice(i + 1, _MAX_LATER).alias("later"),
    )
    seq = seq.join(cat.attrs("t_"), left_on="target", right_on="t_rank", how="left", maintain_order="left")
    # Popular titles of the target's primary genre (or overall when it has none).
    k = cfg.history_size + 1 + _MAX_LATER + 2 * RECS_PER_ANSWER
    by_genre = cat.top_by(["genres"], k, explode="genres").rename({"genres": "_g", "top": "gtop"})
    overall = cat.df.select(pl.lit(_NO_GENRE).alias("_g"), pl.col("rank").head(k).implode().alias("gtop"))
    by_genre = pl.concat([by_genre, overall], how="vertical_relaxed")
    seq = seq.with_columns(pl.col("t_genres").list.first().fill_null(_NO_GENRE).alias("_g"))
    seq = seq.join(by_genre, on="_g", how="left", maintain_order="left")
    # set_difference does not keep order, but gtop is rank-sorted, so sorting restores it.
    exclude = pl.concat_list("hist", "target", "later")
    others = pl.col("gtop").list.set_difference(exclude).list.sort()
    seq = seq.with_columns(pl.concat_list("target", "later", others).alias("recs"))
    seq = seq.with_columns(
        cat.display(pl.col("hist")).list.join(", ").alias("hist_text"),
        cat.display(pl.col("recs")).alias("rec_names"),
    )
    first = numbered(pl.col("rec_names").list.head(RECS_PER_ANSWER))
    more = numbered(pl.col("rec_names").list.slice(RECS_PER_ANSWER, RECS_PER_ANSWER))
    has_more = pl.col("recs").list.len() > RECS_PER_ANSWER

    ht = pl.col("hist_text")
    user1 = pick(bits(h, 8, len(REQUESTS)), [fmt(t, h=ht) for t in REQUESTS])
    asst1 = pick(bits(h, 10, len(ANSWER_LEADS)), list(ANSWER_LEADS)) + pl.lit("\n") + first
    user2 = pick(
        bits(h, 12, 3),
        [
            pl.lit("Tell me more about the first one."),
            pl.format("What is {} about?", pl.col("t_title")),
            pl.format("Tell me more about {}.", pl.col("t_title")),
        ],
    )
    asst2 = describe("t_", bits(h, 14, 2))
    user3, asst3 = year_or_kind("t_", bits(h, 16, 2))
    user4 = pick(bits(h, 18, 3), ["Anything else like that?", "What else would you suggest?", "Any more ideas?"])
    asst4 = pick(bits(h, 20, 2), ["You could also try:", "A few more you might like:"]) + pl.lit("\n") + more
    n_ex = pl.min_horizontal(1 + bits(h, 24, cfg.max_exchanges), pl.when(has_more).then(4).otherwise(3))
    messages = assemble(
        seq,
        [(user1, asst1), (user2, asst2), (user3, asst3), (user4, asst4)],
        n_ex,
        system_flag(h, cfg),
        cfg.system_prompt,
    )
    out = seq.with_columns(messages)
    ids = conversation_ids(
        out, pl.format("recommendation|{}|{}|{}", pl.col("member_id"), pl.lit(day_s), pl.col("t_title_id"))
    )
    return out.with_columns(
        ids, pl.lit("recommendation").alias("kind"), pl.lit(day, dtype=pl.Date).alias("day")
    ).select(list(CANDIDATE_SCHEMA))
