"""A model's evaluation results, kept by what determines them, so an unchanged model is not evaluated twice.

Every eval judges the new checkpoint, its base model and the champion. The base model and the champion rarely
change between evals (a preference checkpoint's eval re-judges the SFT champion the previous eval judged, on the
same held-out data), and judging one costs as much as judging the checkpoint. Their results are a function of:

- the model: its weight files and tokenizer files (contents, not paths);
- the held-out data: loss rows, recommendation cases and candidate sets (``data_fingerprint``);
- the settings the suite ran with;
- the code that computed them: the evaluation package's and the masking engine's sources, and the torch and
  transformers versions.

The key hashes all four; an entry is one JSON file written atomically, so a reader sees a whole entry or none. A
file that does not parse is treated as a miss and rewritten. Entries are never edited in place; an old one just
stops being looked up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from core.atomic_io import atomic_write_bytes, sha256_file
from core.fingerprints import sources_fingerprint

_MODEL_FILES = ("*.safetensors", "*.bin", "tokenizer*.json", "config.json", "*.jinja", "special_tokens_map.json")
_CODE_PACKAGES = ("evaluation", "core/masking")


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over the model's weight, config and tokenizer files (name and content)."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in _MODEL_FILES for p in Path(model_dir).glob(pattern) if p.is_file()})
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise FileNotFoundError(f"{model_dir} holds no weight files (*.safetensors or *.bin): not a model directory")
    for path in files:
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def data_fingerprint(rows: pl.DataFrame, cases: Sequence[Any], candidates: Sequence[Sequence[str]]) -> str:
    """sha256 over the held-out rows' ids and masks, every case (split, target, prompt) and its candidates."""
    digest = hashlib.sha256()
    ordered = rows.sort("conversation_id")
    for cid, split, kind, ids, mask in ordered.select(
        "conversation_id", "split", "kind", "input_ids", "loss_mask"
    ).iter_rows():
        digest.update(f"{cid}|{split}|{kind}|".encode())
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(np.asarray(mask, dtype=np.uint8).tobytes())
    for case, cands in zip(cases, candidates, strict=True):
        record = [case.conversation_id, case.split, case.target_title_id, list(map(dict, case.prompt_messages))]
        digest.update(json.dumps([record, list(cands)], sort_keys=True).encode())
    return digest.hexdigest()


def _code_fingerprint(packages: Iterable[str] = _CODE_PACKAGES) -> str:
    import torch
    import transformers

    return sources_fingerprint(packages, extra=f"torch {torch.__version__} transformers {transformers.__version__}")


class ResultCache:
    """Evaluation results of models under ``root`` (one JSON file per key)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._code = _code_fingerprint()

    def key(self, model_dir: Path, data: str, settings: Any) -> str:
        text = json.dumps(
            {"model": model_fingerprint(model_dir), "data": data, "settings": asdict(settings), "code": self._code},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.root / f"{key}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, result: dict[str, Any]) -> None:
        atomic_write_bytes(self.root / f"{key}.json", json.dumps(result, sort_keys=True).encode())
