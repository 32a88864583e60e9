"""Benchmark inputs, built from the platform's own demo generator.

Conversations come from core.synthetic (members, titles, daily events) through
core.conversation_builder and core.curation, exactly as the `curated_conversations`
asset builds them; the tokenizer and the tiny model come from core.base_model's
preset (byte-level BPE trained on the train split, ChatML template with
`{% generation %}` markers). Both sides of every comparison read these files.
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
from core.synthetic import SyntheticConfig, generate_catalog, generate_interactions

# ~0.27 curated conversations per member per day with the default synthetic world.
_CONVERSATIONS_PER_MEMBER_DAY = 0.27


@dataclass(frozen=True)
class DayCandidates:
    day: date
    candidates: pl.DataFrame  # CANDIDATE_SCHEMA rows, not yet curated


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
    (out_dir / "inputs.json").write_text(json.dumps(info, indent=1))
    return info


def load_conversations(inputs_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(Path(inputs_dir) / "conversations.parquet")
