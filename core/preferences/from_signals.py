"""Preference pairs from member behaviour: a title the member liked over one they turned down, in context.

Per member and day (core/signals.py decides each title's signal from that day's events):

- chosen: a title the member finished or rated high (``liked``);
- rejected: a title they abandoned or rated low (``negative``);
- context: the member's other positive watches of the day that began before the later of the two, oldest
  first, the last ``history_size`` of them: what they had watched when they made both choices. A pair with no
  such watch has no context to condition on and is not built (counted as ``no_context``).

The prompt is the request a member sends the assistant (the recommendation builder's own wording and system
prompt), and the two completions are the same answer lead followed by the one title, written as the catalog
lists it. They differ only in the title, so the preference is about the title and nothing else. The answer
would go on with more titles, so tokenization leaves the end of the turn out of the loss (core/preferences/
tokenize.py): the pair says which title comes first, not that the answer ends after it.

A member with several liked and negative titles gives each combination, up to ``max_pairs_per_member`` per
day (chosen by a hash of the pair, so re-runs pick the same ones): a very active member must not dominate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import polars as pl

from core.conversation_builder import ANSWER_LEADS, DEFAULT_SYSTEM_PROMPT, REQUESTS
from core.curation import stable_hash_hex, stable_hash_u64
from core.schemas import INTERACTIONS_SCHEMA, conform
from core.signals import SignalThresholds, member_title_signals

PAIR_CANDIDATE_SCHEMA: dict[str, pl.DataType] = {
    "pair_id": pl.String,
    "day": pl.Date,
    "kind": pl.String,
    "member_id": pl.String,
    "prompt": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
    "chosen": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
    "rejected": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
    "chosen_title_id": pl.String,
    "rejected_title_id": pl.String,
}


@dataclass(frozen=True)
class PairBuilderConfig:
    """How behaviour pairs are built; ``seed`` changes template and pair choices, not which signals count."""

    seed: int = 7
    history_size: int = 5
    max_pairs_per_member: int = 4
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    signals: SignalThresholds = field(default_factory=SignalThresholds)

    def __post_init__(self) -> None:
        if self.history_size < 1:
            raise ValueError(f"history_size={self.history_size} must be >= 1: a pair's prompt names its context")
        if self.max_pairs_per_member < 1:
            raise ValueError(f"max_pairs_per_member={self.max_pairs_per_member} must be >= 1")


@dataclass(frozen=True)
class BehaviourPairs:
    """A day's candidate pairs and the counts that explain how many there are."""

    pairs: pl.DataFrame  # PAIR_CANDIDATE_SCHEMA
    stats: dict[str, int]


def _displays(catalog: pl.DataFrame) -> dict[str, str]:
    """title_id -> "Title (Year)", as the conversation builder writes titles."""
    cat = catalog.select(
        pl.col("title_id").cast(pl.String), pl.col("title").cast(pl.String), pl.col("year").cast(pl.Int32)
    ).filter(pl.col("title_id").is_not_null() & (pl.col("title").str.strip_chars() != ""))
    title = pl.col("title").str.replace_all(r"\s+", " ").str.strip_chars()
    shown = pl.when(pl.col("year").is_null()).then(title).otherwise(pl.format("{} ({})", title, pl.col("year")))
    rows = cat.unique("title_id", keep="first", maintain_order=True).select("title_id", shown.alias("d"))
    return dict(rows.iter_rows())


def behaviour_pairs(
    catalog: pl.DataFrame, interactions: pl.DataFrame, day: date, cfg: PairBuilderConfig
) -> BehaviourPairs:
    """Candidate preference pairs of ``day`` from its events (only the day's rows of known titles are used)."""
    displays = _displays(catalog)
    events = conform(interactions, INTERACTIONS_SCHEMA).filter(
        (pl.col("day") == day)
        & pl.col("member_id").is_not_null()
        & pl.col("title_id").is_in(pl.Series(list(displays), dtype=pl.String).implode())
    )
    signals = member_title_signals(events, cfg.signals)
    liked = signals.filter(pl.col("liked")).select("member_id", "title_id", "first_ts")
    negative = signals.filter(pl.col("signal") == "negative").select("member_id", "title_id", "first_ts")
    combos = liked.join(negative, on="member_id", suffix="_r").rename(
        {"title_id": "chosen_title_id", "title_id_r": "rejected_title_id", "first_ts": "chosen_ts"}
    )
    key = pl.format(
        "pair|{}|{}|{}|{}|{}",
        pl.lit(cfg.seed),
        pl.col("member_id"),
        pl.lit(day.isoformat()),
        pl.col("chosen_title_id"),
        pl.col("rejected_title_id"),
    )
    combos = combos.with_columns(stable_hash_u64(combos.select(key).to_series()).alias("_h"))
    ranked = combos.sort("member_id", "_h").with_columns(pl.int_range(pl.len()).over("member_id").alias("_i"))
    capped = ranked.filter(pl.col("_i") < cfg.max_pairs_per_member)

    watches = (
        signals.filter(pl.col("signal") == "watch")
        .sort("member_id", "first_ts", "title_id")
        .group_by("member_id", maintain_order=True)
        .agg(pl.col("title_id").alias("w_ids"), pl.col("first_ts").alias("w_ts"))
    )
    rows = capped.join(watches, on="member_id", how="left").sort("member_id", "_h")
    built: dict[str, list[object]] = {c: [] for c in PAIR_CANDIDATE_SCHEMA}
    no_context = 0
    for r in rows.iter_rows(named=True):
        until = max(r["chosen_ts"], r["first_ts_r"])
        context = [
            t
            for t, ts in zip(r["w_ids"] or [], r["w_ts"] or [], strict=True)
            if ts < until and t != r["chosen_title_id"]
        ][-cfg.history_size :]
        if not context:
            no_context += 1
            continue
        h = r["_h"]
        request = REQUESTS[h % len(REQUESTS)].format(h=", ".join(displays[t] for t in context))
        lead = ANSWER_LEADS[(h >> 8) % len(ANSWER_LEADS)]
        prompt = [{"role": "user", "content": request}]
        if cfg.system_prompt.strip() and (h >> 40) % 4 != 0:  # as system_flag: three in four carry it
            prompt.insert(0, {"role": "system", "content": cfg.system_prompt})
        built["pair_id"].append(None)
        built["day"].append(day)
        built["kind"].append("behaviour")
        built["member_id"].append(r["member_id"])
        built["prompt"].append(prompt)
        built["chosen"].append([{"role": "assistant", "content": f"{lead}\n1. {displays[r['chosen_title_id']]}"}])
        built["rejected"].append([{"role": "assistant", "content": f"{lead}\n1. {displays[r['rejected_title_id']]}"}])
        built["chosen_title_id"].append(r["chosen_title_id"])
        built["rejected_title_id"].append(r["rejected_title_id"])
    pairs = pl.DataFrame(built, schema=PAIR_CANDIDATE_SCHEMA)
    ids = pl.format(
        "behaviour|{}|{}|{}|{}",
        pl.col("member_id"),
        pl.lit(day.isoformat()),
        pl.col("chosen_title_id"),
        pl.col("rejected_title_id"),
    )
    pairs = pairs.with_columns(stable_hash_hex(pairs.select(ids).to_series(), 32).alias("pair_id"))
    stats = {
        "members_with_liked_and_negative": int(combos["member_id"].n_unique()),
        "combinations": combos.height,
        "over_member_cap": combos.height - capped.height,
        "no_context": no_context,
        "pairs": pairs.height,
    }
    return BehaviourPairs(pairs, stats)
