"""Matching the titles a generated answer names back to the catalog."""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass

import polars as pl

_ARTICLES = frozenset({"the", "a", "an"})
_TOKEN_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|&")
_YEAR_AFTER_RE = re.compile(r"[\s*_\"'“”]*[(\[]\s*((?:18|19|20)\d{2})\s*[)\]]")
_LIST_MARKER_RE = re.compile(r"^[ \t]*(?:\d{1,3}[ \t]*[.):\]-]|[-*•·])[ \t]+", re.MULTILINE)
_TRAILING_ARTICLE_RE = re.compile(r"^(.*\S)\s*,\s*(the|a|an)\s*$", re.IGNORECASE)


def _fold(token: str) -> str:
    """Casefolded, accent-free, apostrophe-free form of one word."""
    if token == "&":
        return "and"
    decomposed = unicodedata.normalize("NFKD", token.replace("'", "").replace("’", ""))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _title_words(title: str) -> tuple[str, ...]:
    """Folded words of a title, articles kept; "Matrix, The" (MovieLens style) reads "the matrix"."""
    text = unicodedata.normalize("NFC", title).strip()
    moved = _TRAILING_ARTICLE_RE.match(text)
    if moved:
        text = f"{moved.group(2)} {moved.group(1)}"
    return tuple(w for w in (_fold(m.group()) for m in _TOKEN_RE.finditer(text)) if w)


def normalize_title(title: str) -> tuple[str, ...]:
    """Match key of a title: NFC, casefold, accents/punctuation/articles dropped.

    ``"The Matrix"``, ``"Matrix, The"`` and ``"the matrix!"`` all give ``("matrix",)``.
    """
    return tuple(w for w in _title_words(title) if w not in _ARTICLES)


@dataclass(frozen=True)
class TitleMatch:
    """One catalog title found in a text; ``how`` is list | year | free."""

    title_id: str
    start: int  # character offsets in the NFC-normalized text
    end: int
    how: str
    year: int | None  # the year written after the title, if any


class TitleMatcher:
    """The catalog indexed once for matching titles in generated text.

    A match is a run of words equal to a catalog title's normalized key (longest run
    wins). It counts when it starts a numbered/bulleted list item (``how="list"``), is
    followed by a year in parentheses (``"year"``), or has at least ``min_free_words``
    words (``"free"``): one-word titles like "Up" are taken only where the text is
    clearly naming a title. Among titles sharing a key, the one with the written year
    wins, then the one whose articles match the text ("The Velvet Painter" vs "Velvet
    Painter"), then the closest year, then catalog order (pass the catalog sorted by
    popularity to prefer popular titles).
    """

    def __init__(self, catalog: pl.DataFrame, *, min_free_words: int = 2) -> None:
        for name in ("title_id", "title"):
            if name not in catalog.columns:
                raise ValueError(f"catalog needs a {name!r} column (raw.catalog); it has {catalog.columns}")
        years = catalog["year"].to_list() if "year" in catalog.columns else [None] * catalog.height
        self.min_free_words = min_free_words
        self._by_key: dict[tuple[str, ...], list[tuple[str, int | None, tuple[str, ...]]]] = {}
        self._prefixes: set[tuple[str, ...]] = set()
        self._display: dict[str, str] = {}
        self.unindexed: list[str] = []  # title_ids whose title has no matchable word
        for title_id, title, year in zip(catalog["title_id"].to_list(), catalog["title"].to_list(), years, strict=True):
            if title_id is None or title is None or title_id in self._display:
                continue
            year = int(year) if year is not None else None
            shown = " ".join(title.split())  # as the conversation builder writes it
            self._display[title_id] = f"{shown} ({year})" if year is not None else shown
            full = _title_words(title)
            key = tuple(w for w in full if w not in _ARTICLES)
            if not key:
                self.unindexed.append(title_id)
                continue
            self._by_key.setdefault(key, []).append((title_id, year, full))
            self._prefixes.update(key[:k] for k in range(1, len(key) + 1))

    def __len__(self) -> int:
        return len(self._display)

    @property
    def title_ids(self) -> tuple[str, ...]:
        """Every catalog title id, in catalog order."""
        return tuple(self._display)

    def display(self, title_id: str) -> str:
        """``Title (Year)`` as the catalog has it (the id itself when unknown)."""
        return self._display.get(title_id, title_id)

    def _choose(self, key: tuple[str, ...], year: int | None, written: tuple[str, ...]) -> str:
        candidates = self._by_key[key]
        if len(candidates) == 1:
            return candidates[0][0]

        def rank(candidate: tuple[str, int | None, tuple[str, ...]]) -> tuple[bool, bool, int]:
            _, cand_year, full = candidate
            distance = abs(cand_year - year) if year is not None and cand_year is not None else 10_000
            return (year is None or cand_year != year, full != written, distance)

        return min(candidates, key=rank)[0]  # min keeps catalog order among equals

    def find(self, text: str) -> list[TitleMatch]:
        """Every accepted title occurrence in ``text``, in text order."""
        text = unicodedata.normalize("NFC", text)
        marker_spans = [(m.start(), m.end()) for m in _LIST_MARKER_RE.finditer(text)]
        item_starts = [end for _, end in marker_spans]
        raw: list[tuple[str, int, int]] = []  # every folded word, articles included
        words: list[tuple[str, int, int]] = []  # the words keys are made of
        raw_index: list[int] = []  # position of each of ``words`` in ``raw``
        for m in _TOKEN_RE.finditer(text):
            w = _fold(m.group())
            if not w:
                continue
            k = bisect.bisect_right(item_starts, m.start()) - 1
            if k >= 0 and marker_spans[k][0] <= m.start() < marker_spans[k][1]:
                continue  # the "1." of a list marker is not part of a title
            raw.append((w, m.start(), m.end()))
            if w not in _ARTICLES:
                words.append((w, m.start(), m.end()))
                raw_index.append(len(raw) - 1)
        # First word of each list item: the first word after its marker, on the same line.
        item_first: set[int] = set()
        starts = [s for _, s, _ in words]
        for pos in item_starts:
            j = bisect.bisect_left(starts, pos)
            if j < len(words) and "\n" not in text[pos : words[j][1]]:
                item_first.add(j)
        found: list[TitleMatch] = []
        i = 0
        while i < len(words):
            best = None
            j = i
            key: tuple[str, ...] = ()
            while j < len(words):
                key = (*key, words[j][0])
                if key not in self._prefixes:
                    break
                if key in self._by_key:
                    best = (j, key)
                j += 1
            if best is None:
                i += 1
                continue
            last, key = best
            end = words[last][2]
            after = _YEAR_AFTER_RE.match(text, end)
            year = int(after.group(1)) if after else None
            if i in item_first:
                how = "list"
            elif year is not None:
                how = "year"
            elif len(key) >= self.min_free_words:
                how = "free"
            else:
                i += 1
                continue
            lo, hi = raw_index[i], raw_index[last]
            if lo > 0 and raw[lo - 1][0] in _ARTICLES and not text[raw[lo - 1][2] : raw[lo][1]].strip():
                lo -= 1  # the article written right before the title ("The Velvet Painter")
            written = tuple(w for w, _, _ in raw[lo : hi + 1])
            found.append(TitleMatch(self._choose(key, year, written), words[i][1], end, how, year))
            stop = after.end() if after else end
            i = last + 1
            while i < len(words) and words[i][1] < stop:
                i += 1
        return found

    def match(self, text: str) -> list[str]:
        """Recommended title ids in ``text``: list items and ``Title (Year)`` mentions first, in order,
        then titles named in free text; unknown titles skipped, duplicates dropped (first kept)."""
        found = self.find(text)
        ordered = [m for m in found if m.how != "free"] + [m for m in found if m.how == "free"]
        return list(dict.fromkeys(m.title_id for m in ordered))


def match_titles(text: str, catalog: TitleMatcher | pl.DataFrame) -> list[str]:
    """Title ids recommended in ``text`` (see ``TitleMatcher.match``); build the matcher once for many texts."""
    matcher = catalog if isinstance(catalog, TitleMatcher) else TitleMatcher(catalog)
    return matcher.match(text)
