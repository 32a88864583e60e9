"""Benchmark inputs, built from the platform's own demo generator.

Conversations come from core.synthetic (members, titles, daily events) through
core.conversation_builder and core.curation, exactly as the `curated_conversations`
asset builds them; the tokenizer and the tiny model come from core.base_model's
preset (byte-level BPE trained on the train split, ChatML template with
`{% generation %}` markers). Both sides of every comparison read these files.

Preference pairs (the DPO benchmark) come from the same world through
core.preferences (behaviour pairs, curate_pairs, tokenize_pairs), as the
`preference_pairs` and `preference_shards` assets build them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from core import ingest
from core.base_model import TinyModelPreset, save_preset
from core.conversation_builder import BuilderConfig, build_conversations
from core.curation import CurationConfig, curate
from core.fingerprints import sources_fingerprint
from core.preferences import PairBuilderConfig, behaviour_pairs, curate_pairs
from core.synthetic import SyntheticConfig, generate_catalog, generate_interactions

# ~0.27 curated conversations per member per day with the default synthetic world.
_CONVERSATIONS_PER_MEMBER_DAY = 0.27
# ~0.013 curated behaviour pairs per member per day (a liked and a turned-down title the same day).
_PAIRS_PER_MEMBER_DAY = 0.013


@dataclass(frozen=True)
class DayCandidates:
    day: date
    candidates: pl.DataFrame  # CANDIDATE_SCHEMA rows, not yet curated


# The code that makes the inputs. Kept inputs are reused only while it is unchanged: a change to the pair
# tokenization, say, must not leave a benchmark measuring pairs the platform no longer makes.
INPUT_SOURCES = ("core", "benchmarks/workload.py")


def _write_info(out_dir: Path, info: dict) -> dict:
    """inputs.json, written last: its presence means the inputs beside it are complete."""
    info = {**info, "sources": sources_fingerprint(INPUT_SOURCES)}
    (out_dir / "inputs.json").write_text(json.dumps(info, indent=1))
    return info


def kept_inputs(inputs_dir: Path, **expected: object) -> dict | None:
    """inputs.json of inputs the current code built with these values (e.g. ``pairs=160``); None: rebuild them."""
    try:
        info = json.loads((inputs_dir / "inputs.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if info.get("sources") != sources_fingerprint(INPUT_SOURCES):
        return None
    return info if all(info.get(key) == value for key, value in expected.items()) else None


def _world(members: int, seed: int) -> SyntheticConfig:
    return SyntheticConfig(seed=seed, n_members=members, external_conversations_per_day=0)


def iter_candidate_days(members_per_day: int, seed: int = 7) -> Iterator[DayCandidates]:
    """Endless daily candidate conversations (what build_conversations makes from one day of events)."""
    cfg = _world(members_per_day, seed)
    catalog, _ = ingest.ingest_catalog(generate_catalog(cfg), ingest.CatalogMapping())
    day = cfg.start_day
    builder = BuilderConfig(seed=seed)
    while True:
        raw = generate_interactions(cfg, day)
        rows, _, _ = ingest.ingest_interactions(raw, None, day, catalog["title_id"], per_day_files=True)
        yield DayCandidates(day, build_conversations(catalog, rows, day, builder))
        day += timedelta(days=1)


def curated_conversations(n: int, seed: int = 7) -> pl.DataFrame:
    """At least `n` curated conversations (cut to exactly `n`), over as many demo days as needed."""
    members = max(2_000, min(200_000, int(n / _CONVERSATIONS_PER_MEMBER_DAY / 4)))
    parts: list[pl.DataFrame] = []
    seen: list[str] = []
    total = 0
    for item in iter_candidate_days(members, seed):
        curated, _, _ = curate(item.candidates, item.day, CurationConfig(), seen_hashes=seen)
        parts.append(curated)
        seen.extend(curated["content_hash"].to_list())
        total += curated.height
        if total >= n:
            break
    return pl.concat(parts).head(n)


def write_inputs(out_dir: Path, n: int, seed: int = 7, preset: TinyModelPreset | None = None) -> dict:
    """conversations.parquet (curated rows) + model/ (tokenizer, chat template, tiny weights)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    conversations = curated_conversations(n, seed)
    conversations.write_parquet(out_dir / "conversations.parquet")
    texts = (
        conversations.filter(pl.col("split") == "train")
        .select(pl.col("messages").list.eval(pl.element().struct.field("content")).alias("c"))
        .explode("c")["c"]
        .to_list()
    )
    model_dir = out_dir / "model"
    model_dir.mkdir(exist_ok=True)
    card = save_preset(model_dir, texts, preset or TinyModelPreset())
    info = {"conversations": conversations.height, "parameters": card["parameters"], "vocab_size": card["vocab_size"]}
    return _write_info(out_dir, info)


def load_conversations(inputs_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(Path(inputs_dir) / "conversations.parquet")


# ------------------------------------------------------------------------------ preference pairs


def curated_pairs(n: int, seed: int = 7) -> pl.DataFrame:
    """At least `n` curated behaviour pairs (cut to exactly `n`, every split), over as many demo days as needed."""
    members = max(2_000, min(200_000, int(n / _PAIRS_PER_MEMBER_DAY / 4)))
    cfg = _world(members, seed)
    catalog, _ = ingest.ingest_catalog(generate_catalog(cfg), ingest.CatalogMapping())
    builder = PairBuilderConfig(seed=seed)
    parts: list[pl.DataFrame] = []
    seen: list[str] = []
    total, day = 0, cfg.start_day
    while total < n:
        raw = generate_interactions(cfg, day)
        rows, _, _ = ingest.ingest_interactions(raw, None, day, catalog["title_id"], per_day_files=True)
        built = behaviour_pairs(catalog, rows, day, builder)
        curated, _, _ = curate_pairs(built.pairs, day, CurationConfig(), seen_hashes=seen)
        parts.append(curated)
        seen.extend(curated["content_hash"].to_list())
        total += curated.height
        day += timedelta(days=1)
    return pl.concat(parts).head(n)


def scored_completions(rows: pl.DataFrame) -> pl.DataFrame:
    """Token rows whose completions end at their last loss token (every completion token then carries loss).

    tokenize_pairs ends each completion with the template's end of turn, outside the loss mask (a behaviour
    pair's answer is open-ended: neither the end-of-turn token nor the newline after it is scored). TRL's
    preference collator scores every completion token it is given, so the benchmark drops those trailing
    unscored tokens: both trainers then see the same ids and score the same tokens.
    """
    out = {c: rows[c].to_list() for c in rows.columns}
    for side in ("chosen", "rejected"):
        ids, masks = out[f"{side}_ids"], out[f"{side}_mask"]
        for i, mask in enumerate(masks):
            end = max(k for k, m in enumerate(mask) if m) + 1
            if any(m == 0 for m in mask[:end]):
                raise ValueError(f"pair {out['pair_id'][i]}: the {side} completion has an unscored token inside it")
            ids[i], masks[i] = ids[i][:end], mask[:end]
    return pl.DataFrame(out, schema=rows.schema)


def write_pair_inputs(out_dir: Path, n: int, seed: int = 7, preset: TinyModelPreset | None = None) -> dict:
    """pairs.parquet (curated pairs), model/ (tokenizer trained on their text + tiny weights), shards/ (their
    preference_shards directory, completions cut at their last loss token: `scored_completions`)."""
    from core.preferences.tokenize import PAIR_LAYOUT, tokenize_pairs
    from core.shards import write_shard_directory
    from core.tokenizer_training import tokenizer_fingerprint

    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = curated_pairs(n, seed)
    pairs.write_parquet(out_dir / "pairs.parquet")
    texts = (
        pairs.select(pl.concat_list("prompt", "chosen", "rejected").list.eval(pl.element().struct.field("content")))
        .to_series()
        .explode()
        .to_list()
    )
    model_dir = out_dir / "model"
    model_dir.mkdir(exist_ok=True)
    card = save_preset(model_dir, texts, preset or TinyModelPreset())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tokenized = tokenize_pairs(tokenizer, pairs, pairs["day"][0], max_length=1024)
    rows = scored_completions(tokenized.rows)
    (out_dir / "shards").mkdir(exist_ok=True)
    manifest = write_shard_directory(
        out_dir / "shards",
        rows,
        partition=str(pairs["day"][0]),
        tokenizer_fingerprint=tokenizer_fingerprint(model_dir),
        source_data_version="benchmark",
        quarantine=tokenized.quarantine,
        layout=PAIR_LAYOUT,
    )
    train = rows.filter(pl.col("split") == "train")
    lengths = {part: train[f"{part}_ids"].list.len() for part in ("prompt", "chosen", "rejected")}
    info = {
        "pairs": pairs.height,
        "train_pairs": train.height,
        "quarantined": tokenized.quarantine.height,
        "parameters": card["parameters"],
        "vocab_size": card["vocab_size"],
        "mean_tokens": {part: float(length.mean()) for part, length in lengths.items()},
        "shard_totals": manifest["totals"],
    }
    return _write_info(out_dir, info)
