"""The champion registry and checkpoints as the assets see them (SFT and preference checkpoints alike)."""

import json
from pathlib import Path

import dagster as dg

from resources.artifacts import ArtifactStore

# Assets whose versions are model checkpoints a champion record can point at.
CHECKPOINT_ASSETS = ("trained_checkpoint", "preference_checkpoint")


def champion_registry(artifacts: ArtifactStore) -> Path | str:
    """The champion registry beside the artifacts: a directory, or a prefix of the artifacts' object store."""
    if artifacts.remote is not None:
        return f"{artifacts.root.rstrip('/')}/champion"
    return Path(artifacts.root) / "champion"


def champion_checkpoint_dir(artifacts: ArtifactStore, recorded: str) -> Path:
    """The champion's checkpoint directory here: as recorded, or, on an object store, fetched by its version name
    (the recorded path is the promoting machine's cache)."""
    path = Path(recorded)
    if artifacts.remote is not None and not path.is_dir():
        for asset in CHECKPOINT_ASSETS:
            if path.name in artifacts.version_ids(asset):
                return artifacts.fetch(asset, path.name)
    return path


def read_lineage(checkpoint: Path) -> dict:
    path = checkpoint / "lineage.json"
    if not path.is_file():
        raise dg.Failure(f"{checkpoint} has no lineage.json; re-materialize {checkpoint.parent.name}")
    return json.loads(path.read_text())
