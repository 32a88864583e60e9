"""Title matching: list items, years, articles, free-text mentions, Unicode, and speed on a large catalog."""

from __future__ import annotations

import polars as pl
from support.evaluation_fixtures import CATALOG, MATCHER

from evaluation import TitleMatcher, match_titles, normalize_title


def test_numbered_list_with_articles_punctuation_and_years() -> None:
    text = (
        "Here are a few picks for you:\n1. The Silent Harbor (1995)\n2) night train!\n3. **Moonfall** (2022) - sci-fi"
    )
    assert MATCHER.match(text) == ["T1", "T4", "T6"]
    assert (
        normalize_title("The Matrix")
        == normalize_title("Matrix, The")
        == normalize_title("the  MATRIX!")
        == ("matrix",)
    )


def test_year_disambiguates_same_named_titles() -> None:
    assert MATCHER.match("1. The Silent Harbor (2010)") == ["T2"]
    assert MATCHER.match("1. The Silent Harbor (1995)") == ["T1"]
    assert MATCHER.match("Try Silent Harbor (2009).") == ["T2"]  # closest year when none is equal
    assert MATCHER.match("1. The Silent Harbor") == ["T1"]  # no year: catalog order


def test_articles_tell_apart_titles_that_differ_only_by_them() -> None:
    matcher = TitleMatcher(
        pl.DataFrame({"title_id": ["A", "B"], "title": ["The Velvet Painter", "Velvet Painter"], "year": [1991, 2023]})
    )
    assert matcher.match("1. Velvet Painter") == ["B"]
    assert matcher.match("1. The Velvet Painter") == ["A"]
    assert matcher.match("Watch the velvet painter next") == ["A"]
    assert matcher.match("1. Velvet Painter (1991)") == ["A"]  # a written year outweighs the article


def test_unknown_titles_are_skipped_and_duplicates_dropped() -> None:
    text = "1. The Lost City (2020)\n2. Up (2009)\n3. Night Train (2001)\n4. Up (2009)\n5. Nowhere Land"
    assert MATCHER.match(text) == ["T3", "T4"]
    assert MATCHER.match("") == [] and MATCHER.match("I have no idea, sorry.") == []


def test_free_text_mentions_and_the_one_word_rule() -> None:
    text = "You liked it, so try Quiet Rivers or maybe Night Train; if you want something up-beat, Up (2009)."
    assert MATCHER.match(text) == ["T3", "T5", "T4"]  # Title (Year) first, then free-text mentions in order
    assert MATCHER.match("Things are looking up today") == []  # a one-word title needs a list item or a year
    found = MATCHER.find("Quiet Rivers (2004) and then Night Train")
    assert [(m.title_id, m.how, m.year) for m in found] == [("T5", "year", 2004), ("T4", "free", None)]


def test_unicode_apostrophes_ampersands_and_movielens_style_titles() -> None:
    text = "1. Amelie (2001)\n2. Schindler’s List\n3. The Matrix (1999)\n4. Fast and Furious (2009)"
    assert match_titles(text, CATALOG) == ["T8", "T9", "T7", "T10"]
    assert MATCHER.match("1. AMÉLIE") == ["T8"]
    assert MATCHER.display("T7") == "Matrix, The (1999)"


def test_matching_is_fast_on_a_large_catalog() -> None:
    n = 50_000
    big = pl.DataFrame(
        {
            "title_id": [f"X{i}" for i in range(n)],
            "title": [f"Harbor of Kestrel {i}" for i in range(n)],
            "year": [2000] * n,
        }
    )
    import time

    start = time.perf_counter()
    matcher = TitleMatcher(big)
    texts = ["Here you go:\n1. Harbor of Kestrel 17 (2000)\n2. Harbor of Kestrel 4242\n3. nothing"] * 500
    results = [matcher.match(t) for t in texts]
    assert results[0] == ["X17", "X4242"]
    assert time.perf_counter() - start < 10
