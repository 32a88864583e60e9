"""Which warehouse snapshots lineage records point at, and which old snapshots may therefore be expired.

On DuckLake every commit is a snapshot, and reading `AT (VERSION => n)` gives the tables as they were. A shard
version records the snapshot it read its day at; a checkpoint's lineage.json records those of all its shards.
Snapshot maintenance keeps every snapshot a live record names, so a checkpoint's training data can always be
read back as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any


def shard_snapshots(manifests: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """day -> the snapshot its shard version read (days read from the DuckDB file, which has none, are left out)."""
    return {
        day: int(m["warehouse_snapshot"])
        for day, m in sorted(manifests.items())
        if m.get("warehouse_snapshot") is not None
    }


def lineage_snapshots(lineage: Mapping[str, Any]) -> dict[str, int]:
    """day -> snapshot from a checkpoint's lineage.json (empty for checkpoints trained before it was recorded)."""
    return {str(day): int(n) for day, n in (lineage.get("warehouse_snapshots") or {}).items()}


def snapshots_to_expire(snapshots: Iterable[tuple[int, datetime]], pinned: set[int], older_than: datetime) -> list[int]:
    """Snapshots committed before `older_than`, except the newest (the tables as they are) and pinned ones."""
    ordered = sorted(snapshots)
    if not ordered:
        return []
    newest = ordered[-1][0]
    return [n for n, at in ordered if at < older_than and n != newest and n not in pinned]
