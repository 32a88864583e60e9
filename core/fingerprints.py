"""Content fingerprints that tie an artifact to the exact inputs it was built from."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from core.atomic_io import sha256_file
from core.settings import REPO_ROOT


def strings_fingerprint(values: Iterable[str]) -> str:
    """Order-independent sha256 over a set of strings."""
    digest = hashlib.sha256()
    for value in sorted(values):
        digest.update(value.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def frame_fingerprint(df: pl.DataFrame, columns: list[str]) -> str:
    """Order-independent fingerprint of the given columns' values (rows joined with a separator)."""
    if df.height == 0:
        return strings_fingerprint([])
    rows = df.select(pl.concat_str([pl.col(c).cast(pl.String).fill_null("<null>") for c in columns], separator="\x1f"))
    return strings_fingerprint(rows.to_series().to_list())


def files_fingerprint(paths: Iterable[Path]) -> str:
    return strings_fingerprint(f"{Path(p).name}:{sha256_file(Path(p))}" for p in paths)


def sources_fingerprint(paths: Iterable[str], *, extra: str = "", root: Path = REPO_ROOT) -> str:
    """sha256 over the Python sources under ``paths`` (folders or files, relative to ``root``) plus ``extra``
    (e.g. library versions): what a result computed by that code is keyed on, so a cached result is not reused
    after the code that made it changed."""
    digest = hashlib.sha256(f"{extra}\n".encode())
    for entry in paths:
        path = root / entry
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(f"{source.relative_to(root)}:{sha256_file(source)}\n".encode())
    return digest.hexdigest()
