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

Landing layout (``landing_paths``)::

    catalog/catalog.parquet
    interactions/day=YYYY-MM-DD/events.parquet
    conversations/day=YYYY-MM-DD/external.jsonl
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from core.atomic_io import atomic_write_bytes

# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic world. Same config + same day = same bytes."""

    seed: int = 7
    n_titles: int = 3000
    n_members: int = 4000
    start_day: date = date(2026, 1, 1)
    days: int = 7
    mean_events_per_active_member: float = 3.0
    bad_row_rate: float = 0.004  # injected broken raw rows (see INJECTED_DEFECTS)
    external_conversations_per_day: int = 40
    # Exact re-deliveries of a good event (at-least-once delivery); not a defect:
    # ingestion collapses them and counts them.
    duplicate_event_rate: float = 0.002

    def __post_init__(self) -> None:
        if self.n_titles < 1 or self.n_members < 1:
            raise ValueError(
                f"SyntheticConfig needs n_titles >= 1 and n_members >= 1, got "
                f"n_titles={self.n_titles}, n_members={self.n_members}"
            )
        if not 0.0 <= self.bad_row_rate <= 1.0 or not 0.0 <= self.duplicate_event_rate <= 1.0:
            raise ValueError("SyntheticConfig rates (bad_row_rate, duplicate_event_rate) must lie in [0, 1]")


def config_days(cfg: SyntheticConfig) -> list[date]:
    """The ``cfg.days`` consecutive days starting at ``cfg.start_day``."""
    return [cfg.start_day + timedelta(days=i) for i in range(cfg.days)]


# --------------------------------------------------------------------- vocabulary

GENRES: tuple[str, ...] = (
    "Drama",
    "Comedy",
    "Thriller",
    "Action",
    "Romance",
    "Crime",
    "Documentary",
    "Sci-Fi",
    "Horror",
    "Animation",
    "Family",
    "Fantasy",
    "Mystery",
    "Adventure",
    "Western",
    "Musical",
    "War",
)
_GENRE_WEIGHTS = np.array([14, 12, 9, 9, 7, 7, 5, 6, 5, 5, 4, 4, 4, 4, 2, 2, 2], dtype=np.float64)
_GENRE_WEIGHTS /= _GENRE_WEIGHTS.sum()

# Nouns that make a synopsis read like its primary genre (consonant-initial: "a ..." reads right).
_GENRE_NOUNS: tuple[tuple[str, ...], ...] = (
    ("family", "marriage", "brother", "widow", "farm"),
    ("wedding", "roommate", "babysitter", "prankster", "neighbor"),
    ("spy", "hostage", "conspiracy", "killer", "bomb"),
    ("mercenary", "convoy", "bodyguard", "bullet", "showdown"),
    ("lover", "kiss", "sweetheart", "letter", "heart"),
    ("detective", "heist", "gangster", "witness", "cartel"),
    ("scientist", "reef", "migration", "journalist", "history"),
    ("starship", "robot", "colony", "galaxy", "cyborg"),
    ("ghost", "curse", "demon", "cabin", "zombie"),
    ("puppy", "dragon", "toy", "penguin", "balloon"),
    ("grandmother", "treehouse", "camp", "pony", "holiday"),
    ("wizard", "sword", "prophecy", "kingdom", "giant"),
    ("clue", "murder", "butler", "manor", "riddle"),
    ("treasure", "jungle", "pirate", "voyage", "map"),
    ("sheriff", "gunslinger", "ranch", "saloon", "stagecoach"),
    ("singer", "band", "dancer", "melody", "stage"),
    ("soldier", "battalion", "trench", "bomber", "general"),
)
assert len(_GENRE_NOUNS) == len(GENRES)

_DET = ("the", "a", "the", "her", "his", "their")
_ADJ = (
    "silent", "broken", "hidden", "golden", "last", "crimson", "frozen", "distant", "forgotten",
    "burning", "hollow", "restless", "quiet", "wild", "secret", "lonely", "bright", "dark", "nameless",
    "falling", "northern", "paper", "velvet", "savage", "gentle", "lost", "strange", "fragile",
    "reckless", "sunken", "stolen", "tiny", "wandering", "bitter", "glowing", "haunted", "tender",
    "stubborn", "curious", "scarlet", "shattered", "midnight", "sacred", "rusty", "desperate", "brave",
    "cold", "final",
)  # fmt: skip
_NOUN = (
    "harbor", "signal", "garden", "kingdom", "river", "mirror", "lantern", "storm", "frontier", "tide",
    "station", "letter", "winter", "summer", "voyage", "circus", "city", "forest", "mountain", "bridge",
    "house", "road", "shadow", "promise", "secret", "daughter", "stranger", "village", "machine",
    "piano", "painter", "sister", "teacher", "soldier", "doctor", "friend", "journey", "fortune",
    "castle", "desert", "valley", "song", "dream", "night", "morning", "fire", "window", "door",
    "clock", "crown", "ship", "train", "tower", "wolf", "lighthouse", "melody",
)  # fmt: skip
_VERB = (
    "uncovers", "follows", "hides", "protects", "betrays", "chases", "discovers", "loses", "remembers",
    "confronts", "rescues", "leaves", "finds", "joins", "escapes", "guards", "questions", "inherits",
    "builds", "burns", "steals", "sells", "trusts", "fears", "loves", "hunts", "visits", "opens",
    "crosses", "survives",
)  # fmt: skip
_PREP = ("beyond", "beneath", "inside", "across", "behind", "near", "under", "against", "through", "before")
_ADV = ("meanwhile,", "soon,", "later,", "suddenly,", "eventually,", "somehow,", "tonight,", "now,")
_CONJ = ("and", "but", "then")
_PLACES = (
    "Avalon", "Marrow Creek", "Saint Clair", "Kestrel Bay", "Ashford", "Port Morrow", "Halden",
    "Blackwater", "Sunridge", "Ellery Falls", "Norvik", "Calder Point",
)  # fmt: skip

# Synopsis sentences are POS patterns; codes index _POS_WORDS. -1 pads.
_DET_C, _ADJ_C, _NOUN_C, _VERB_C, _PREP_C, _ADV_C, _CONJ_C = range(7)
_POS_WORDS = (_DET, _ADJ, _NOUN, _VERB, _PREP, _ADV, _CONJ)
_PATTERNS = (
    (0, 1, 2, 3, 0, 1, 2, 4, 0, 2),  # A restless detective uncovers the hidden heist beyond the harbor.
    (0, 2, 3, 0, 2),  # The robot follows a signal.
    (5, 0, 2, 3, 0, 1, 2),  # Meanwhile, the witness betrays a forgotten kingdom.
    (0, 1, 2, 3, 0, 2, 6, 3, 0, 1, 2, 4, 0, 2),  # ... and protects a hidden crown from the storm.
)
_PATTERN_WEIGHTS = np.array([0.35, 0.25, 0.25, 0.15])
_PATTERN_LEN = np.array([len(p) for p in _PATTERNS])
_PATTERN_MATRIX = np.full((len(_PATTERNS), int(_PATTERN_LEN.max())), -1, dtype=np.int64)
for _i, _p in enumerate(_PATTERNS):
    _PATTERN_MATRIX[_i, : len(_p)] = _p

LANGUAGES = ("en", "es", "fr", "de", "ja", "ko", "hi", "it", "pt", "sv")
_LANGUAGE_NAMES = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "ja": "Japanese",
    "ko": "Korean", "hi": "Hindi", "it": "Italian", "pt": "Portuguese", "sv": "Swedish",
}  # fmt: skip
_LANGUAGE_WEIGHTS = np.array([0.55, 0.1, 0.07, 0.05, 0.06, 0.06, 0.04, 0.03, 0.02, 0.02])
MOVIE_RATINGS = ("G", "PG", "PG-13", "R", "NC-17")
SERIES_RATINGS = ("TV-Y", "TV-G", "TV-PG", "TV-14", "TV-MA")
_ROMAN = ("", " II", " III", " IV", " V", " VI", " VII", " VIII", " IX", " X")

EVENTS = ("play", "complete", "rate", "search")
# One defect per injected bad row, cycled so that every kind appears once there are >= 7 bad rows.
INJECTED_DEFECTS = (
    "unknown_title",
    "bad_timestamp",
    "null_member_id",
    "null_title_id",
    "bad_event",
    "bad_value",
    "wrong_day",
)
EXTERNAL_DEFECTS = ("invalid_json", "wrong_role", "empty_turn", "no_assistant", "pii_email", "pii_phone")
_EXTERNAL_BAD_FRACTION = 0.15
_BAD_TIMESTAMPS = ("not-a-timestamp", "2026-13-45T99:61:00Z", "", "yesterday evening")

# Behaviour constants of a day.
_BASE_ACTIVE_RATE = 0.3  # mean probability a member is active on a day
_FOLLOW_TASTE = 0.8  # share of plays/searches drawn from the member's favourite genres
_SEARCH_RATE = 0.18
_COMPLETE_RATE = 0.45  # share of plays followed by a complete event
_RATE_RATE = 0.35  # share of completes followed by a rating
# Expected events produced by one base event (play/search + its follow-ups).
_EXPANSION = 1 + (1 - _SEARCH_RATE) * _COMPLETE_RATE * (1 + _RATE_RATE)
_HOUR_WEIGHTS = np.array([3, 2, 1, 1, 1, 1, 2, 3, 3, 3, 3, 4, 5, 5, 4, 4, 5, 6, 8, 10, 12, 12, 10, 6], dtype=np.float64)
_HOUR_WEIGHTS /= _HOUR_WEIGHTS.sum()
_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 86_400_000


# ------------------------------------------------------------------------ world


@dataclass(frozen=True)
class _World:
    """Day-independent latent structure: the catalog and the members' tastes."""

    catalog: pl.DataFrame  # landing format (genres "|"-joined)
    genre_mask: np.ndarray  # per title: bit g set when the title has genre g
    genre_keys: np.ndarray  # g + cumulative popularity within genre g (sorted)
    genre_titles: np.ndarray  # title index for each entry of genre_keys
    genre_count: np.ndarray  # titles per genre
    pop_cum: np.ndarray  # cumulative global popularity (normalized)
    runtime_ms: np.ndarray  # per title
    member_fav: np.ndarray  # (n_members, 3) favourite genre indices
    member_k: np.ndarray  # number of favourite genres (1..3)
    member_mask: np.ndarray  # bitmask of favourite genres
    member_z: np.ndarray  # activity propensity (lognormal)
    p_active: np.ndarray  # probability of being active on a given day


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _gumbel_top3(rng: np.random.Generator, n: int) -> np.ndarray:
    """Weighted sampling of 3 distinct genres per row (Gumbel top-k), most likely first."""
    keys = np.log(_GENRE_WEIGHTS)[None, :] + rng.gumbel(size=(n, len(GENRES)))
    return np.argsort(-keys, axis=1)[:, :3]


def _ids(prefix: str, idx: pl.Expr) -> pl.Expr:
    return pl.concat_str([pl.lit(prefix), idx.cast(pl.String).str.zfill(6)])


def _synopses(rng: np.random.Generator, primary_genre: np.ndarray) -> pl.Series:
    """Prose-like synopses whose word counts are lognormal (clipped to 5..400)."""
    n = len(primary_genre)
    target = np.clip(np.round(rng.lognormal(np.log(30.0), 0.8, size=n)), 5, 400).astype(np.int64)
    # Upper bound on sentences needed (shortest pattern has 5 words); keep the prefix that fits.
    max_sent = -(-target // 5)
    sent_title = np.repeat(np.arange(n), max_sent)
    starts = np.cumsum(max_sent) - max_sent
    sent_idx = np.arange(len(sent_title)) - np.repeat(starts, max_sent)
    pattern = rng.choice(len(_PATTERNS), size=len(sent_title), p=_PATTERN_WEIGHTS)
    slen = _PATTERN_LEN[pattern]
    cs = np.cumsum(slen)
    base = np.where(starts > 0, cs[starts - 1], 0)
    cum_end = cs - np.repeat(base, max_sent)
    keep = (cum_end <= np.repeat(target, max_sent)) | (sent_idx == 0)
    sent_title, pattern, slen = sent_title[keep], pattern[keep], slen[keep]

    word_sent = np.repeat(np.arange(len(pattern)), slen)
    word_start = np.cumsum(slen) - slen
    slot = np.arange(len(word_sent)) - np.repeat(word_start, slen)
    pos = _PATTERN_MATRIX[pattern[word_sent], slot]
    word_title = sent_title[word_sent]

    vocab = [w for words in _POS_WORDS for w in words]
    sizes = np.array([len(w) for w in _POS_WORDS])
    offsets = np.cumsum(sizes) - sizes
    genre_vocab_off = len(vocab)
    vocab += [w for words in _GENRE_NOUNS for w in words]
    u = rng.random(len(pos))
    idx = offsets[pos] + (u * sizes[pos]).astype(np.int64)
    genre_noun = (pos == _NOUN_C) & (rng.random(len(pos)) < 0.4)
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


@functools.lru_cache(maxsize=8)
def _world(cfg: SyntheticConfig) -> _World:
    n = cfg.n_titles
    rng = _rng(cfg.seed, 0, 1)
    genre_idx = _gumbel_top3(rng, n)
    n_genres = rng.choice([1, 2, 3], size=n, p=[0.35, 0.45, 0.2])
    primary = genre_idx[:, 0]
    kind_series = rng.random(n) < 0.25
    years = np.clip(2026 - np.floor(rng.exponential(14.0, size=n)), 1950, 2026).astype(np.int32)
    language = rng.choice(len(LANGUAGES), size=n, p=_LANGUAGE_WEIGHTS)
    level = rng.choice(5, size=n, p=[0.1, 0.25, 0.35, 0.25, 0.05])
    family = np.isin(primary, [GENRES.index("Animation"), GENRES.index("Family")])
    level = np.where(family, np.minimum(level, 1), level)
    level = np.where(primary == GENRES.index("Horror"), np.maximum(level, 3), level)
    maturity = np.where(kind_series, np.array(SERIES_RATINGS)[level], np.array(MOVIE_RATINGS)[level])
    title_pattern = rng.choice(4, size=n, p=[0.4, 0.25, 0.2, 0.15])
    adj = rng.integers(0, len(_ADJ), size=n)
    noun = rng.integers(0, len(_NOUN), size=n)
    place = rng.integers(0, len(_PLACES), size=n)
    runtime_min = np.where(kind_series, rng.integers(22, 61, size=n), rng.integers(75, 161, size=n))
    rank = rng.permutation(n)
    popularity = 1.0 / np.power(rank + 1.0, 1.07)
    synopsis = _synopses(rng, primary)

    cap = [w[:1].upper() + w[1:] for w in _ADJ]
    capn = [w[:1].upper() + w[1:] for w in _NOUN]
    gnames = np.array(GENRES)
    parts = pl.DataFrame(
        {
            "i": np.arange(n),
            "pat": title_pattern,
            "adj": np.array(cap)[adj],
            "noun": np.array(capn)[noun],
            "place": np.array(_PLACES)[place],
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
        pl.when(seq <= len(_ROMAN))
        .then(seq.replace_strict(dict(enumerate(_ROMAN, start=1)), default=None, return_dtype=pl.String))
        .otherwise(pl.concat_str([pl.lit(" "), seq.cast(pl.String)]))
    )
    catalog = (
        parts.with_columns(raw_title.alias("title"))
        .with_columns(pl.concat_str([pl.col("title"), suffix]).alias("title"))
        .select(
            _ids("T", pl.col("i")).alias("title_id"),
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

    has = np.zeros((n, len(GENRES)), dtype=bool)
    rows = np.arange(n)
    for j in range(3):
        has[rows[n_genres > j], genre_idx[n_genres > j, j]] = True
    genre_mask = (has * (1 << np.arange(len(GENRES)))).sum(axis=1).astype(np.int64)
    g_of, t_of = np.nonzero(has.T)  # sorted by genre, then title
    w = popularity[t_of]
    genre_count = has.sum(axis=0)
    cum = np.cumsum(w)
    ends = np.cumsum(genre_count)
    gstart = ends - genre_count
    before = np.where(gstart > 0, cum[np.maximum(gstart - 1, 0)], 0.0)
    totals = np.where(genre_count > 0, cum[np.maximum(ends - 1, 0)] - before, 1.0)
    within = (cum - before[g_of]) / totals[g_of]
    genre_keys = g_of + within

    mrng = _rng(cfg.seed, 0, 2)
    m = cfg.n_members
    fav = _gumbel_top3(mrng, m)
    k = mrng.choice([1, 2, 3], size=m, p=[0.3, 0.45, 0.25])
    bits = 1 << fav
    member_mask = bits[:, 0] | np.where(k >= 2, bits[:, 1], 0) | np.where(k >= 3, bits[:, 2], 0)
    z = mrng.lognormal(0.0, 1.1, size=m)
    p_active = np.clip(_BASE_ACTIVE_RATE * z / z.mean(), 0.01, 0.95)
    return _World(
        catalog=catalog,
        genre_mask=genre_mask,
        genre_keys=genre_keys,
        genre_titles=t_of,
        genre_count=genre_count,
        pop_cum=np.cumsum(popularity) / popularity.sum(),
        runtime_ms=runtime_min.astype(np.int64) * 60_000,
        member_fav=fav,
        member_k=k,
        member_mask=member_mask.astype(np.int64),
        member_z=z,
        p_active=p_active,
    )


def _sample_global(world: _World, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(world.pop_cum, u, side="right"), len(world.pop_cum) - 1)


# ---------------------------------------------------------------------- generation


def generate_catalog(cfg: SyntheticConfig) -> pl.DataFrame:
    """The catalog in landing format: CATALOG_SCHEMA columns, genres as a "|"-joined string."""
    return _world(cfg).catalog.clone()


def generate_interactions(cfg: SyntheticConfig, day: date) -> pl.DataFrame:
    """One day of member events in landing format, including injected bad rows.

    Columns: member_id, title_id, ts (ISO 8601 UTC string, ms precision), event, value.
    Rows are ordered by ts. A ``bad_row_rate`` share of rows carries exactly one
    defect from INJECTED_DEFECTS; ``duplicate_event_rate`` of good rows are delivered twice.
    """
    world = _world(cfg)
    rng = _rng(cfg.seed, day.toordinal())
    m_all = cfg.n_members

    active = np.flatnonzero(rng.random(m_all) < world.p_active)
    base_mean = max(cfg.mean_events_per_active_member / _EXPANSION, 1.0)
    z_act = world.member_z[active]
    lam = (base_mean - 1.0) * z_act / (z_act.mean() if len(z_act) else 1.0)
    n_base = 1 + rng.poisson(lam)
    member = np.repeat(active, n_base)
    b = len(member)

    k = world.member_k[member]
    g = world.member_fav[member, rng.integers(0, k)] if b else np.zeros(0, dtype=np.int64)
    follow = (rng.random(b) < _FOLLOW_TASTE) & (world.genre_count[g] > 0)
    u = rng.random(b)
    pick = np.minimum(np.searchsorted(world.genre_keys, g + u, side="right"), len(world.genre_keys) - 1)
    title = np.where(follow, world.genre_titles[pick], _sample_global(world, rng.random(b)))
    hour = rng.choice(24, size=b, p=_HOUR_WEIGHTS)
    ms = hour * _MS_PER_HOUR + rng.integers(0, _MS_PER_HOUR, size=b)
    event = np.where(rng.random(b) < _SEARCH_RATE, 3, 0)
    value = np.full(b, np.nan)

    match = (world.genre_mask[title] & world.member_mask[member]) != 0
    comp = (event == 0) & (rng.random(b) < _COMPLETE_RATE)
    frac = np.where(match, rng.beta(5.0, 1.3, size=b), rng.beta(2.0, 2.0, size=b))
    c_ms = np.minimum(ms + (world.runtime_ms[title] * frac).astype(np.int64), _MS_PER_DAY - 1)
    rate = comp & (rng.random(b) < _RATE_RATE)
    stars = np.where(
        match,
        rng.choice([3, 4, 5], size=b, p=[0.2, 0.4, 0.4]),
        rng.choice([1, 2, 3, 4, 5], size=b, p=[0.15, 0.25, 0.3, 0.2, 0.1]),
    ).astype(np.float64)
    r_ms = np.minimum(c_ms + rng.integers(5_000, 300_000, size=b), _MS_PER_DAY - 1)

    member = np.concatenate([member, member[comp], member[rate]])
    title = np.concatenate([title, title[comp], title[rate]])
    ms = np.concatenate([ms, c_ms[comp], r_ms[rate]])
    value = np.concatenate([value, np.round(frac[comp], 3), stars[rate]])
    event = np.concatenate([event, np.full(int(comp.sum()), 1), np.full(int(rate.sum()), 2)])
    order = np.lexsort((event, title, member, ms))
    member, title, ms, value, event = member[order], title[order], ms[order], value[order], event[order]

    n = len(member)
    n_bad = math.ceil(n * cfg.bad_row_rate) if n else 0
    bad_rows = np.sort(rng.choice(n, size=min(n_bad, n), replace=False)) if n_bad else np.zeros(0, int)
    defect = np.full(n, -1)
    defect[bad_rows] = rng.permutation(np.arange(len(bad_rows)) % len(INJECTED_DEFECTS))
    n_dup = math.ceil(n * cfg.duplicate_event_rate) if n else 0
    good = np.flatnonzero(defect < 0)
    dups = np.sort(rng.choice(good, size=min(n_dup, len(good)), replace=False)) if n_dup else np.zeros(0, int)
    rows = np.sort(np.concatenate([np.arange(n), dups]), kind="stable")
    member, title, ms, value, event, defect = (a[rows] for a in (member, title, ms, value, event, defect))

    d = {name: i for i, name in enumerate(INJECTED_DEFECTS)}
    ms = np.where(defect == d["wrong_day"], -rng.integers(1, _MS_PER_HOUR, size=len(ms)), ms)
    event = np.where(defect == d["bad_event"], -1, np.where(defect == d["bad_value"], 2, event))
    value = np.where(defect == d["bad_value"], 9.0, value)
    bad_ts = rng.integers(0, len(_BAD_TIMESTAMPS), size=len(ms))

    day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "m": member,
            "t": title,
            "ms": ms,
            "ev": event,
            "val": pl.Series(value, nan_to_null=True),
            "defect": defect,
            "bad_ts": bad_ts,
        }
    )
    return frame.select(
        pl.when(pl.col("defect") == d["null_member_id"])
        .then(None)
        .otherwise(_ids("M", pl.col("m")))
        .alias("member_id"),
        pl.when(pl.col("defect") == d["null_title_id"])
        .then(None)
        .when(pl.col("defect") == d["unknown_title"])
        .then(_ids("U", pl.col("t")))
        .otherwise(_ids("T", pl.col("t")))
        .alias("title_id"),
        pl.when(pl.col("defect") == d["bad_timestamp"])
        .then(pl.col("bad_ts").replace_strict(dict(enumerate(_BAD_TIMESTAMPS)), return_dtype=pl.String))
        .otherwise((pl.lit(day_start) + pl.duration(milliseconds=pl.col("ms"))).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
        .alias("ts"),
        pl.col("ev").replace_strict({-1: "pause", **dict(enumerate(EVENTS))}, return_dtype=pl.String).alias("event"),
        pl.col("val").cast(pl.Float64).alias("value"),
    )


def _first_sentence(text: str) -> str:
    head, _, _ = text.partition(".")
    return head + "."


def generate_external_conversations(cfg: SyntheticConfig, day: date) -> list[str]:
    """JSONL lines ``{"messages": [...]}`` as an external partner would drop them.

    About 15% are deliberately bad, one defect each, cycling through EXTERNAL_DEFECTS
    (invalid JSON, a wrong role, an empty turn, no assistant turn, an e-mail address or
    a phone number in the content) so curation's quarantine paths get exercised.
    """
    n = cfg.external_conversations_per_day
    if n <= 0:
        return []
    world = _world(cfg)
    rng = _rng(cfg.seed, day.toordinal(), 1)
    cat = world.catalog
    titles, kinds, genres = cat["title"].to_list(), cat["kind"].to_list(), cat["genres"].to_list()
    years, synopses, langs = cat["year"].to_list(), cat["synopsis"].to_list(), cat["language"].to_list()
    n_bad = min(n, math.ceil(n * _EXTERNAL_BAD_FRACTION))
    defects: list[str | None] = [None] * n
    for slot, j in zip(rng.choice(n, size=n_bad, replace=False).tolist(), range(n_bad), strict=True):
        defects[slot] = EXTERNAL_DEFECTS[j % len(EXTERNAL_DEFECTS)]
    picks = _sample_global(world, rng.random((n, 2)))
    templates = rng.integers(0, 3, size=n)
    nums = rng.integers(10, 100, size=n)

    def describe(i: int) -> str:
        first = genres[i].split("|")[0].lower()
        return f"{titles[i]} ({years[i]}), a {first} {kinds[i]}. {_first_sentence(synopses[i])}"

    lines: list[str] = []
    for i in range(n):
        a, b = (int(x) for x in picks[i])
        tpl = int(templates[i])
        if tpl == 0:
            msgs = [
                {
                    "role": "user",
                    "content": f"I just watched {titles[a]}. Can you recommend something similar?",
                },
                {"role": "assistant", "content": f"You might enjoy {describe(b)}"},
            ]
        elif tpl == 1:
            msgs = [
                {"role": "user", "content": f"What is {titles[a]} about?"},
                {
                    "role": "assistant",
                    "content": f"{titles[a]} ({years[a]}) is a {genres[a].replace('|', ', ').lower()} "
                    f"{kinds[a]}. {synopses[a]}",
                },
            ]
        else:
            genre = genres[a].split("|")[0].lower()
            msgs = [
                {
                    "role": "system",
                    "content": "You are a friendly assistant for a streaming service. "
                    "Recommend titles from the catalog.",
                },
                {"role": "user", "content": f"Looking for a good {genre} {kinds[a]} tonight, any ideas?"},
                {"role": "assistant", "content": f"Try {describe(a)}"},
                {"role": "user", "content": f"Seen it. Anything else, maybe in {_LANGUAGE_NAMES[langs[b]]}?"},
                {"role": "assistant", "content": f"Then {describe(b)}"},
            ]
        defect = defects[i]
        user_turn = next(t for t in msgs if t["role"] == "user")
        if defect == "wrong_role":
            next(t for t in msgs if t["role"] == "assistant")["role"] = "bot"
        elif defect == "empty_turn":
            user_turn["content"] = ""
        elif defect == "no_assistant":
            msgs = [t for t in msgs if t["role"] != "assistant"]
        elif defect == "pii_email":
            user_turn["content"] += f" You can reach me at jamie.rivera{nums[i]}@example.com."
        elif defect == "pii_phone":
            user_turn["content"] += f" Call me back at +1 415 555 01{nums[i]}."
        line = json.dumps({"messages": msgs}, ensure_ascii=False)
        if defect == "invalid_json":
            line = line[: len(line) // 2]
        lines.append(line)
    return lines


# ------------------------------------------------------------------------ writing


def landing_paths(landing_root: Path, day: date) -> dict[str, Path]:
    """Where the synthetic source puts each file: keys catalog, interactions, conversations."""
    root = Path(landing_root)
    d = day.isoformat()
    return {
        "catalog": root / "catalog" / "catalog.parquet",
        "interactions": root / "interactions" / f"day={d}" / "events.parquet",
        "conversations": root / "conversations" / f"day={d}" / "external.jsonl",
    }


def _atomic_write(path: Path, data: bytes) -> Path:
    atomic_write_bytes(path, data)
    return path


def _parquet_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()


def write_catalog(landing_root: Path, cfg: SyntheticConfig) -> Path:
    """Write (or rewrite, byte-identically) the catalog snapshot; returns its path."""
    path = landing_paths(landing_root, cfg.start_day)["catalog"]
    return _atomic_write(path, _parquet_bytes(generate_catalog(cfg)))


def _write_part(landing_root: Path, cfg: SyntheticConfig, day: date, key: str) -> Path:
    path = landing_paths(landing_root, day)[key]
    if key == "interactions":
        return _atomic_write(path, _parquet_bytes(generate_interactions(cfg, day)))
    lines = generate_external_conversations(cfg, day)
    return _atomic_write(path, "".join(f"{line}\n" for line in lines).encode("utf-8"))


def write_drop(landing_root: Path, cfg: SyntheticConfig, day: date) -> list[Path]:
    """Write one day's interactions and external conversations (not the catalog)."""
    return [_write_part(landing_root, cfg, day, key) for key in ("interactions", "conversations")]


def ensure_drop(landing_root: Path, cfg: SyntheticConfig, day: date) -> list[Path]:
    """Make sure the catalog and ``day``'s drop exist; write only missing files.

    Returns the paths it wrote (empty when everything was already there). Because
    generation is deterministic, a rewrite would be byte-identical anyway; skipping
    it keeps file mtimes stable for sensors that watch the landing area.
    """
    written: list[Path] = []
    paths = landing_paths(landing_root, day)
    if not paths["catalog"].exists():
        written.append(write_catalog(landing_root, cfg))
    for key in ("interactions", "conversations"):
        if not paths[key].exists():
            written.append(_write_part(landing_root, cfg, day, key))
    return written


_DAY_DIR = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")


def existing_days(landing_root: Path) -> list[date]:
    """Days that have an interactions drop under ``landing_root``, sorted."""
    base = Path(landing_root) / "interactions"
    if not base.is_dir():
        return []
    days = []
    for child in base.iterdir():
        match = _DAY_DIR.match(child.name)
        if match and (child / "events.parquet").exists():
            days.append(date.fromisoformat(match.group(1)))
    return sorted(days)


def next_day(landing_root: Path, cfg: SyntheticConfig) -> date:
    """The day after the newest existing drop, or ``cfg.start_day`` when there is none."""
    days = existing_days(landing_root)
    return days[-1] + timedelta(days=1) if days else cfg.start_day


# ---------------------------------------------------------------------------- CLI


def _parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--day {text!r} is not a date; use YYYY-MM-DD") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.synthetic drop --landing DIR [--day D | --days N]``: drop new days."""
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(prog="python -m core.synthetic", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    drop = sub.add_parser("drop", help="write the catalog (if missing) and one or more daily drops")
    drop.add_argument("--landing", type=Path, required=True, help="landing root directory")
    which = drop.add_mutually_exclusive_group()
    which.add_argument("--day", type=_parse_day, help="drop exactly this day (YYYY-MM-DD)")
    which.add_argument("--days", type=int, help="drop N days after the newest existing one")
    drop.add_argument("--seed", type=int, default=defaults.seed)
    drop.add_argument("--n-titles", type=int, default=defaults.n_titles)
    drop.add_argument("--n-members", type=int, default=defaults.n_members)
    drop.add_argument("--start-day", type=_parse_day, default=defaults.start_day)
    args = parser.parse_args(argv)
    if args.days is not None and args.days < 1:
        parser.error(f"--days must be >= 1, got {args.days}")
    cfg = SyntheticConfig(seed=args.seed, n_titles=args.n_titles, n_members=args.n_members, start_day=args.start_day)
    if args.day is not None:
        days = [args.day]
    else:
        first = next_day(args.landing, cfg)
        days = [first + timedelta(days=i) for i in range(args.days or 1)]
    for day in days:
        written = ensure_drop(args.landing, cfg, day)
        for path in written:
            print(f"wrote {path}")
        if not written:
            print(f"day {day.isoformat()} already present under {args.landing}; nothing written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
