"""Behaviour preference pairs: a liked title over an abandoned or low-rated one, in the member's context."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from core.conversation_builder import ANSWER_LEADS, REQUESTS
from core.preferences import PAIR_CANDIDATE_SCHEMA, PairBuilderConfig, behaviour_pairs
from core.schemas import CATALOG_SCHEMA, INTERACTIONS_SCHEMA, conform

DAY = date(2026, 1, 1)
CFG = PairBuilderConfig()

TITLES = {
    "t1": ("Heat", 1995),
    "t2": ("Ronin", 1998),
    "t3": ("Alien", 1979),
    "t4": ("Big", 1988),
    "t5": ("Jaws", 1975),
    "t6": ("Fargo", 1996),
    "t7": ("Brazil", 1985),
    "t8": ("Tampopo", 1985),
}


def catalog() -> pl.DataFrame:
    ids = list(TITLES)
    frame = pl.DataFrame(
        {
            "title_id": ids,
            "title": [TITLES[t][0] for t in ids],
            "kind": ["movie"] * len(ids),
            "genres": [["drama"]] * len(ids),
            "year": [TITLES[t][1] for t in ids],
            "synopsis": [None] * len(ids),
            "language": ["en"] * len(ids),
            "maturity": [None] * len(ids),
        }
    )
    return conform(frame, CATALOG_SCHEMA)


def shown(title_id: str) -> str:
    title, year = TITLES[title_id]
    return f"{title} ({year})"


def events(rows: list[tuple], day: date = DAY) -> pl.DataFrame:
    """(member, title, minute of the day, event, value) rows of ``day`` as raw.interactions."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "member_id": [r[0] for r in rows],
            "title_id": [r[1] for r in rows],
            "ts": [start + timedelta(minutes=r[2]) for r in rows],
            "event": [r[3] for r in rows],
            "value": [r[4] for r in rows],
            "day": [day] * len(rows),
        },
        schema_overrides={"value": pl.Float64},
    )
    return conform(frame, INTERACTIONS_SCHEMA)


def user_turn(prompt: list[dict]) -> str:
    assert prompt[-1]["role"] == "user"
    return prompt[-1]["content"]


def named_titles(text: str) -> set[str]:
    """The catalog titles a text names, as title ids."""
    return {t for t in TITLES if shown(t) in text}


@pytest.mark.parametrize(
    "liked", [("complete", 0.95), ("rate", 4.5), ("complete", 0.9), ("rate", 4.0)], ids=lambda v: f"{v[0]}-{v[1]}"
)
@pytest.mark.parametrize(
    "negative", [("complete", 0.1), ("rate", 1.5), ("rate", 2.0)], ids=lambda v: f"neg-{v[0]}-{v[1]}"
)
def test_a_liked_and_a_negative_title_with_an_earlier_watch_give_one_pair(
    liked: tuple[str, float], negative: tuple[str, float]
) -> None:
    ev = events(
        [
            ("m1", "t1", 1, "play", None),  # the earlier positive watch: the context
            ("m1", "t2", 5, liked[0], liked[1]),
            ("m1", "t3", 10, "play", None),
            ("m1", "t3", 12, negative[0], negative[1]),
        ]
    )
    got = behaviour_pairs(catalog(), ev, DAY, CFG)
    assert got.pairs.height == 1 and got.stats["pairs"] == 1
    assert dict(got.pairs.schema) == PAIR_CANDIDATE_SCHEMA
    pair = got.pairs.row(0, named=True)
    assert pair["kind"] == "behaviour" and pair["member_id"] == "m1" and pair["day"] == DAY
    assert (pair["chosen_title_id"], pair["rejected_title_id"]) == ("t2", "t3")
    assert re.fullmatch(r"[0-9a-f]{32}", pair["pair_id"])

    request = user_turn(pair["prompt"])
    assert named_titles(request) == {"t1"}, "the prompt names the earlier watch, not the two titles compared"
    assert request in {r.format(h=shown("t1")) for r in REQUESTS}
    assert [m["role"] for m in pair["prompt"]] in (["user"], ["system", "user"])

    (chosen,), (rejected,) = pair["chosen"], pair["rejected"]
    assert chosen["role"] == rejected["role"] == "assistant"
    chosen_lead, chosen_line = chosen["content"].split("\n")
    rejected_lead, rejected_line = rejected["content"].split("\n")
    assert chosen_lead == rejected_lead and chosen_lead in ANSWER_LEADS
    assert chosen_line == f"1. {shown('t2')}" and rejected_line == f"1. {shown('t3')}"
    assert chosen["content"].replace(shown("t2"), shown("t3")) == rejected["content"]


def test_a_title_watched_without_finishing_or_rating_high_is_not_chosen() -> None:
    ev = events(
        [
            ("m1", "t1", 1, "play", None),
            ("m1", "t2", 5, "complete", 0.6),  # a watch, but not liked
            ("m1", "t4", 6, "rate", 3.0),  # a middling rating: a watch, not liked
            ("m1", "t3", 10, "complete", 0.1),
        ]
    )
    got = behaviour_pairs(catalog(), ev, DAY, CFG)
    assert got.pairs.height == 0 and got.stats["combinations"] == 0


def test_without_an_earlier_watch_there_is_no_pair() -> None:
    ev = events(
        [
            ("m1", "t2", 5, "complete", 0.95),
            ("m1", "t3", 10, "complete", 0.1),
            # m2's only other watch starts after both titles compared: no context either
            ("m2", "t2", 5, "rate", 5.0),
            ("m2", "t3", 10, "rate", 1.0),
            ("m2", "t1", 30, "play", None),
            # m3's only earlier title was itself abandoned: not a positive watch
            ("m3", "t4", 1, "complete", 0.05),
            ("m3", "t2", 5, "complete", 1.0),
            ("m3", "t3", 10, "rate", 0.5),
        ]
    )
    got = behaviour_pairs(catalog(), ev, DAY, CFG)
    assert got.pairs.height == 0
    assert got.stats["combinations"] == 4  # m1 1, m2 1, m3 2 (t4 and t3 are both negative)
    assert got.stats["no_context"] == 4 and got.stats["pairs"] == 0


def test_max_pairs_per_member_caps_a_very_active_member() -> None:
    rows = [("m1", "t1", 0, "play", None)]
    rows += [("m1", t, 10 + i, "complete", 0.95) for i, t in enumerate(("t2", "t4", "t5"))]  # liked
    rows += [("m1", t, 20 + i, "complete", 0.1) for i, t in enumerate(("t3", "t6"))]  # abandoned
    rows += [("m2", "t1", 0, "play", None), ("m2", "t2", 10, "rate", 5.0), ("m2", "t3", 20, "rate", 1.0)]
    ev = events(rows)

    capped = behaviour_pairs(catalog(), ev, DAY, PairBuilderConfig(max_pairs_per_member=2))
    per_member = dict(capped.pairs.group_by("member_id").len().iter_rows())
    assert per_member == {"m1": 2, "m2": 1}
    assert capped.stats["combinations"] == 7 and capped.stats["over_member_cap"] == 4
    assert capped.stats["members_with_liked_and_negative"] == 2 and capped.stats["pairs"] == 3

    everything = behaviour_pairs(catalog(), ev, DAY, PairBuilderConfig(max_pairs_per_member=10))
    assert everything.stats["over_member_cap"] == 0 and everything.pairs.height == 7
    combos = set(everything.pairs.select("chosen_title_id", "rejected_title_id").iter_rows())
    assert combos == {(c, r) for c in ("t2", "t4", "t5") for r in ("t3", "t6")}
    # the cap keeps a subset of the uncapped pairs, unchanged: re-running with another cap moves nothing
    kept = everything.pairs.filter(pl.col("pair_id").is_in(capped.pairs["pair_id"].implode()))
    assert kept.sort("pair_id").equals(capped.pairs.sort("pair_id"))


def test_other_days_unknown_titles_and_low_ratings_never_become_chosen_or_context() -> None:
    previous = DAY - timedelta(days=1)
    ev = pl.concat(
        [
            events(
                [
                    ("m1", "t1", 1, "play", None),  # the one valid context watch
                    ("m1", "t4", 2, "rate", 1.0),  # low rated: rejected, never context
                    ("m1", "t99", 3, "complete", 1.0),  # not in the catalog
                    ("m1", "t2", 5, "complete", 0.95),  # liked: the chosen one
                    ("m1", "t3", 10, "complete", 0.1),  # abandoned
                ]
            ),
            events(
                [
                    ("m1", "t5", 1, "complete", 1.0),  # liked, but yesterday
                    ("m1", "t6", 2, "play", None),  # watched, but yesterday
                    ("m1", "t7", 3, "complete", 0.1),  # abandoned, but yesterday
                ],
                day=previous,
            ),
        ]
    )
    got = behaviour_pairs(catalog(), ev, DAY, CFG)
    combos = sorted(got.pairs.select("chosen_title_id", "rejected_title_id").iter_rows())
    assert combos == [("t2", "t3"), ("t2", "t4")]
    for pair in got.pairs.iter_rows(named=True):
        assert named_titles(user_turn(pair["prompt"])) == {"t1"}
        assert "t99" not in pair["chosen"][0]["content"]
        assert pair["day"] == DAY
    # a member whose only liked title is unknown gets no pair
    only_unknown = events([("m2", "t1", 1, "play", None), ("m2", "t99", 2, "rate", 5.0), ("m2", "t3", 3, "rate", 1.0)])
    assert behaviour_pairs(catalog(), only_unknown, DAY, CFG).stats["combinations"] == 0


def test_context_is_the_last_history_size_watches_oldest_first() -> None:
    ev = events(
        [
            ("m1", "t1", 1, "play", None),
            ("m1", "t6", 2, "complete", 0.5),
            ("m1", "t7", 3, "rate", 3.5),
            ("m1", "t2", 5, "complete", 0.95),
            ("m1", "t3", 10, "complete", 0.1),
        ]
    )
    got = behaviour_pairs(catalog(), ev, DAY, PairBuilderConfig(history_size=2))
    request = user_turn(got.pairs["prompt"][0].to_list())
    assert named_titles(request) == {"t6", "t7"}
    assert f"{shown('t6')}, {shown('t7')}" in request


def test_an_empty_system_prompt_leaves_only_the_user_turn() -> None:
    rows = [("m1", "t1", 1, "play", None)]
    rows += [("m1", t, 10 + i, "complete", 0.95) for i, t in enumerate(("t2", "t4", "t5", "t6"))]
    rows += [("m1", t, 20 + i, "complete", 0.1) for i, t in enumerate(("t3", "t7"))]
    got = behaviour_pairs(catalog(), events(rows), DAY, PairBuilderConfig(system_prompt="", max_pairs_per_member=8))
    assert got.pairs.height == 8
    assert all([m["role"] for m in p] == ["user"] for p in got.pairs["prompt"].to_list())


def test_pairs_are_deterministic() -> None:
    rows = [("m1", "t1", 0, "play", None), ("m2", "t1", 0, "play", None), ("m2", "t6", 1, "complete", 0.95)]
    rows += [("m1", t, 10 + i, "complete", 0.95) for i, t in enumerate(("t2", "t4", "t5"))]
    rows += [("m1", t, 20 + i, "rate", 1.0) for i, t in enumerate(("t3", "t7", "t8"))]
    rows += [("m2", "t2", 10, "rate", 4.5), ("m2", "t3", 20, "complete", 0.2)]
    ev = events(rows)
    first = behaviour_pairs(catalog(), ev, DAY, CFG)
    again = behaviour_pairs(catalog(), ev, DAY, CFG)
    assert first.pairs.height == 6  # m1: 9 combinations capped at 4; m2: two liked titles over one
    assert first.pairs.equals(again.pairs) and first.stats == again.stats
    assert first.pairs["pair_id"].n_unique() == first.pairs.height
    shuffled = behaviour_pairs(catalog(), ev.sample(fraction=1.0, shuffle=True, seed=3), DAY, CFG)
    assert shuffled.pairs.equals(first.pairs), "the input's row order must not change the pairs"


@pytest.mark.parametrize("kwargs", [{"history_size": 0}, {"max_pairs_per_member": 0}])
def test_config_without_context_or_pairs_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PairBuilderConfig(**kwargs)
