"""Grounding and determinism of the generated conversations.

The checks read the generated text the way an evaluator would (numbered title lists,
``Title (Year)``) and compare it with the catalog and the member's actual events.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from core.conversation_builder import CANDIDATE_SCHEMA, WATCH_EVENTS, BuilderConfig, build_conversations
from core.conversation_builder.templating import indefinite
from core.curation import CurationConfig, curate
from core.ingest import CatalogMapping, ingest_catalog
from core.schemas import CATALOG_SCHEMA, INTERACTIONS_SCHEMA

DAY = date(2024, 3, 1)
GENRES = ["Crime", "Drama", "Comedy", "Thriller", "Sci-Fi", "Romance"]
WORDS = ["Night", "River", "Shadow", "Summer", "Glass", "Winter", "Harbor", "Velvet", "Amélie"]


def make_catalog(n: int = 120, seed: int = 1) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(WORDS, rng.randint(1, 2))
        rows.append(
            {
                "title_id": f"T{i:04d}",
                "title": f"{' '.join(words)} {i}",  # unique, so a name maps back to one title
                "kind": "movie" if rng.random() < 0.6 else "series",
                "genres": [] if i % 17 == 5 else rng.sample(GENRES, rng.randint(1, 3)),
                "year": None if i % 13 == 4 else rng.randint(1960, 2023),
                "synopsis": None if i % 11 == 3 else f"The story of {' and '.join(words).lower()}, part {i}.",
                "language": "en",
                "maturity": "PG",
            }
        )
    return pl.DataFrame(rows, schema=CATALOG_SCHEMA)


def make_interactions(
    n_events: int = 2500, n_members: int = 200, n_titles: int = 120, seed: int = 2, day: date = DAY
) -> pl.DataFrame:
    """Zipf-like titles, heavy-tailed members, events spread over the day."""
    rng = random.Random(seed)
    t_weights = [1 / (r + 1) for r in range(n_titles)]
    m_weights = [1 / (r + 1) ** 0.8 for r in range(n_members)]
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    titles = rng.choices(range(n_titles), t_weights, k=n_events)
    members = rng.choices(range(n_members), m_weights, k=n_events)
    events = rng.choices(["play", "complete", "rate", "search"], [0.55, 0.2, 0.1, 0.15], k=n_events)
    return pl.DataFrame(
        {
            "member_id": [f"M{m:04d}" for m in members],
            "title_id": [f"T{t:04d}" for t in titles],
            "ts": [start + timedelta(seconds=rng.randrange(86400)) for _ in range(n_events)],
            "event": events,
            "value": [None] * n_events,
            "day": [day] * n_events,
        },
        schema=INTERACTIONS_SCHEMA,
    )


@pytest.fixture(scope="module")
def catalog() -> pl.DataFrame:
    return make_catalog()


@pytest.fixture(scope="module")
def interactions() -> pl.DataFrame:
    return make_interactions()


@pytest.fixture(scope="module")
def built(catalog: pl.DataFrame, interactions: pl.DataFrame) -> pl.DataFrame:
    return build_conversations(catalog, interactions, DAY, BuilderConfig())


@pytest.fixture(scope="module")
def facts(catalog: pl.DataFrame) -> dict[str, dict]:
    out = {}
    for r in catalog.iter_rows(named=True):
        r["display"] = r["title"] if r["year"] is None else f"{r['title']} ({r['year']})"
        out[r["title_id"]] = r
    return out


def by_display(facts: dict[str, dict]) -> dict[str, str]:
    return {f["display"]: tid for tid, f in facts.items()}


def numbered(text: str) -> list[str]:
    """Titles of a "1. Title (Year)" list, as an evaluator parses them."""
    return re.findall(r"^\d+\. (.+)$", text, flags=re.MULTILINE)


def turns(row: dict) -> list[dict]:
    """Messages without the optional system turn."""
    msgs = row["messages"]
    return msgs[1:] if msgs and msgs[0]["role"] == "system" else msgs


def play_sequences(interactions: pl.DataFrame) -> dict[str, list[str]]:
    """Each member's distinct plays of the day in ts order."""
    seqs: dict[str, list[str]] = {}
    plays = interactions.filter(pl.col("event").is_in(WATCH_EVENTS)).sort(["member_id", "ts", "title_id"])
    for m, t in plays.select("member_id", "title_id").iter_rows():
        seq = seqs.setdefault(m, [])
        if t not in seq:
            seq.append(t)
    return seqs


# ------------------------------------------------------------------------- shape


def test_output_schema_and_every_kind_present(built: pl.DataFrame) -> None:
    assert dict(built.schema) == CANDIDATE_SCHEMA
    counts = dict(built.group_by("kind").len().iter_rows())
    assert set(counts) == {"recommendation", "title_qa", "search"}
    assert all(v > 10 for v in counts.values()), counts
    assert built["conversation_id"].is_unique().all()
    assert (built["day"] == DAY).all()
    assert built.filter(pl.col("kind") == "title_qa")["member_id"].is_null().all()
    assert built.filter(pl.col("kind") != "title_qa")["member_id"].is_not_null().all()


def test_turn_structure_one_to_four_exchanges_and_optional_system(built: pl.DataFrame) -> None:
    n_exchanges = set()
    with_system = 0
    for row in built.iter_rows(named=True):
        roles = [m["role"] for m in row["messages"]]
        if roles[0] == "system":
            with_system += 1
            assert row["messages"][0]["content"] == BuilderConfig().system_prompt
            roles = roles[1:]
        assert roles == ["user", "assistant"] * (len(roles) // 2), roles
        assert 1 <= len(roles) // 2 <= 4
        n_exchanges.add(len(roles) // 2)
        assert all(m["content"].strip() for m in row["messages"])
    assert n_exchanges == {1, 2, 3, 4}
    assert 0 < with_system < built.height  # optional: present on some rows only


def test_no_system_turn_when_prompt_is_empty_and_max_exchanges_respected(
    catalog: pl.DataFrame, interactions: pl.DataFrame
) -> None:
    out = build_conversations(catalog, interactions, DAY, BuilderConfig(system_prompt="", max_exchanges=2))
    roles = out["messages"].list.eval(pl.element().struct.field("role"))
    assert not roles.list.contains("system").any()
    assert out["messages"].list.len().max() <= 4


def test_builder_output_passes_curation_rules(built: pl.DataFrame) -> None:
    """Generated rows never trip a structural rule; only exact duplicates may be dropped."""
    _, quarantine, stats = curate(built, DAY, CurationConfig())
    assert set(quarantine["reason"].unique().to_list()) <= {"duplicate"}
    assert stats["rows_in"] == stats["rows_out"] + stats["quarantined"]


# ------------------------------------------------------------------- grounding


def assert_describes(text: str, f: dict) -> None:
    """A description names the title and says what the catalog has: its synopsis, else kind, genres, year."""
    assert f["display"] in text
    if f["synopsis"]:
        assert f["synopsis"] in text
        return
    assert "synopsis" not in text
    assert f"a {f['kind']}" in text
    assert ", ".join(f["genres"]) in text
    assert f["year"] is None or str(f["year"]) in text


def test_recommendation_first_title_is_the_members_actual_next_play(
    built: pl.DataFrame, interactions: pl.DataFrame, facts: dict[str, dict]
) -> None:
    cfg = BuilderConfig()
    seqs = play_sequences(interactions)
    name_to_id = by_display(facts)
    recs = built.filter(pl.col("kind") == "recommendation")
    # one per member with at least two distinct plays
    assert sorted(recs["member_id"].to_list()) == sorted(m for m, s in seqs.items() if len(s) >= 2)
    for row in recs.iter_rows(named=True):
        seq = seqs[row["member_id"]]
        t = turns(row)
        names = numbered(t[1]["content"])
        assert names and all(n in name_to_id for n in names), names  # exact catalog names
        target = name_to_id[names[0]]
        i = seq.index(target)
        assert i >= 1
        history = seq[max(0, i - cfg.history_size) : i]
        assert ", ".join(facts[h]["display"] for h in history) in t[0]["content"]
        # the member's later plays come next, in order; nothing from the history is offered
        later = seq[i + 1 :]
        offered = [name_to_id[n] for n in names]
        assert offered[1 : 1 + len(later)] == later[: len(offered) - 1]
        assert not set(offered) & set(history)
        f = facts[target]
        if len(t) >= 4:  # "tell me more" -> description from the catalog
            assert_describes(t[3]["content"], f)
        if len(t) >= 6:  # year or kind, whichever the catalog has
            q, a = t[4]["content"], t[5]["content"]
            if "come out" in q:
                assert f["year"] is not None and str(f["year"]) in a
            else:
                assert f"is a {f['kind']}" in a
        if len(t) == 8:  # more like it: new titles, still grounded
            more = [name_to_id[n] for n in numbered(t[7]["content"])]
            assert more and not set(more) & (set(offered) | set(history))
            everything = offered + more  # target, then later plays in order, then genre picks
            assert everything[1 : 1 + len(later)] == later[: len(everything) - 1]


def test_recommendation_fallback_titles_share_the_target_genre(
    built: pl.DataFrame, interactions: pl.DataFrame, facts: dict[str, dict]
) -> None:
    seqs = play_sequences(interactions)
    name_to_id = by_display(facts)
    checked = 0
    for row in built.filter(pl.col("kind") == "recommendation").iter_rows(named=True):
        t = turns(row)
        names = [name_to_id[n] for n in numbered(t[1]["content"])]
        if len(t) == 8:
            names += [name_to_id[n] for n in numbered(t[7]["content"])]
        seq = seqs[row["member_id"]]
        target = names[0]
        genres = facts[target]["genres"]
        for tid in names[1:]:
            if tid in seq:
                continue  # a later play of the member
            checked += 1
            if genres:
                assert genres[0] in facts[tid]["genres"]
    assert checked > 0


def qa_kind(question: str) -> str:
    q = question.lower()
    if "genre" in q:
        return "genre"
    if "released" in q or "come out" in q:
        return "year"
    if " or a " in q:
        return "kind"
    return "synopsis"


def test_title_qa_answers_match_the_catalog(
    built: pl.DataFrame, interactions: pl.DataFrame, facts: dict[str, dict]
) -> None:
    qa = built.filter(pl.col("kind") == "title_qa")
    seen_types = set()
    for row in qa.iter_rows(named=True):
        t = turns(row)
        first_q = t[0]["content"]
        matches = [f for f in facts.values() if re.search(rf"\b{re.escape(f['title'])}\b", first_q)]
        f = max(matches, key=lambda x: len(x["title"]))
        asked = [qa_kind(t[j]["content"]) for j in range(0, len(t), 2)]
        assert len(set(asked)) == len(asked)  # a question is not asked twice
        for j, kind in enumerate(asked):
            a = t[2 * j + 1]["content"]
            seen_types.add(kind)
            # only what the catalog knows is asked
            if kind == "genre":
                assert f["genres"] and ", ".join(f["genres"]) in a
            elif kind == "year":
                assert f["year"] is not None and str(f["year"]) in a
            elif kind == "kind":
                assert f["kind"] in a
            else:
                assert f["synopsis"] and f["synopsis"] in a
    assert seen_types == {"genre", "year", "kind", "synopsis"}


def test_title_qa_is_one_per_title_seen_today(built: pl.DataFrame, interactions: pl.DataFrame) -> None:
    qa = built.filter(pl.col("kind") == "title_qa")
    assert qa.height == interactions["title_id"].n_unique()


def query_matches(query: str, f: dict) -> bool:
    """Does title ``f`` satisfy the filters the user's search query states?"""
    kinds = {"movies": "movie", "series": "series"}
    decade = re.search(r"the (\d{4})s", query)
    word = re.search(r'"(.+?)"', query)
    if word:
        return word.group(1) in re.findall(r"\w+", f["title"].lower())
    ok = True
    if decade:
        ok &= f["year"] is not None and f["year"] // 10 * 10 == int(decade.group(1))
    kind = re.search(r"\b(movies|series)\b", query)
    if kind:
        ok &= f["kind"] == kinds[kind.group(1)]
    genre = re.search(
        r"^(?:Show me some|Any good|I'm looking for|Any|Find me|What) (.+?) (?:movies|series|titles from|from|do you)",
        query,
    )
    if genre and genre.group(1) not in ("movies", "series", "good"):
        ok &= genre.group(1) in [g.lower() for g in f["genres"]]
    return ok


def test_search_results_contain_the_found_title_and_match_the_query(
    built: pl.DataFrame, interactions: pl.DataFrame, facts: dict[str, dict]
) -> None:
    cfg = BuilderConfig()
    name_to_id = by_display(facts)
    searched: dict[str, set[str]] = {}
    for m, t in interactions.filter(pl.col("event") == "search").select("member_id", "title_id").iter_rows():
        searched.setdefault(m, set()).add(t)
    plays = interactions.filter(pl.col("event").is_in(WATCH_EVENTS)).group_by("title_id").len()
    pop = dict(plays.iter_rows())
    rows = built.filter(pl.col("kind") == "search")
    assert (
        rows.height == interactions.filter(pl.col("event") == "search").unique(["member_id", "ts", "title_id"]).height
    )
    for row in rows.iter_rows(named=True):
        t = turns(row)
        results = [name_to_id[n] for n in numbered(t[1]["content"])]
        assert 1 <= len(results) <= cfg.search_results
        assert len(set(results)) == len(results)
        assert set(results) & searched[row["member_id"]]
        for tid in results:
            assert query_matches(t[0]["content"], facts[tid]), (t[0]["content"], facts[tid])
        counts = [pop.get(tid, 0) for tid in results]
        assert counts == sorted(counts, reverse=True)  # most popular first
        # ... and they are the top of all matching titles (bar the found one, always listed)
        others = [pop.get(tid, 0) for tid in results if tid not in searched[row["member_id"]]]
        if others:
            left_out = [
                pop.get(tid, 0) for tid, f in facts.items() if tid not in results and query_matches(t[0]["content"], f)
            ]
            assert max(left_out, default=0) <= min(others)


def test_search_found_title_exactly(facts: dict[str, dict], catalog: pl.DataFrame) -> None:
    """One search per member: the found title is in the list and the follow-up is about it."""
    start = datetime(2024, 3, 1, 9, tzinfo=UTC)
    ids = sorted(facts)[:60]
    inter = pl.DataFrame(
        {
            "member_id": [f"S{i}" for i in range(len(ids))],
            "title_id": ids,
            "ts": [start + timedelta(minutes=i) for i in range(len(ids))],
            "event": ["search"] * len(ids),
            "value": [None] * len(ids),
            "day": [DAY] * len(ids),
        },
        schema=INTERACTIONS_SCHEMA,
    )
    out = build_conversations(catalog, inter, DAY, BuilderConfig()).filter(pl.col("kind") == "search")
    assert out.height == len(ids)
    followed = 0
    for row in out.iter_rows(named=True):
        found = facts[ids[int(row["member_id"][1:])]]
        t = turns(row)
        assert found["display"] in numbered(t[1]["content"])
        assert query_matches(t[0]["content"], found)
        if len(t) >= 4:
            followed += 1
            assert found["title"] in t[2]["content"] and found["display"] in t[3]["content"]
    assert followed > 0


# ------------------------------------------------------------- determinism, ids


def test_deterministic_and_independent_of_input_row_order(
    catalog: pl.DataFrame, interactions: pl.DataFrame, built: pl.DataFrame
) -> None:
    again = build_conversations(
        catalog.sample(fraction=1.0, shuffle=True, seed=3),
        interactions.sample(fraction=1.0, shuffle=True, seed=4),
        DAY,
        BuilderConfig(),
    )
    assert again.equals(built)


def test_phrasing_varies_across_rows(built: pl.DataFrame) -> None:
    for kind in ("recommendation", "title_qa", "search"):
        firsts = built.filter(pl.col("kind") == kind).select(
            pl.col("messages").list.eval(pl.element().struct.field("content")).list.get(-1)
        )
        # strip the grounded values: the remaining template text varies
        templates = {re.sub(r"[A-Z][^\n]*\d", "X", s.split("\n")[0]) for s in firsts.to_series().to_list()}
        assert len(templates) >= 2, kind


def test_seed_changes_phrasing_not_grounding_rules(catalog: pl.DataFrame, interactions: pl.DataFrame) -> None:
    a = build_conversations(catalog, interactions, DAY, BuilderConfig(seed=1))
    b = build_conversations(catalog, interactions, DAY, BuilderConfig(seed=2))
    assert a.height == b.height
    assert not a["messages"].equals(b["messages"])


def test_title_qa_identical_content_gets_identical_id_across_days(catalog: pl.DataFrame) -> None:
    rows = []
    for d in range(6):
        day = DAY + timedelta(days=d)
        rows.append(build_conversations(catalog, make_interactions(400, 40, seed=d, day=day), day, BuilderConfig()))
    qa = pl.concat(rows).filter(pl.col("kind") == "title_qa")
    per_id = qa.group_by("conversation_id").agg(pl.col("messages").n_unique().alias("n"), pl.len())
    assert (per_id["n"] == 1).all()
    assert (per_id["len"] > 1).any()  # the same question set did recur on another day
    per_content = qa.group_by("messages").agg(pl.col("conversation_id").n_unique().alias("n"))
    assert (per_content["n"] == 1).all()


def test_ids_stable_across_reruns_and_other_days_traffic(
    catalog: pl.DataFrame, interactions: pl.DataFrame, built: pl.DataFrame
) -> None:
    """Adding unrelated events must not move an existing search conversation's id."""
    extra = make_interactions(50, 5, seed=99).with_columns(pl.format("X{}", pl.col("member_id")).alias("member_id"))
    more = build_conversations(catalog, pl.concat([interactions, extra]), DAY, BuilderConfig())
    old = built.filter(pl.col("kind") == "search").select("conversation_id", "member_id")
    new = more.filter(pl.col("kind") == "search").select("conversation_id", "member_id")
    assert old.join(new, on="conversation_id", how="anti").height == 0


# ------------------------------------------------------------------- edge cases


def test_edge_cases_do_not_crash(catalog: pl.DataFrame) -> None:
    empty = pl.DataFrame(schema=INTERACTIONS_SCHEMA)
    out = build_conversations(catalog, empty, DAY, BuilderConfig())
    assert out.height == 0 and dict(out.schema) == CANDIDATE_SCHEMA

    start = datetime(2024, 3, 1, 8, tzinfo=UTC)
    inter = pl.DataFrame(
        {
            "member_id": ["A", "A", "B", "C", None, "D"],
            "title_id": ["T0001", "UNKNOWN", "T0002", "T0003", "T0004", "T0005"],
            "ts": [start + timedelta(minutes=i) for i in range(6)],
            "event": ["play", "play", "play", "play", "play", "play"],
            "value": [None] * 6,
            "day": [DAY, DAY, DAY, DAY, DAY, DAY - timedelta(days=1)],
        },
        schema=INTERACTIONS_SCHEMA,
    )
    out = build_conversations(catalog, inter, DAY, BuilderConfig())
    # nobody has two known plays today: no recommendation; unknown/other-day titles ignored
    assert out.filter(pl.col("kind") == "recommendation").height == 0
    assert out.filter(pl.col("kind") == "title_qa").height == 3  # T0001, T0002, T0003


def test_long_synopsis_is_cut_at_a_word_boundary() -> None:
    cat = pl.DataFrame(
        [
            {"title_id": "A", "title": "Long One", "kind": "movie", "genres": ["Drama"], "year": 2000,
             "synopsis": "word " * 400, "language": "en", "maturity": "PG"},
            {"title_id": "B", "title": "Other", "kind": "series", "genres": ["Drama"], "year": 2001,
             "synopsis": "Short.", "language": "en", "maturity": "PG"},
        ],
        schema=CATALOG_SCHEMA,
    )  # fmt: skip
    start = datetime(2024, 3, 1, 8, tzinfo=UTC)
    inter = pl.DataFrame(
        {"member_id": ["M"] * 2, "title_id": ["B", "A"], "ts": [start, start + timedelta(hours=1)],
         "event": ["play", "play"], "value": [None, None], "day": [DAY, DAY]},
        schema=INTERACTIONS_SCHEMA,
    )  # fmt: skip
    out = build_conversations(cat, inter, DAY, BuilderConfig(max_synopsis_chars=100))
    texts = [m["content"] for msgs in out["messages"].to_list() for m in msgs if "word word" in m["content"]]
    assert texts
    for text in texts:
        body = text[text.index("word") :]
        assert len(body) <= 100 and body.endswith("word…")


# ------------------------------------------------------- sparse catalogs, grammar

# movies.csv as MovieLens writes it: the year in the title, "|"-separated genres with the format tag IMAX,
# no synopsis and no kind column.
ML_MOVIES = [
    ("1", "Toy Story (1995)", "Adventure|Animation|Children|Comedy|Fantasy"),
    ("2", "Good, the Bad and the Ugly, The (Buono, il brutto, il cattivo, Il) (1966)", "Action|Adventure|Western"),
    ("3", "Avatar (2009)", "Action|Adventure|Sci-Fi|IMAX"),
    ("4", "Untitled Project", "(no genres listed)"),
    ("5", "Interstellar (2014)", "Sci-Fi|IMAX"),
    ("6", "Amelie (Fabuleux destin d'Amélie Poulain, Le) (2001)", "Comedy|Romance"),
    ("7", "Heat (1995)", "Action|Crime|Thriller"),
    ("8", "Sense and Sensibility (1995)", "Drama|Romance"),
    ("9", "Misérables, Les (1995)", "Drama|War"),
    ("10", "Matrix, The (1999)", "Action|Sci-Fi|Thriller"),
    ("11", "Nameless Reel", "Documentary"),
    ("12", "Eternal Sunshine of the Spotless Mind (2004)", "Drama|Romance|Sci-Fi"),
]
# What a turn that carries no information says: none of it may be generated.
NO_INFO = re.compile(r"synopsis|summar|has no |lists no |doesn't list|don't have|no genres", re.IGNORECASE)


def movielens_catalog() -> pl.DataFrame:
    raw = pl.DataFrame(ML_MOVIES, schema=["movieId", "title", "genres"], orient="row")
    mapping = CatalogMapping(title_id="movieId", title="title", genres="genres", kind=None, year=None, synopsis=None)
    catalog, _ = ingest_catalog(raw, mapping)
    return catalog


def movielens_ratings(n_members: int = 80, seed: int = 5) -> pl.DataFrame:
    """Each member rates a few movies over the day (rating-only, like ratings.csv); some also search."""
    rng = random.Random(seed)
    ids = [m[0] for m in ML_MOVIES]
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    rows = []
    for m in range(n_members):
        for k, tid in enumerate(rng.sample(ids, rng.randint(2, 6))):
            rows.append((f"U{m}", tid, start + timedelta(minutes=10 * m + k), "rate", 4.0, DAY))
        if m % 3 == 0:
            rows.append((f"U{m}", rng.choice(ids), start + timedelta(hours=20, minutes=m), "search", None, DAY))
    return pl.DataFrame(rows, schema=INTERACTIONS_SCHEMA, orient="row")


def contents(out: pl.DataFrame, role: str | None = None) -> list[str]:
    return [m["content"] for msgs in out["messages"].to_list() for m in msgs if role in (None, m["role"])]


@pytest.fixture(scope="module")
def sparse_built() -> pl.DataFrame:
    return build_conversations(movielens_catalog(), movielens_ratings(), DAY, BuilderConfig(seed=3))


def test_sparse_catalog_conversations_carry_no_empty_answers(sparse_built: pl.DataFrame) -> None:
    """No turn says the catalog lacks a synopsis (or genres, or a year): such questions are not asked."""
    counts = dict(sparse_built.group_by("kind").len().iter_rows())
    assert set(counts) == {"recommendation", "title_qa", "search"}
    assert [t for t in contents(sparse_built) if NO_INFO.search(t)] == []
    assert counts["title_qa"] == len(ML_MOVIES)  # each has a kind (movies by default), so each has a question
    for row in sparse_built.iter_rows(named=True):
        roles = [m["role"] for m in turns(row)]
        assert roles and roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(m["content"].strip() for m in row["messages"])


def test_sparse_catalog_follow_ups_describe_from_genres_year_and_kind(sparse_built: pl.DataFrame) -> None:
    pairs = [
        (t[j]["content"], t[j + 1]["content"])
        for t in map(turns, sparse_built.iter_rows(named=True))
        for j in range(0, len(t), 2)
    ]
    asks = re.compile(r"Tell me more|about\?")  # the describe follow-up of recommendations and searches
    described = [a for q, a in pairs if asks.search(q) and a.startswith("Toy Story (1995)")]
    assert described
    for text in described:  # kind, year and genres say what it is, instead of a missing synopsis
        assert "a movie" in text and re.search(r"(released in|from) 1995", text), text
        assert "Adventure, Animation, Children, Comedy, Fantasy" in text, text


def test_sparse_catalog_output_is_deterministic(sparse_built: pl.DataFrame) -> None:
    again = build_conversations(
        movielens_catalog().sample(fraction=1.0, shuffle=True, seed=1),
        movielens_ratings().sample(fraction=1.0, shuffle=True, seed=2),
        DAY,
        BuilderConfig(seed=3),
    )
    assert again.equals(sparse_built)


def test_imax_is_not_a_genre_and_titles_read_naturally(sparse_built: pl.DataFrame) -> None:
    texts = contents(sparse_built)
    assert not any("IMAX" in t for t in texts)
    assert any("The Good, the Bad and the Ugly (Il Buono, il brutto, il cattivo) (1966)" in t for t in texts)
    assert not any("Ugly, The" in t for t in texts)


def test_indefinite_article_before_vowel_sounds(sparse_built: pl.DataFrame) -> None:
    texts = contents(sparse_built, "assistant")
    assert any("is an Adventure" in t or "is an Action" in t for t in texts)
    assert [t for t in texts if re.search(r"\ba [AEIOaeio]", t)] == []
    assert [t for t in texts if re.search(r"\ban [^aeiouAEIOU]", t)] == []


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("Adventure, Romance movie", "an Adventure, Romance movie"),
        ("Drama movie", "a Drama movie"),
        ("Animation", "an Animation"),
        ("movie", "a movie"),
        ("series", "a series"),
        ("Horror", "a Horror"),
        ("hour", "an hour"),
        ("Honest Mistake", "an Honest Mistake"),
        ("Unique Take", "a Unique Take"),
        ("Uninvited", "an Uninvited"),
        ("European", "a European"),
        ("one-off", "a one-off"),
        ("8-part series", "an 8-part series"),
        ("1890s classic", "an 1890s classic"),
        ("1990s classic", "a 1990s classic"),
    ],
)
def test_indefinite_picks_a_or_an(phrase: str, expected: str) -> None:
    assert pl.select(indefinite(pl.lit(phrase))).item() == expected


def test_a_title_the_catalog_knows_nothing_about_gets_no_questions() -> None:
    """No kind, genres, year or synopsis: no title_qa, and no follow-up that could only say "no data"."""
    cat = pl.DataFrame(
        [
            {"title_id": "K", "title": "Known Quantity", "kind": "movie", "genres": ["Drama"], "year": 2001,
             "synopsis": None, "language": None, "maturity": None},
            {"title_id": "B", "title": "Blank Reel", "kind": None, "genres": [], "year": None,
             "synopsis": None, "language": None, "maturity": None},
        ],
        schema=CATALOG_SCHEMA,
    )  # fmt: skip
    start = datetime(2024, 3, 1, 8, tzinfo=UTC)
    rows = []
    for m in range(30):  # each watches the known title, then the blank one (always the target)
        rows += [(f"M{m}", "K", start + timedelta(minutes=m), "play", None, DAY)]
        rows += [(f"M{m}", "B", start + timedelta(minutes=m, seconds=30), "play", None, DAY)]
        rows += [(f"M{m}", "B", start + timedelta(hours=2, minutes=m), "search", None, DAY)]
    inter = pl.DataFrame(rows, schema=INTERACTIONS_SCHEMA, orient="row")
    out = build_conversations(cat, inter, DAY, BuilderConfig())
    qa = out.filter(pl.col("kind") == "title_qa")
    assert qa.height == 1 and "Known Quantity" in turns(qa.row(0, named=True))[0]["content"]
    for kind in ("recommendation", "search"):
        rows_of_kind = out.filter(pl.col("kind") == kind)
        assert rows_of_kind.height == 30
        for row in rows_of_kind.iter_rows(named=True):
            assert [m["role"] for m in turns(row)] == ["user", "assistant"], turns(row)
    assert [t for t in contents(out) if NO_INFO.search(t) or "is a title" in t] == []


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="max_exchanges"):
        BuilderConfig(max_exchanges=5)
    with pytest.raises(ValueError, match="search_results"):
        BuilderConfig(search_results=0)
