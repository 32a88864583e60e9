"""Shard directories: the contract between data preparation and training.

One directory per partition and version (see DESIGN.md "Shard directory"):
`manifest.json` plus `<split>-NNNNN.parquet` files of unpacked conversations
(`conversation_id`, `input_ids` list<int32>, `loss_mask` list<uint8>).
The manifest carries sha256 of every data file so the trainer can refuse
corrupted or swapped data.

A row is one training example. Under the ``expand`` rewrite policy a conversation that the
chat template rewrites gives one row per assistant turn, all with its conversation_id, so the
manifest's per-split ``conversations`` counts rows; tokenized_shards records how many
conversations went which way (kept, expanded, as_rendered, quarantined) in the manifest's
``conversations_by_outcome``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic_io import sha256_file
from core.schemas import SPLITS

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
QUARANTINE_FILE = "quarantine.parquet"

SHARD_ARROW_SCHEMA = pa.schema(
    [
        pa.field("conversation_id", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("loss_mask", pa.list_(pa.uint8()), nullable=False),
    ]
)
SHARD_POLARS_SCHEMA = {
    "conversation_id": pl.String,
    "input_ids": pl.List(pl.Int32),
    "loss_mask": pl.List(pl.UInt8),
}


@dataclass(frozen=True)
class ShardLayout:
    """What one row of a shard directory holds: its columns and how its tokens are counted.

    ``count_key`` names the row count in the manifest ("conversations" for SFT rows, "pairs" for preference
    rows); ``token_columns`` add up to a row's tokens and ``mask_columns`` to its loss tokens.
    """

    name: str
    polars_schema: dict[str, pl.DataType]
    count_key: str
    token_columns: tuple[str, ...]
    mask_columns: tuple[str, ...]

    @property
    def arrow_schema(self) -> pa.Schema:
        return pl.DataFrame(schema=self.polars_schema).to_arrow().schema.remove_metadata()

    def counts(self, part: pl.DataFrame) -> dict[str, int]:
        return {
            self.count_key: part.height,
            "tokens": sum(int(part[c].list.len().sum() or 0) for c in self.token_columns),
            "loss_tokens": sum(int(part[c].list.sum().sum() or 0) for c in self.mask_columns),
        }


CONVERSATION_LAYOUT = ShardLayout("conversations", SHARD_POLARS_SCHEMA, "conversations", ("input_ids",), ("loss_mask",))


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"


def write_split_files(
    out_dir: Path, split: str, rows: pl.DataFrame, rows_per_file: int, layout: ShardLayout = CONVERSATION_LAYOUT
) -> list[dict[str, Any]]:
    """Write one split's rows as numbered parquet files; returns per-file stats."""
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    frame = rows.select([pl.col(c).cast(t) for c, t in layout.polars_schema.items()])
    arrow_schema = SHARD_ARROW_SCHEMA if layout is CONVERSATION_LAYOUT else layout.arrow_schema
    files = []
    n_files = max(1, -(-frame.height // rows_per_file))
    for index in range(n_files):
        part = frame.slice(index * rows_per_file, rows_per_file)
        name = shard_name(split, index)
        pq.write_table(part.to_arrow().cast(arrow_schema), out_dir / name, compression="zstd")
        files.append({"file": name, **layout.counts(part)})
    return files


def build_manifest(
    out_dir: Path,
    *,
    partition: str,
    split_files: dict[str, list[dict[str, Any]]],
    tokenizer_fingerprint: str,
    source_data_version: str,
    extra: dict[str, Any] | None = None,
    layout: ShardLayout = CONVERSATION_LAYOUT,
) -> dict[str, Any]:
    keys = (layout.count_key, "tokens", "loss_tokens")
    splits = {}
    for split, files in split_files.items():
        splits[split] = {**{key: sum(f[key] for f in files) for key in keys}, "files": [f["file"] for f in files]}
    checksums = {p.name: sha256_file(p) for p in sorted(out_dir.iterdir()) if p.is_file() and p.name != MANIFEST}
    return {
        "format_version": FORMAT_VERSION,
        "partition": partition,
        "created_at": datetime.now(UTC).isoformat(),
        "splits": splits,
        "totals": {key: sum(s[key] for s in splits.values()) for key in keys},
        **({} if layout is CONVERSATION_LAYOUT else {"layout": layout.name}),
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "source_data_version": source_data_version,
        "sha256": checksums,
        **(extra or {}),
    }


def write_shard_directory(
    out_dir: Path,
    rows: pl.DataFrame,
    *,
    partition: str,
    tokenizer_fingerprint: str,
    source_data_version: str,
    rows_per_file: int = 20_000,
    quarantine: pl.DataFrame | None = None,
    extra: dict[str, Any] | None = None,
    layout: ShardLayout = CONVERSATION_LAYOUT,
) -> dict[str, Any]:
    """Write every split (an empty split still gets one empty file) and the manifest.

    `rows` needs column split and the layout's columns (conversation_id, input_ids, loss_mask by default).
    """
    unknown = set(rows["split"].unique().to_list()) - set(SPLITS) if rows.height else set()
    if unknown:
        raise ValueError(f"rows carry unknown splits {sorted(unknown)}; expected {SPLITS}")
    split_files = {
        split: write_split_files(out_dir, split, rows.filter(pl.col("split") == split), rows_per_file, layout)
        for split in SPLITS
    }
    if quarantine is not None:
        quarantine.write_parquet(out_dir / QUARANTINE_FILE)
    manifest = build_manifest(
        out_dir,
        partition=partition,
        split_files=split_files,
        tokenizer_fingerprint=tokenizer_fingerprint,
        source_data_version=source_data_version,
        extra=extra,
        layout=layout,
    )
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_manifest(shard_dir: Path) -> dict[str, Any]:
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{shard_dir} has no {MANIFEST}; is it a tokenized_shards version directory?")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {manifest.get('format_version')}, this code reads {FORMAT_VERSION}; "
            "re-materialize tokenized_shards"
        )
    return manifest


def verify_checksums(shard_dir: Path, manifest: dict[str, Any] | None = None) -> list[str]:
    """Problems found (empty = every listed file exists and matches its sha256, none unlisted)."""
    shard_dir = Path(shard_dir)
    manifest = manifest or read_manifest(shard_dir)
    problems = []
    listed = manifest.get("sha256", {})
    for name, expected in sorted(listed.items()):
        path = shard_dir / name
        if not path.is_file():
            problems.append(f"{name}: listed in the manifest but missing")
        elif sha256_file(path) != expected:
            problems.append(f"{name}: sha256 differs from the manifest")
    for path in sorted(shard_dir.iterdir()):
        if path.is_file() and path.name != MANIFEST and path.name not in listed:
            problems.append(f"{path.name}: present but not listed in the manifest")
    return problems


class ShardDataError(ValueError):
    """A shard directory is unusable (checksum mismatch, wrong tokenizer, malformed rows)."""


def read_verified_manifest(shard_dir: Path) -> dict[str, Any]:
    """The manifest of a shard directory whose files all match it; refuses anything else.

    Training and evaluation both read shards through this, so neither runs on corrupted data.
    """
    manifest = read_manifest(shard_dir)
    problems = verify_checksums(shard_dir, manifest)
    if problems:
        raise ShardDataError(
            f"shard directory {shard_dir} failed verification: {'; '.join(problems)}. "
            "Re-materialize tokenized_shards for this partition before using it."
        )
    return manifest


def read_split(
    shard_dir: Path, split: str, manifest: dict[str, Any] | None = None, layout: ShardLayout = CONVERSATION_LAYOUT
) -> pl.DataFrame:
    manifest = manifest or read_manifest(shard_dir)
    if manifest.get("layout", CONVERSATION_LAYOUT.name) != layout.name:
        raise ShardDataError(
            f"{shard_dir} holds {manifest.get('layout', CONVERSATION_LAYOUT.name)} rows, not {layout.name}; "
            "point this reader at the matching shard asset's versions"
        )
    files: Sequence[str] = manifest["splits"].get(split, {}).get("files", [])
    frames = [pl.read_parquet(Path(shard_dir) / name) for name in files]
    if not frames:
        return pl.DataFrame(schema=layout.polars_schema)
    return pl.concat(frames, how="vertical")
