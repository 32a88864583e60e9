"""Atomic, verifiable training checkpoints and resume from the newest valid one.

Layout: `<output_dir>/checkpoints/step-00000100/`
- model.safetensors  full (unsharded) weights; tied tensors stored once (aliases in checkpoint.json)
- optimizer.pt       full optimizer state (tensors + plain types only)
- scheduler.pt       LR scheduler state
- rank-00000.pt ...  per rank: python/numpy/torch/cuda RNG states and the data-loader position
- trainer_state.json step, loss curve, token counters, config
- checkpoint.json    written last: step, world size, sha256 of every other file

Every rank writes into one hidden temp dir; rank 0 writes checkpoint.json, fsyncs
and renames it into place, so a directory named step-N is complete. On resume a
checkpoint whose checksums do not match (bit rot, partial copy) is skipped.
`.pt` files are read with `torch.load(weights_only=True)`: no pickle execution.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from core.atomic_io import TMP_PREFIX, fsync_dir, fsync_tree, sha256_file
from training.distributed import (
    DistContext,
    full_model_state,
    full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
)

CHECKPOINTS = "checkpoints"
MARKER = "checkpoint.json"


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


# -- RNG -----------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- save ----------------------------------------------------------------------------------
def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage (tied embeddings): keep one name, record the aliases."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            kept[name] = tensor.contiguous()
    return kept, aliases


def _save_torch(obj: Any, path: Path) -> None:
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(
    ctx: DistContext,
    output_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader_state: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int,
) -> Path:
    """Collective: every rank must call it at the same step. Returns the final directory."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run that died mid-write
        tmp.mkdir(parents=True)
    ctx.barrier()
    model_state = full_model_state(model)  # collectives under FSDP2: all ranks
    optim_state = full_optimizer_state(model, optimizer)
    _save_torch({"rng": capture_rng(), "loader": loader_state}, tmp / rank_file(ctx.rank))
    if ctx.is_main:
        tensors, aliases = _dedupe(model_state)
        save_file(tensors, str(tmp / "model.safetensors"))
        _save_torch(optim_state, tmp / "optimizer.pt")
        _save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1, sort_keys=True))
    ctx.barrier()
    if ctx.is_main:
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        marker = {"step": step, "world_size": ctx.world_size, "aliases": aliases, "sha256": files}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True))
        fsync_tree(tmp)
        if final.exists():  # an invalid leftover with the same step (valid ones are resumed from)
            stale = final.parent / f"{TMP_PREFIX}stale-{final.name}"
            shutil.rmtree(stale, ignore_errors=True)
            os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, final)
        fsync_dir(final.parent)
        prune_checkpoints(output_dir, keep)
    ctx.barrier()
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete (renamed) checkpoint dirs, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# -- resume --------------------------------------------------------------------------------
def checkpoint_problems(path: Path) -> list[str]:
    """Why `path` cannot be resumed from (empty list = valid)."""
    marker_path = path / MARKER
    if not marker_path.is_file():
        return [f"{MARKER} is missing (incomplete write)"]
    try:
        marker = json.loads(marker_path.read_text())
        expected = marker["sha256"]
    except (json.JSONDecodeError, KeyError) as exc:
        return [f"{MARKER} is unreadable: {exc}"]
    problems = []
    for name, digest in sorted(expected.items()):
        file = path / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(file) != digest:
            problems.append(f"{name} does not match its sha256")
    return problems


def find_resume_checkpoint(ctx: DistContext, output_dir: Path) -> Path | None:
    """Newest valid checkpoint (rank 0 checks, everyone gets the answer); invalid ones are reported.

    A valid checkpoint from a different world size is an error, not a reason to start over:
    per-rank RNG and data positions only make sense for the same number of processes.
    """
    choice, error = None, None
    if ctx.is_main:
        for candidate in reversed(list_checkpoints(output_dir)):
            problems = checkpoint_problems(candidate)
            if problems:
                print(f"skipping checkpoint {candidate}: {'; '.join(problems)}", file=sys.stderr, flush=True)
                continue
            written_by = json.loads((candidate / MARKER).read_text()).get("world_size")
            if written_by != ctx.world_size:
                error = (
                    f"checkpoint {candidate} was written by {written_by} processes but this run has "
                    f"{ctx.world_size}; resume with the same nodes x processes, or start a new output_dir"
                )
            choice = str(candidate)
            break
    choice, error = ctx.broadcast_object((choice, error))
    if error:
        raise RuntimeError(error)
    return Path(choice) if choice else None


def load_checkpoint(
    ctx: DistContext,
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore weights/optimizer/scheduler/RNG in place; returns (loader_state, trainer_state)."""
    marker = json.loads((path / MARKER).read_text())
    weights = load_file(str(path / "model.safetensors"))
    for alias, name in marker.get("aliases", {}).items():
        weights[alias] = weights[name]
    load_full_model_state(model, weights)
    load_full_optimizer_state(model, optimizer, torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    own = torch.load(path / rank_file(ctx.rank), weights_only=True)
    restore_rng(own["rng"])
    return own["loader"], json.loads((path / "trainer_state.json").read_text())
