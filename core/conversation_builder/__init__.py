"""Build grounded chat conversations from the catalog and one day of interactions.

Three kinds, each grounded in data an evaluator can check:

- ``recommendation``: a member's plays of the day (ts order) before a target play;
  the assistant's first named title is the target, the title the member actually
  played next, written ``Title (Year)`` exactly as the catalog has it. Follow-ups
  describe it, give its year/kind and list more titles (the member's later plays,
  then popular titles of the target's genre).
- ``title_qa``: questions on a title's genre, year, kind and synopsis, answered
  from the catalog. No member; the id hashes the title and the question set, so
  identical content gets an identical id (and therefore split).
- ``search``: a member's search event becomes a query derived from the found title
  (genre + kind, genre + decade, kind + decade, or a word of the title); the answer
  lists matching catalog titles ranked by the day's popularity, the found title
  always among them.

Everything is column-wise polars: titles are addressed by their popularity rank
(an int), catalog lookups are ``replace_strict``/joins, and per-row choices of
templates come from a sha256 of the row's key (``seed`` included), never from global
RNG state, so the same inputs give the same rows in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from itertools import permutations

import numpy as np
import polars as pl

from core.curation import stable_hash_hex, stable_hash_u64
from core.schemas import CATALOG_SCHEMA, INTERACTIONS_SCHEMA, MESSAGES_DTYPE, conform

DEFAULT_SYSTEM_PROMPT = (
    "You are the catalog assistant of a streaming service. Recommend, find and describe titles "
    "from the catalog only. Name every title exactly as the catalog lists it, followed by its "
    "release year in parentheses, and do not invent titles or facts."
)

CANDIDATE_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.String,
    "day": pl.Date,
    "kind": pl.String,
    "member_id": pl.String,
    "messages": MESSAGES_DTYPE,
}

_NO_GENRE = "\x00no-genre"  # index key for titles without genres: overall popularity
RECS_PER_ANSWER = 3  # titles named in one recommendation answer
_MAX_LATER = 5  # later plays considered for follow-up recommendations
_STOPWORDS = (
    "the", "and", "for", "with", "from", "that", "this", "into", "your", "you", "are", "was",
    "not", "but", "all", "our", "his", "her", "its", "who", "what", "when", "how", "one", "out",
)  # fmt: skip


@dataclass(frozen=True)
class BuilderConfig:
    """How conversations are generated.

    ``seed`` changes which templates and which target a row gets (all derived from a
    hash of seed + row key), not the grounding rules.
    """

    seed: int = 7
    max_exchanges: int = 4
    history_size: int = 5
    search_results: int = 5
    max_synopsis_chars: int = 600
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    def __post_init__(self) -> None:
        if not 1 <= self.max_exchanges <= 4:
            raise ValueError(f"max_exchanges={self.max_exchanges} must be between 1 and 4")
        if self.history_size < 1 or self.search_results < 1:
            raise ValueError(f"history_size={self.history_size} and search_results={self.search_results} must be >= 1")
        if self.max_synopsis_chars < 20:
            raise ValueError(f"max_synopsis_chars={self.max_synopsis_chars} must be >= 20")


# ------------------------------------------------------------------------- helpers


def _bits(h: pl.Expr, shift: int, n: int | pl.Expr) -> pl.Expr:
    """An independent-ish choice in [0, n) from the 64-bit row hash."""
    n_u = n.cast(pl.UInt64) if isinstance(n, pl.Expr) else pl.lit(n, dtype=pl.UInt64)
    return ((h // pl.lit(1 << shift, dtype=pl.UInt64)) % n_u).cast(pl.Int64)


def _pick(idx: pl.Expr, options: list[pl.Expr | str]) -> pl.Expr:
    """options[idx] as an expression (templates chosen per row)."""
    exprs = [pl.lit(o) if isinstance(o, str) else o for o in options]
    out = exprs[-1]
    for i in range(len(exprs) - 2, -1, -1):
        out = pl.when(idx == i).then(exprs[i]).otherwise(out)
    return out


def _fmt(template: str, **fields: pl.Expr) -> pl.Expr:
    """``str.format``-like templating over expressions: "{a} and {b}"."""
    parts: list[pl.Expr] = []
    rest = template
    while "{" in rest:
        pre, _, after = rest.partition("{")
        name, _, rest = after.partition("}")
        if pre:
            parts.append(pl.lit(pre))
        parts.append(fields[name])
    if rest:
        parts.append(pl.lit(rest))
    return pl.concat_str(parts)


def _assemble(
    df: pl.DataFrame,
    exchanges: list[tuple[pl.Expr, pl.Expr]],
    n_ex: pl.Expr,
    with_system: pl.Expr,
    system_prompt: str,
) -> pl.Series:
    """[system?, user1, assistant1, ...] cut to ``n_ex`` exchanges, one list per row.

    Built as one flat column of turns (row-major, by a gather), reshaped to a fixed
    width and sliced per row: ``concat_list`` of struct columns is an order of
    magnitude slower at a million rows.
    """
    contents = [pl.lit(system_prompt)]
    roles = ["system"]
    for user, assistant in exchanges:
        contents += [user, assistant]
        roles += ["user", "assistant"]
    n, k = df.height, len(contents)
    if n == 0:
        return pl.Series("messages", [], dtype=MESSAGES_DTYPE)
    cols = df.select(
        *[c.cast(pl.String).alias(f"_c{i}") for i, c in enumerate(contents)],
        pl.when(with_system).then(0).otherwise(1).cast(pl.Int64).alias("_off"),
        (with_system.cast(pl.Int64) + 2 * n_ex).alias("_len"),
    )
    flat = pl.concat(
        [
            cols.select(pl.struct(pl.lit(r).alias("role"), pl.col(f"_c{i}").alias("content"))).to_series()
            for i, r in enumerate(roles)
        ]
    )
    row_major = (np.arange(k, dtype=np.int64) * n)[None, :] + np.arange(n, dtype=np.int64)[:, None]
    grid = flat.gather(row_major.ravel()).reshape((n, k)).cast(MESSAGES_DTYPE)
    return (
        cols.select("_off", "_len")
        .with_columns(grid.alias("messages"))
        .select(pl.col("messages").list.slice(pl.col("_off"), pl.col("_len")))
        .to_series()
    )


def _numbered(names: pl.Expr) -> pl.Expr:
    """list[str] -> "1. A\\n2. B" (the format evaluators parse titles from)."""
    return names.list.eval(
        pl.concat_str([(pl.int_range(pl.len()) + 1).cast(pl.String), pl.lit(". "), pl.element()])
    ).list.join("\n")


# A member who completed or rated a title watched it: rating-only sources (MovieLens-style
# exports) then still yield watch histories and recommendation targets.
WATCH_EVENTS = ("play", "complete", "rate")


class _Catalog:
    """The catalog indexed by popularity rank: row i is the i-th most played title of
    the day (ties by title_id), so lists of ranks sort into popularity order."""

    def __init__(self, catalog: pl.DataFrame, inter: pl.DataFrame, cfg: BuilderConfig) -> None:
        cat = conform(catalog, CATALOG_SCHEMA)
        cat = cat.filter(pl.col("title_id").is_not_null() & (pl.col("title").str.strip_chars() != ""))
        cat = cat.unique("title_id", keep="first", maintain_order=True)
        pop = inter.filter(pl.col("event").is_in(WATCH_EVENTS)).group_by("title_id").len("pop")
        cat = cat.join(pop, on="title_id", how="left").with_columns(pl.col("pop").fill_null(0))
        cat = cat.sort(["pop", "title_id"], descending=[True, False]).with_row_index("rank")
        cat = cat.with_columns(pl.col("rank").cast(pl.Int64))
        title = pl.col("title").str.replace_all(r"\s+", " ").str.strip_chars()
        syn = pl.col("synopsis").str.replace_all(r"\s+", " ").str.strip_chars()
        cut = syn.str.slice(0, cfg.max_synopsis_chars - 1).str.replace(r"\s+\S*$", "")
        kind = pl.col("kind").str.strip_chars().str.to_lowercase()
        genres = pl.col("genres").list.eval(pl.element().str.strip_chars()).list.drop_nulls()
        genres = genres.list.eval(pl.element().filter(pl.element() != "")).list.unique(maintain_order=True)
        words = (
            title.str.to_lowercase()
            .str.extract_all(r"\p{L}{3,}")
            .list.eval(pl.element().filter(~pl.element().is_in(list(_STOPWORDS))))
            .list.unique(maintain_order=True)
        )
        cat = cat.with_columns(
            title.alias("title"),
            genres.fill_null([]).alias("genres"),
            kind.alias("kind"),
            pl.when(kind.is_in(["movie", "series"])).then(kind).otherwise(pl.lit("title")).alias("kind_word"),
            pl.when(kind == "movie")
            .then(pl.lit("movies"))
            .when(kind == "series")
            .then(pl.lit("series"))
            .otherwise(pl.lit("titles"))
            .alias("kind_plural"),
            pl.when(syn == "")
            .then(None)
            .when(syn.str.len_chars() > cfg.max_synopsis_chars)
            .then(cut + pl.lit("…"))
            .otherwise(syn)
            .alias("synopsis"),
            words.fill_null([]).alias("words"),
            (pl.col("year") // 10 * 10).alias("decade"),
        ).with_columns(
            pl.when(pl.col("year").is_null())
            .then(pl.col("title"))
            .otherwise(pl.format("{} ({})", pl.col("title"), pl.col("year")))
            .alias("display"),
            pl.col("genres").list.join(", ").alias("genres_text"),
        )
        self.df = cat
        self.rank_of = cat.select("title_id", "rank")
        self._ranks = cat.get_column("rank")
        self._display = cat.get_column("display")

    def display(self, ranks: pl.Expr) -> pl.Expr:
        """Display names of a list[int] rank column."""
        return ranks.list.eval(
            pl.element().replace_strict(self._ranks, self._display, default=None, return_dtype=pl.String)
        )

    def attrs(self, prefix: str) -> pl.DataFrame:
        """Per-rank attributes, columns prefixed, for joining onto rows by a rank column."""
        cols = ["rank", "title_id", "title", "display", "kind_word", "kind_plural", "genres", "genres_text"]
        cols += ["synopsis"]
        cols += ["year", "decade", "words"]
        return self.df.select([pl.col(c).alias(f"{prefix}{c}") for c in cols])

    def top_by(self, keys: list[str], k: int, explode: str | None = None) -> pl.DataFrame:
        """For each combination of ``keys``, the ``k`` most popular ranks."""
        df = self.df.explode(explode) if explode else self.df
        return (
            df.filter(pl.all_horizontal([pl.col(c).is_not_null() for c in keys]))
            .group_by(keys)
            .agg(pl.col("rank").sort().head(k).alias("top"))
        )


def _describe(p: str, variant: pl.Expr) -> pl.Expr:
    """Grounded description of the title whose attributes carry prefix ``p``."""
    c = lambda name: pl.col(f"{p}{name}")  # noqa: E731
    genre_clause = pl.when(c("genres").list.len() > 0).then(pl.format(" ({})", c("genres_text"))).otherwise(pl.lit(""))
    syn = pl.when(c("synopsis").is_null()).then(pl.lit("The catalog has no synopsis for it.")).otherwise(c("synopsis"))
    return _pick(
        variant,
        [
            pl.format("{} is a {}{}. {}", c("display"), c("kind_word"), genre_clause, syn),
            pl.format("{}: a {}{}. {}", c("display"), c("kind_word"), genre_clause, syn),
        ],
    )


def _year_or_kind(p: str, which: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(question, answer) about the year (which=0) or the kind (which=1) of title ``p``."""
    c = lambda name: pl.col(f"{p}{name}")  # noqa: E731
    year_a = (
        pl.when(c("year").is_null())
        .then(pl.format("The catalog doesn't list a release year for {}.", c("title")))
        .otherwise(pl.format("{} came out in {}.", c("title"), c("year")))
    )
    kind_a = pl.format("{} is a {}.", c("display"), c("kind_word"))
    q = _pick(which, ["When did it come out?", "Is it a movie or a series?"])
    return q, _pick(which, [year_a, kind_a])


def _ids(df: pl.DataFrame, key: pl.Expr) -> pl.Series:
    return stable_hash_hex(df.select(key.alias("conversation_id")).to_series(), 32)


def _hashes(df: pl.DataFrame, key: pl.Expr) -> pl.Series:
    return stable_hash_u64(df.select(key.alias("_h")).to_series())


# -------------------------------------------------------------------- the 3 kinds


def _recommendations(cat: _Catalog, inter: pl.DataFrame, day: date, cfg: BuilderConfig) -> pl.DataFrame:
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
        _hashes(seq, pl.format("recommendation|{}|{}|{}", pl.lit(cfg.seed), pl.col("member_id"), pl.lit(day_s)))
    )
    h = pl.col("_h")
    m = pl.col("seq").list.len()
    i = 1 + _bits(h, 0, m - 1)
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
    first = _numbered(pl.col("rec_names").list.head(RECS_PER_ANSWER))
    more = _numbered(pl.col("rec_names").list.slice(RECS_PER_ANSWER, RECS_PER_ANSWER))
    has_more = pl.col("recs").list.len() > RECS_PER_ANSWER

    ht = pl.col("hist_text")
    user1 = _pick(
        _bits(h, 8, 3),
        [
            _fmt("I just watched {h}. What should I watch next?", h=ht),
            _fmt("Here's what I've watched today: {h}. Can you recommend something?", h=ht),
            _fmt("My recent views: {h}. Any suggestions for what to watch next?", h=ht),
        ],
    )
    asst1 = (
        _pick(
            _bits(h, 10, 3),
            [
                "Based on what you've watched, here's what I'd suggest:",
                "You might enjoy these next:",
                "Here are a few picks for you:",
            ],
        )
        + pl.lit("\n")
        + first
    )
    user2 = _pick(
        _bits(h, 12, 3),
        [
            pl.lit("Tell me more about the first one."),
            pl.format("What is {} about?", pl.col("t_title")),
            pl.format("Tell me more about {}.", pl.col("t_title")),
        ],
    )
    asst2 = _describe("t_", _bits(h, 14, 2))
    user3, asst3 = _year_or_kind("t_", _bits(h, 16, 2))
    user4 = _pick(_bits(h, 18, 3), ["Anything else like that?", "What else would you suggest?", "Any more ideas?"])
    asst4 = _pick(_bits(h, 20, 2), ["You could also try:", "A few more you might like:"]) + pl.lit("\n") + more
    n_ex = pl.min_horizontal(1 + _bits(h, 24, cfg.max_exchanges), pl.when(has_more).then(4).otherwise(3))
    messages = _assemble(
        seq,
        [(user1, asst1), (user2, asst2), (user3, asst3), (user4, asst4)],
        n_ex,
        _system_flag(h, cfg),
        cfg.system_prompt,
    )
    out = seq.with_columns(messages)
    ids = _ids(out, pl.format("recommendation|{}|{}|{}", pl.col("member_id"), pl.lit(day_s), pl.col("t_title_id")))
    return out.with_columns(
        ids, pl.lit("recommendation").alias("kind"), pl.lit(day, dtype=pl.Date).alias("day")
    ).select(list(CANDIDATE_SCHEMA))


def _system_flag(h: pl.Expr, cfg: BuilderConfig) -> pl.Expr:
    """Three in four conversations carry the system turn (none when the prompt is empty)."""
    if not cfg.system_prompt.strip():
        return pl.lit(False)
    return _bits(h, 40, 4) != 0


_QA_TYPES = ("genre", "year", "kind", "synopsis")
_PERMS = list(permutations(range(len(_QA_TYPES))))


def _qa_turn(q: pl.Expr, t: pl.Expr, first: bool) -> tuple[pl.Expr, pl.Expr]:
    """(question, answer) for question type ``q`` (index into _QA_TYPES), template ``t``."""
    name = pl.col("a_title")
    disp = pl.col("a_display")
    if first:
        qs = [
            [_fmt("What genre is {n}?", n=name), _fmt("Which genres does {n} fall under?", n=name)],
            [_fmt("When was {n} released?", n=name), _fmt("What year did {n} come out?", n=name)],
            [_fmt("Is {n} a movie or a series?", n=name), _fmt("Is {n} a film or a show?", n=name)],
            [_fmt("What is {n} about?", n=name), _fmt("Give me a short summary of {n}.", n=name)],
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
    question = _pick(q, [_pick(t, qs[i]) for i in range(len(_QA_TYPES))])
    answer = _pick(q, [_pick(t, answers[i]) for i in range(len(_QA_TYPES))])
    return question, answer


def _title_qa(cat: _Catalog, inter: pl.DataFrame, day: date, cfg: BuilderConfig) -> pl.DataFrame:
    titles = (
        inter.select("title_id")
        .unique()
        .join(cat.rank_of, on="title_id", how="inner")
        .sort("title_id")
        .join(cat.attrs("a_"), left_on="rank", right_on="a_rank", how="left", maintain_order="left")
    )
    day_s = day.isoformat()
    titles = titles.with_columns(
        _hashes(titles, pl.format("title_qa|{}|{}|{}", pl.lit(cfg.seed), pl.col("title_id"), pl.lit(day_s)))
    )
    h = pl.col("_h")
    perms = pl.DataFrame(
        {"_perm": list(range(len(_PERMS)))} | {f"_q{s}": [p[s] for p in _PERMS] for s in range(4)},
        schema={"_perm": pl.Int64} | {f"_q{s}": pl.Int64 for s in range(4)},
    )
    titles = titles.with_columns(
        _bits(h, 8, len(_PERMS)).alias("_perm"),
        (1 + _bits(h, 24, cfg.max_exchanges)).alias("_n"),
        _system_flag(h, cfg).alias("_sys"),
        *[_bits(h, 16 + s, 2).alias(f"_t{s}") for s in range(4)],
    ).join(perms, on="_perm", how="left", maintain_order="left")
    exchanges = [_qa_turn(pl.col(f"_q{s}"), pl.col(f"_t{s}"), first=s == 0) for s in range(4)]
    out = titles.with_columns(_assemble(titles, exchanges, pl.col("_n"), pl.col("_sys"), cfg.system_prompt))
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
        _ids(out, sig),
        pl.lit("title_qa").alias("kind"),
        pl.lit(day, dtype=pl.Date).alias("day"),
        pl.lit(None, dtype=pl.String).alias("member_id"),
    ).select(list(CANDIDATE_SCHEMA))


# Search query types; the first four are the order of ``flags`` in _search.
_Q_GENRE_KIND, _Q_GENRE_DECADE, _Q_WORD, _Q_KIND_DECADE, _Q_KIND = range(5)


def _search(cat: _Catalog, inter: pl.DataFrame, day: date, cfg: BuilderConfig) -> pl.DataFrame:
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
    s = s.with_columns(_hashes(s, pl.format("search|{}|{}", pl.lit(cfg.seed), key)))
    h = pl.col("_h")
    has_g = pl.col("f_genres").list.len() > 0
    has_y = pl.col("f_year").is_not_null()
    has_w = pl.col("f_words").list.len() > 0
    # Pick uniformly among the query types this title supports (kind alone if none):
    # the j-th supported type, j = hash % count, via cumulative counts.
    flags = [has_g, has_g & has_y, has_w, has_y]
    count = pl.sum_horizontal([f.cast(pl.Int64) for f in flags])
    j = _bits(h, 0, pl.max_horizontal(count, pl.lit(1)))
    qtype = pl.lit(_Q_KIND, dtype=pl.Int64)
    for code, f in enumerate(flags):
        before = pl.sum_horizontal([pl.lit(0, dtype=pl.Int64), *[g.cast(pl.Int64) for g in flags[:code]]])
        qtype = pl.when(f & (j == before)).then(pl.lit(code, dtype=pl.Int64)).otherwise(qtype)
    s = s.with_columns(
        qtype.alias("_qt"),
        pl.col("f_genres")
        .list.get(_bits(h, 8, pl.max_horizontal(pl.col("f_genres").list.len(), 1)), null_on_oob=True)
        .alias("_genre"),
        pl.col("f_words")
        .list.get(_bits(h, 16, pl.max_horizontal(pl.col("f_words").list.len(), 1)), null_on_oob=True)
        .alias("_word"),
        pl.col("f_kind_word").alias("_kind"),
        pl.col("f_decade").alias("_decade"),
    )
    fkey = _pick(
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
    t = _bits(h, 32, 3)
    query = _pick(
        pl.col("_qt"),
        [
            _pick(
                t,
                [
                    _fmt("Show me some {g} {k}.", g=genre, k=kinds),
                    _fmt("Any good {g} {k}?", g=genre, k=kinds),
                    _fmt("I'm looking for {g} {k}.", g=genre, k=kinds),
                ],
            ),
            _pick(
                t,
                [
                    _fmt("Any {g} titles from the {d}s?", g=genre, d=dec),
                    _fmt("Find me {g} from the {d}s.", g=genre, d=dec),
                    _fmt("What {g} do you have from the {d}s?", g=genre, d=dec),
                ],
            ),
            _pick(
                t,
                [
                    _fmt('Find titles with "{w}" in the name.', w=word),
                    _fmt('Search for "{w}".', w=word),
                    _fmt('Which titles have "{w}" in the title?', w=word),
                ],
            ),
            _pick(
                t,
                [
                    _fmt("Show me {k} from the {d}s.", k=kinds, d=dec),
                    _fmt("Any {k} from the {d}s?", k=kinds, d=dec),
                    _fmt("I'd like some {k} from the {d}s.", k=kinds, d=dec),
                ],
            ),
            _pick(
                t,
                [
                    _fmt("What are the most popular {k} today?", k=kinds),
                    _fmt("Show me popular {k}.", k=kinds),
                    _fmt("Any {k} everyone is watching?", k=kinds),
                ],
            ),
        ],
    )
    answer = (
        _pick(
            _bits(h, 36, 3),
            ["Here's what matches, most popular first:", "I found these titles:", "Top matches right now:"],
        )
        + pl.lit("\n")
        + _numbered(pl.col("_names"))
    )
    user2 = _pick(
        _bits(h, 44, 2),
        [
            pl.format("Tell me more about {}.", pl.col("f_title")),
            pl.format("What is {} about?", pl.col("f_title")),
        ],
    )
    asst2 = _describe("f_", _bits(h, 46, 2))
    user3, asst3 = _year_or_kind("f_", _bits(h, 48, 2))
    n_ex = 1 + _bits(h, 50, min(3, cfg.max_exchanges))
    messages = _assemble(
        s, [(query, answer), (user2, asst2), (user3, asst3)], n_ex, _system_flag(h, cfg), cfg.system_prompt
    )
    out = s.with_columns(messages)
    return out.with_columns(
        _ids(out, pl.concat_str([pl.lit("search|"), key])),
        pl.lit("search").alias("kind"),
        pl.lit(day, dtype=pl.Date).alias("day"),
    ).select(list(CANDIDATE_SCHEMA))


# --------------------------------------------------------------------------- entry


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
    cat = _Catalog(catalog, inter, cfg)
    parts = [
        _recommendations(cat, inter, day, cfg),
        _title_qa(cat, inter, day, cfg),
        _search(cat, inter, day, cfg),
    ]
    return pl.concat(parts, how="vertical")
