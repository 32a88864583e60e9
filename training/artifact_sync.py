"""Trainer pods without a shared volume: inputs from the object store, checkpoints and the result back to it.

With artifacts on an object store (ARTIFACTS_URL), the Kubernetes launcher gives each trainer pod an empty
local directory at the run worker's artifact path and sets two variables:

- POSTTRAIN_ARTIFACT_SYNC_URL: the artifact store's URL;
- POSTTRAIN_ARTIFACT_SYNC_ROOT: the local directory that mirrors it (paths in the training config are under it).

Every path under the root maps to the key of the same relative path, so the training config needs no rewriting.
Before torchrun each pod fetches its config, the base model, the shards and the newest published checkpoint of
the run (`pull_inputs`); rank 0 publishes every checkpoint it saves (`push_checkpoint`) and, at the end, the
result (`push_result`), each as an immutable version with its marker written last (core/object_store.py). A pod
that replaces a lost one resumes from the newest published checkpoint, as it would from a shared volume.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.object_store import VersionStore

URL_ENV = "POSTTRAIN_ARTIFACT_SYNC_URL"
ROOT_ENV = "POSTTRAIN_ARTIFACT_SYNC_ROOT"
RESULT_ENV = "POSTTRAIN_ARTIFACT_SYNC_RESULT"  # "0": the launcher publishes the result itself (local launcher)
CONFIG = "config"  # <output key>/config-<launch>/train_config.json
RESULT = "result"  # <output key>/result-<id>/: the final model and summary.json
CHECKPOINTS = "checkpoints"  # <output key>/checkpoints/step-N/ (the layout of training/checkpoint.py)


@dataclass(frozen=True)
class ArtifactSync:
    store: VersionStore
    root: Path
    publish_result: bool = True

    @classmethod
    def from_env(cls) -> ArtifactSync | None:
        """The sync a launcher asked for, or None (a shared volume or one machine: nothing to sync)."""
        url, root = os.environ.get(URL_ENV, ""), os.environ.get(ROOT_ENV, "")
        if not url:
            return None
        if not root:
            raise RuntimeError(f"{URL_ENV} is set but {ROOT_ENV} is not: the launcher sets both")
        return cls(VersionStore(url.rstrip("/")), Path(root), os.environ.get(RESULT_ENV, "1") != "0")

    def key(self, path: Path | str) -> str:
        """The object key of a local path under the root."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            raise ValueError(f"{path} is not under {self.root}, the local mirror of {self.store.url}") from None

    # ---- run worker -------------------------------------------------------------------------------------------

    def push_config(self, config_path: Path) -> str:
        """Publish the training config for this launch; returns the key the pods fetch it from."""
        key = f"{self.key(config_path.parent)}/{CONFIG}-{uuid.uuid4().hex[:12]}"
        self.store.upload_files({config_path.name: config_path}, key)
        return key

    def pull_result(self, output_dir: Path) -> Path | None:
        """Copy the newest published result of the run into `output_dir` (None if the trainer published none)."""
        prefix = self.key(output_dir)
        results = [name for name in self.store.children(prefix) if name.startswith(f"{RESULT}-")]
        published = [name for name in results if self.store.marker(f"{prefix}/{name}") is not None]
        if not published:
            return None
        newest = max(published, key=lambda name: self.store.marker(f"{prefix}/{name}")["published_at"])
        staged = output_dir / f".{newest}"
        self.store.fetch(f"{prefix}/{newest}", staged)
        for item in staged.iterdir():
            item.replace(output_dir / item.name)
        staged.rmdir()
        return output_dir

    # ---- trainer pods ----------------------------------------------------------------------------------------

    def pull_inputs(self, config_key: str, config_path: Path) -> None:
        """Fetch the config, then everything it reads (base model, shards) and the newest published checkpoint."""
        if not config_path.is_file():
            fetched = self.store.fetch(config_key, config_path.parent / f".{CONFIG}-{uuid.uuid4().hex[:8]}")
            (fetched / config_path.name).replace(config_path)
        config = json.loads(config_path.read_text())
        for path in [config["base_model_dir"], *config["shard_dirs"]]:
            self.store.fetch(self.key(path), Path(path))
        self.pull_checkpoint(Path(config["output_dir"]))

    def pull_checkpoint(self, output_dir: Path) -> Path | None:
        """The newest checkpoint the run published, fetched unless a checkpoint as new is already here."""
        prefix = f"{self.key(output_dir)}/{CHECKPOINTS}"
        published = self.store.published(prefix)
        local = output_dir / CHECKPOINTS
        have = sorted(p.name for p in local.iterdir() if p.is_dir()) if local.is_dir() else []
        if not published or (have and have[-1] >= published[-1]):  # step-N names sort by step
            return None
        newest = published[-1]
        fetched = self.store.fetch(f"{prefix}/{newest}", local / newest)
        print(f"artifact sync: fetched checkpoint {self.store.url}/{prefix}/{newest}", file=sys.stderr)
        return fetched

    def push_checkpoint(self, checkpoint: Path) -> None:
        """Publish a complete checkpoint directory (rank 0, after save_checkpoint renamed it into place)."""
        key = self.key(checkpoint)
        if self.store.marker(key) is None:
            self.store.upload(checkpoint, key)

    def push_result(self, output_dir: Path) -> str:
        """Publish the final model, tokenizer and summary.json (not the checkpoints, published already)."""
        files = {
            p.relative_to(output_dir).as_posix(): p
            for p in sorted(output_dir.rglob("*"))
            if p.is_file() and p.relative_to(output_dir).parts[0] != CHECKPOINTS and not p.name.startswith(".")
        }
        key = f"{self.key(output_dir)}/{RESULT}-{uuid.uuid4().hex[:12]}"
        self.store.upload_files(files, key)
        return key
