"""Shared helpers for materialization metadata shown in the Dagster UI."""

from __future__ import annotations

from typing import Any

import dagster as dg
import polars as pl


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
