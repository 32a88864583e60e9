"""Shared helpers for materialization metadata shown in the Dagster UI."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from resources.warehouse import Commit


def counts_by(df: pl.DataFrame, column: str) -> dict[str, int]:
    if df.height == 0:
        return {}
    counted = df.group_by(column).len().sort(column)
    return {str(k): int(v) for k, v in counted.iter_rows()}


def markdown_table(df: pl.DataFrame, limit: int = 10) -> dg.MetadataValue:
    head = df.head(limit)
    if head.height == 0:
        return dg.MetadataValue.md("_(no rows)_")
    cols = head.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.iter_rows():
        cells = [str(v).replace("|", "\\|").replace("\n", " ")[:120] for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def reason_metadata(prefix: str, counts: dict[str, int]) -> dict[str, Any]:
    """One integer per reason code (so each is plotted over time in the UI) plus a JSON summary."""
    meta: dict[str, Any] = {f"{prefix}/{reason}": dg.MetadataValue.int(n) for reason, n in counts.items()}
    meta[f"{prefix}_by_reason"] = dg.MetadataValue.json(counts)
    meta[f"{prefix}_total"] = dg.MetadataValue.int(sum(counts.values()))
    return meta


def commit_metadata(commit: Commit[Any]) -> dict[str, Any]:
    """Which warehouse snapshot a write committed (DuckLake: read it back with time travel) and how many times it
    ran again after losing a commit conflict to a concurrent writer."""
    meta: dict[str, Any] = {"warehouse/commit_retries": dg.MetadataValue.int(commit.retries)}
    if commit.snapshot is not None:
        meta["warehouse/snapshot"] = dg.MetadataValue.int(commit.snapshot)
    return meta


def image_markdown(paths: list[Path]) -> str:
    """PNG plots inlined as data URIs, so they render in the Dagster UI without a file server."""
    parts = []
    for path in paths:
        if path.suffix == ".png" and path.is_file():
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f"**{path.stem}**\n\n![{path.stem}](data:image/png;base64,{data})")
    return "\n\n".join(parts) or "_(no plots)_"
