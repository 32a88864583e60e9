"""A plain-text summary of what the pipeline produced (rows per layer, quarantine, tokens)."""

from __future__ import annotations

import json

from core.settings import PlatformSettings
from dagster_project.resources import build_artifacts, build_warehouse


def print_summary(settings: PlatformSettings, days: list[str]) -> None:
    wh = build_warehouse(settings)
    store = build_artifacts(settings)
    print("\nrows per layer:")
    for table in (
        "raw.catalog",
        "raw.interactions",
        "raw.quarantine",
        "curated.conversations",
        "curated.quarantine",
    ):
        n = wh.query(f"SELECT count(*) AS n FROM {table}")["n"][0]
        print(f"  {table:24s} {n:>9,}")
    print("\nquarantine by reason:")
    for table in ("raw.quarantine", "curated.quarantine"):
        counts = wh.query(f"SELECT reason, count(*) AS n FROM {table} GROUP BY reason ORDER BY n DESC")
        for reason, n in counts.iter_rows():
            print(f"  {table:24s} {reason:28s} {n:>7,}")
    print("\ncurated conversations by kind and split:")
    counts = wh.query(
        "SELECT kind, split, count(*) AS n FROM curated.conversations GROUP BY kind, split ORDER BY kind, split"
    )
    for kind, split, n in counts.iter_rows():
        print(f"  {kind:16s} {split:11s} {n:>7,}")
    tokens = loss_tokens = conversations = 0
    token_quarantine: dict[str, int] = {}
    for day in days:
        latest = store.latest("tokenized_shards", day)
        if latest is None:
            continue
        manifest = json.loads((latest / "manifest.json").read_text())
        tokens += manifest["totals"]["tokens"]
        loss_tokens += manifest["totals"]["loss_tokens"]
        conversations += manifest["totals"]["conversations"]
        for reason, n in manifest.get("quarantined", {}).items():
            token_quarantine[reason] = token_quarantine.get(reason, 0) + n
    print(f"\ntokenized_shards: {conversations:,} conversations, {tokens:,} tokens, {loss_tokens:,} loss tokens")
    if token_quarantine:
        print(f"  quarantined at tokenization: {token_quarantine}")
