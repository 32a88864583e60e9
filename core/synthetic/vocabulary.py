"""The words and categories the synthetic world is made of: genres, synopsis grammar, languages, ratings, ids.

Constants only (and the genre sampler and id format every part of the world shares), so that the catalog, the members
and the conversations draw from one vocabulary and a change to it shows up in all of them at once.
"""

from __future__ import annotations

import numpy as np
import polars as pl

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
GENRE_WEIGHTS = np.array([14, 12, 9, 9, 7, 7, 5, 6, 5, 5, 4, 4, 4, 4, 2, 2, 2], dtype=np.float64)
GENRE_WEIGHTS /= GENRE_WEIGHTS.sum()

# Nouns that make a synopsis read like its primary genre (consonant-initial: "a ..." reads right).
GENRE_NOUNS: tuple[tuple[str, ...], ...] = (
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
assert len(GENRE_NOUNS) == len(GENRES)

DET = ("the", "a", "the", "her", "his", "their")
ADJ = (
    "silent", "broken", "hidden", "golden", "last", "crimson", "frozen", "distant", "forgotten",
    "burning", "hollow", "restless", "quiet", "wild", "secret", "lonely", "bright", "dark", "nameless",
    "falling", "northern", "paper", "velvet", "savage", "gentle", "lost", "strange", "fragile",
    "reckless", "sunken", "stolen", "tiny", "wandering", "bitter", "glowing", "haunted", "tender",
    "stubborn", "curious", "scarlet", "shattered", "midnight", "sacred", "rusty", "desperate", "brave",
    "cold", "final",
)  # fmt: skip
NOUN = (
    "harbor", "signal", "garden", "kingdom", "river", "mirror", "lantern", "storm", "frontier", "tide",
    "station", "letter", "winter", "summer", "voyage", "circus", "city", "forest", "mountain", "bridge",
    "house", "road", "shadow", "promise", "secret", "daughter", "stranger", "village", "machine",
    "piano", "painter", "sister", "teacher", "soldier", "doctor", "friend", "journey", "fortune",
    "castle", "desert", "valley", "song", "dream", "night", "morning", "fire", "window", "door",
    "clock", "crown", "ship", "train", "tower", "wolf", "lighthouse", "melody",
)  # fmt: skip
VERB = (
    "uncovers", "follows", "hides", "protects", "betrays", "chases", "discovers", "loses", "remembers",
    "confronts", "rescues", "leaves", "finds", "joins", "escapes", "guards", "questions", "inherits",
    "builds", "burns", "steals", "sells", "trusts", "fears", "loves", "hunts", "visits", "opens",
    "crosses", "survives",
)  # fmt: skip
PREP = ("beyond", "beneath", "inside", "across", "behind", "near", "under", "against", "through", "before")
ADV = ("meanwhile,", "soon,", "later,", "suddenly,", "eventually,", "somehow,", "tonight,", "now,")
CONJ = ("and", "but", "then")
PLACES = (
    "Avalon", "Marrow Creek", "Saint Clair", "Kestrel Bay", "Ashford", "Port Morrow", "Halden",
    "Blackwater", "Sunridge", "Ellery Falls", "Norvik", "Calder Point",
)  # fmt: skip

# Synopsis sentences are POS patterns; codes index POS_WORDS. -1 pads.
DET_C, ADJ_C, NOUN_C, VERB_C, PREP_C, ADV_C, CONJ_C = range(7)
POS_WORDS = (DET, ADJ, NOUN, VERB, PREP, ADV, CONJ)
PATTERNS = (
    (0, 1, 2, 3, 0, 1, 2, 4, 0, 2),  # A restless detective uncovers the hidden heist beyond the harbor.
    (0, 2, 3, 0, 2),  # The robot follows a signal.
    (5, 0, 2, 3, 0, 1, 2),  # Meanwhile, the witness betrays a forgotten kingdom.
    (0, 1, 2, 3, 0, 2, 6, 3, 0, 1, 2, 4, 0, 2),  # ... and protects a hidden crown from the storm.
)
PATTERN_WEIGHTS = np.array([0.35, 0.25, 0.25, 0.15])
PATTERN_LEN = np.array([len(p) for p in PATTERNS])
PATTERN_MATRIX = np.full((len(PATTERNS), int(PATTERN_LEN.max())), -1, dtype=np.int64)
for _i, _p in enumerate(PATTERNS):
    PATTERN_MATRIX[_i, : len(_p)] = _p

LANGUAGES = ("en", "es", "fr", "de", "ja", "ko", "hi", "it", "pt", "sv")
LANGUAGE_NAMES = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "ja": "Japanese",
    "ko": "Korean", "hi": "Hindi", "it": "Italian", "pt": "Portuguese", "sv": "Swedish",
}  # fmt: skip
LANGUAGE_WEIGHTS = np.array([0.55, 0.1, 0.07, 0.05, 0.06, 0.06, 0.04, 0.03, 0.02, 0.02])
MOVIE_RATINGS = ("G", "PG", "PG-13", "R", "NC-17")
SERIES_RATINGS = ("TV-Y", "TV-G", "TV-PG", "TV-14", "TV-MA")
ROMAN = ("", " II", " III", " IV", " V", " VI", " VII", " VIII", " IX", " X")


def sample_top3_genres(rng: np.random.Generator, n: int, *, weighted: bool = True) -> np.ndarray:
    """Sampling of 3 distinct genres per row (Gumbel top-k), most likely first: by GENRE_WEIGHTS, or uniformly."""
    keys = rng.gumbel(size=(n, len(GENRES)))
    if weighted:
        keys = np.log(GENRE_WEIGHTS)[None, :] + keys
    return np.argsort(-keys, axis=1)[:, :3]


def prefixed_ids(prefix: str, idx: pl.Expr) -> pl.Expr:
    """Ids such as T000042 (titles), M000007 (members), U... (titles that do not exist)."""
    return pl.concat_str([pl.lit(prefix), idx.cast(pl.String).str.zfill(6)])
