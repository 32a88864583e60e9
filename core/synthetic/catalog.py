"""The synthetic catalog: titles with Zipf-like popularity, genres, length-skewed synopses, ratings.

Besides the landing-format catalog it returns the per-title arrays the daily events sample from (the genre
index and the popularity distribution), so that events follow the same popularity the catalog was drawn with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from core.synthetic.config import SyntheticConfig, stream
from core.synthetic.vocabulary import (
    ADJ,
    GENRE_NOUNS,
    GENRES,
    LANGUAGE_WEIGHTS,
    LANGUAGES,
    MOVIE_RATINGS,
    NOUN,
    NOUN_C,
    PATTERN_LEN,
    PATTERN_MATRIX,
    PATTERN_WEIGHTS,
    PATTERNS,
    PLACES,
    POS_WORDS,
    ROMAN,
    SERIES_RATINGS,
    prefixed_ids,
    sample_top3_genres,
)

_GENRE_WORD_IN_TITLE = 0.8  # share of titles whose noun comes from their primary genre's words


@dataclass(frozen=True)
class Catalog:
    """The titles of the world: the landing-format frame and what sampling a title by genre or popularity needs."""

    frame: pl.DataFrame  # landing format (genres "|"-joined)
    genre_mask: np.ndarray  # per title: bit g set when the title has genre g
    genre_keys: np.ndarray  # g + cumulative popularity within genre g (sorted)
    genre_titles: np.ndarray  # title index for each entry of genre_keys
    genre_count: np.ndarray  # titles per genre
    pop_cum: np.ndarray  # cumulative global popularity (normalized)
    runtime_ms: np.ndarray  # per title
    year: np.ndarray  # per title: release year (members lean towards their own era)


def _synopses(rng: np.random.Generator, primary_genre: np.ndarray) -> pl.Series:
    """Prose-like synopses whose word counts are lognormal (clipped to 5..400)."""
    n = len(primary_genre)
    target = np.clip(np.round(rng.lognormal(np.log(30.0), 0.8, size=n)), 5, 400).astype(np.int64)
    # Upper bound on sentences needed (shortest pattern has 5 words); keep the prefix that fits.
    max_sent = -(-target // 5)
    sent_title = np.repeat(np.arange(n), max_sent)
    starts = np.cumsum(max_sent) - max_sent
    sent_idx = np.arange(len(sent_title)) - np.repeat(starts, max_sent)
    pattern = rng.choice(len(PATTERNS), size=len(sent_title), p=PATTERN_WEIGHTS)
    slen = PATTERN_LEN[pattern]
    cs = np.cumsum(slen)
    base = np.where(starts > 0, cs[starts - 1], 0)
    cum_end = cs - np.repeat(base, max_sent)
    keep = (cum_end <= np.repeat(target, max_sent)) | (sent_idx == 0)
    sent_title, pattern, slen = sent_title[keep], pattern[keep], slen[keep]

    word_sent = np.repeat(np.arange(len(pattern)), slen)
    word_start = np.cumsum(slen) - slen
    slot = np.arange(len(word_sent)) - np.repeat(word_start, slen)
    pos = PATTERN_MATRIX[pattern[word_sent], slot]
    word_title = sent_title[word_sent]

    vocab = [w for words in POS_WORDS for w in words]
    sizes = np.array([len(w) for w in POS_WORDS])
    offsets = np.cumsum(sizes) - sizes
    genre_vocab_off = len(vocab)
    vocab += [w for words in GENRE_NOUNS for w in words]
    u = rng.random(len(pos))
    idx = offsets[pos] + (u * sizes[pos]).astype(np.int64)
    genre_noun = (pos == NOUN_C) & (rng.random(len(pos)) < 0.4)
    g = primary_genre[word_title]
    g_idx = genre_vocab_off + g * 5 + (u * 5).astype(np.int64)
    idx = np.where(genre_noun, g_idx, idx)

    vocab_arr = np.array(vocab, dtype=object)
    cap_arr = np.array([w[:1].upper() + w[1:] for w in vocab], dtype=object)
    words = np.where(slot == 0, cap_arr[idx], vocab_arr[idx])
    is_end = slot == (slen[word_sent] - 1)
    frame = pl.DataFrame(
        {"t": word_title, "w": pl.Series(words, dtype=pl.String), "end": is_end},
    )
    out = (
        frame.with_columns(pl.when(pl.col("end")).then(pl.col("w") + pl.lit(".")).otherwise(pl.col("w")).alias("w"))
        .group_by("t", maintain_order=True)
        .agg(pl.col("w").str.join(" "))
        .sort("t")
    )
    return out["w"]


def build_catalog(cfg: SyntheticConfig) -> Catalog:
    """Every title of the world, drawn from the catalog's own random stream (seed, 0, 1)."""
    n = cfg.n_titles
    rng = stream(cfg.seed, 0, 1)
    genre_idx = sample_top3_genres(rng, n)
    n_genres = rng.choice([1, 2, 3], size=n, p=[0.35, 0.45, 0.2])
    primary = genre_idx[:, 0]
    kind_series = rng.random(n) < 0.25
    years = np.clip(2026 - np.floor(rng.exponential(14.0, size=n)), 1950, 2026).astype(np.int32)
    language = rng.choice(len(LANGUAGES), size=n, p=LANGUAGE_WEIGHTS)
    level = rng.choice(5, size=n, p=[0.1, 0.25, 0.35, 0.25, 0.05])
    family = np.isin(primary, [GENRES.index("Animation"), GENRES.index("Family")])
    level = np.where(family, np.minimum(level, 1), level)
    level = np.where(primary == GENRES.index("Horror"), np.maximum(level, 3), level)
    maturity = np.where(kind_series, np.array(SERIES_RATINGS)[level], np.array(MOVIE_RATINGS)[level])
    title_pattern = rng.choice(4, size=n, p=[0.4, 0.25, 0.2, 0.15])
    adj = rng.integers(0, len(ADJ), size=n)
    noun = rng.integers(0, len(NOUN), size=n)
    place = rng.integers(0, len(PLACES), size=n)
    runtime_min = np.where(kind_series, rng.integers(22, 61, size=n), rng.integers(75, 161, size=n))
    rank = rng.permutation(n)
    popularity = 1.0 / np.power(rank + 1.0, 1.07)
    synopsis = _synopses(rng, primary)
    # Many titles name their genre's stuff ("The Haunted Cabin", "Sheriff of Kingsport"), as real titles often
    # do: a reader of a member's history can tell their tastes from the titles alone.
    genre_word = rng.random(n) < _GENRE_WORD_IN_TITLE
    genre_noun = np.array(GENRE_NOUNS)[primary, rng.integers(0, len(GENRE_NOUNS[0]), size=n)]

    cap = [w[:1].upper() + w[1:] for w in ADJ]
    capn = np.where(genre_word, genre_noun, np.array(NOUN)[noun])
    capn = np.array([w[:1].upper() + w[1:] for w in capn])
    gnames = np.array(GENRES)
    parts = pl.DataFrame(
        {
            "i": np.arange(n),
            "pat": title_pattern,
            "adj": np.array(cap)[adj],
            "noun": capn,
            "place": np.array(PLACES)[place],
            "g0": gnames[genre_idx[:, 0]],
            "g1": np.where(n_genres >= 2, gnames[genre_idx[:, 1]], ""),
            "g2": np.where(n_genres >= 3, gnames[genre_idx[:, 2]], ""),
        }
    )
    raw_title = (
        pl.when(pl.col("pat") == 0)
        .then(pl.concat_str([pl.lit("The "), pl.col("adj"), pl.lit(" "), pl.col("noun")]))
        .when(pl.col("pat") == 1)
        .then(pl.concat_str([pl.col("adj"), pl.lit(" "), pl.col("noun")]))
        .when(pl.col("pat") == 2)
        .then(pl.concat_str([pl.lit("The "), pl.col("noun"), pl.lit(" of "), pl.col("place")]))
        .otherwise(pl.concat_str([pl.col("place"), pl.lit(" "), pl.col("noun")]))
    )
    # Repeated names become sequels ("The Silent Harbor II") so titles stay unambiguous.
    seq = pl.col("title").cum_count().over("title")
    suffix = (
        pl.when(seq <= len(ROMAN))
        .then(seq.replace_strict(dict(enumerate(ROMAN, start=1)), default=None, return_dtype=pl.String))
        .otherwise(pl.concat_str([pl.lit(" "), seq.cast(pl.String)]))
    )
    catalog = (
        parts.with_columns(raw_title.alias("title"))
        .with_columns(pl.concat_str([pl.col("title"), suffix]).alias("title"))
        .select(
            prefixed_ids("T", pl.col("i")).alias("title_id"),
            pl.col("title"),
            pl.Series("kind", np.where(kind_series, "series", "movie")),
            pl.concat_str(
                [pl.col(c).replace("", None) for c in ("g0", "g1", "g2")], separator="|", ignore_nulls=True
            ).alias("genres"),
            pl.Series("year", years, dtype=pl.Int32),
            synopsis.alias("synopsis"),
            pl.Series("language", np.array(LANGUAGES)[language]),
            pl.Series("maturity", maturity),
        )
    )
    genre_mask, genre_keys, genre_titles, genre_count = _genre_index(genre_idx, n_genres, popularity)
    return Catalog(
        frame=catalog,
        genre_mask=genre_mask,
        genre_keys=genre_keys,
        genre_titles=genre_titles,
        genre_count=genre_count,
        pop_cum=np.cumsum(popularity) / popularity.sum(),
        runtime_ms=runtime_min.astype(np.int64) * 60_000,
        year=years,
    )


def _genre_index(
    genre_idx: np.ndarray, n_genres: np.ndarray, popularity: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(genre bitmask per title, sorted sampling keys, their titles, titles per genre): sampling a title whose main
    genre is g by popularity is then one searchsorted of g + u over the keys. Tastes pick by the main genre, the
    one a title's name and description speak of, so what a member watches is visible in what they watched."""
    n = len(genre_idx)
    has = np.zeros((n, len(GENRES)), dtype=bool)
    rows = np.arange(n)
    for j in range(3):
        has[rows[n_genres > j], genre_idx[n_genres > j, j]] = True
    genre_mask = (has * (1 << np.arange(len(GENRES)))).sum(axis=1).astype(np.int64)
    main = np.zeros_like(has)
    main[rows, genre_idx[:, 0]] = True
    g_of, t_of = np.nonzero(main.T)  # sorted by genre, then title
    w = popularity[t_of]
    genre_count = main.sum(axis=0)
    cum = np.cumsum(w)
    ends = np.cumsum(genre_count)
    gstart = ends - genre_count
    before = np.where(gstart > 0, cum[np.maximum(gstart - 1, 0)], 0.0)
    totals = np.where(genre_count > 0, cum[np.maximum(ends - 1, 0)] - before, 1.0)
    within = (cum - before[g_of]) / totals[g_of]
    genre_keys = g_of + within
    return genre_mask, genre_keys, t_of, genre_count
