"""Writing the synthetic source into the landing area: the catalog snapshot and daily drops, atomically."""

from __future__ import annotations

import io
import re
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from core.atomic_io import atomic_write_bytes
from core.synthetic.config import SyntheticConfig
from core.synthetic.conversations import generate_external_conversations
from core.synthetic.events import generate_interactions
from core.synthetic.world import generate_catalog


def landing_paths(landing_root: Path, day: date) -> dict[str, Path]:
    """Where the synthetic source puts each file: keys catalog, interactions, conversations."""
    root = Path(landing_root)
    d = day.isoformat()
    return {
        "catalog": root / "catalog" / "catalog.parquet",
        "interactions": root / "interactions" / f"day={d}" / "events.parquet",
        "conversations": root / "conversations" / f"day={d}" / "external.jsonl",
    }


def _atomic_write(path: Path, data: bytes) -> Path:
    atomic_write_bytes(path, data)
    return path


def _parquet_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()


def write_catalog(landing_root: Path, cfg: SyntheticConfig) -> Path:
    """Write (or rewrite, byte-identically) the catalog snapshot; returns its path."""
    path = landing_paths(landing_root, cfg.start_day)["catalog"]
    return _atomic_write(path, _parquet_bytes(generate_catalog(cfg)))


def _write_part(landing_root: Path, cfg: SyntheticConfig, day: date, key: str) -> Path:
    path = landing_paths(landing_root, day)[key]
    if key == "interactions":
        return _atomic_write(path, _parquet_bytes(generate_interactions(cfg, day)))
    lines = generate_external_conversations(cfg, day)
    return _atomic_write(path, "".join(f"{line}\n" for line in lines).encode("utf-8"))


def write_drop(landing_root: Path, cfg: SyntheticConfig, day: date) -> list[Path]:
    """Write one day's interactions and external conversations (not the catalog)."""
    return [_write_part(landing_root, cfg, day, key) for key in ("interactions", "conversations")]


def ensure_drop(landing_root: Path, cfg: SyntheticConfig, day: date) -> list[Path]:
    """Make sure the catalog and ``day``'s drop exist; write only missing files.

    Returns the paths it wrote (empty when everything was already there). Because
    generation is deterministic, a rewrite would be byte-identical anyway; skipping
    it keeps file mtimes stable for sensors that watch the landing area.
    """
    written: list[Path] = []
    paths = landing_paths(landing_root, day)
    if not paths["catalog"].exists():
        written.append(write_catalog(landing_root, cfg))
    for key in ("interactions", "conversations"):
        if not paths[key].exists():
            written.append(_write_part(landing_root, cfg, day, key))
    return written


_DAY_DIR = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")


def existing_days(landing_root: Path) -> list[date]:
    """Days that have an interactions drop under ``landing_root``, sorted."""
    base = Path(landing_root) / "interactions"
    if not base.is_dir():
        return []
    days = []
    for child in base.iterdir():
        match = _DAY_DIR.match(child.name)
        if match and (child / "events.parquet").exists():
            days.append(date.fromisoformat(match.group(1)))
    return sorted(days)


def next_day(landing_root: Path, cfg: SyntheticConfig) -> date:
    """The day after the newest existing drop, or ``cfg.start_day`` when there is none."""
    days = existing_days(landing_root)
    return days[-1] + timedelta(days=1) if days else cfg.start_day
