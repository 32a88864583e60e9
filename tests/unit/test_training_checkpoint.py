"""Checkpoints are complete, verifiable, pickle-free, pruned, and resume bit-exactly."""

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from support.training_builders import config_dict, make_base_model, make_shards

from training.checkpoint import (
    MARKER,
    capture_rng,
    checkpoint_problems,
    find_resume_checkpoint,
    list_checkpoints,
    restore_rng,
)
from training.config import ConfigError, TrainConfig
from training.distributed import DistContext
from training.sft import train

pytestmark = pytest.mark.usefixtures("restore_torch_globals")

SINGLE = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), initialized=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    base = make_base_model(root / "base")
    return base, make_shards(root / "shards", base, n=40)


@pytest.fixture(scope="module")
def run_a(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted single-process run: 6 steps, checkpoint every 2, keep 2."""
    base, shards = data
    out = tmp_path_factory.mktemp("run") / "a"
    train(TrainConfig.from_dict(config_dict(base, [shards], out, checkpoint_every=2)))
    torch.use_deterministic_algorithms(False)
    return out


def test_rng_states_round_trip() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    saved = capture_rng()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(saved)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_checkpoints_are_pruned_complete_and_pickle_free(run_a: Path) -> None:
    kept = list_checkpoints(run_a)
    assert [p.name for p in kept] == ["step-00000004", "step-00000006"]  # step 2 pruned (keep 2)
    assert not list((run_a / "checkpoints").glob(".tmp-*"))
    for ckpt in kept:
        assert checkpoint_problems(ckpt) == []
        assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == int(ckpt.name[5:])
        for pt in ckpt.glob("*.pt"):
            torch.load(pt, weights_only=True)  # tensors and plain types only
    final = load_file(str(kept[-1] / "model.safetensors"))
    assert torch.equal(
        final["model.embed_tokens.weight"], load_file(str(run_a / "model.safetensors"))["model.embed_tokens.weight"]
    )


def test_resume_skips_corrupt_and_incomplete_checkpoints_and_matches_uninterrupted_run(
    run_a: Path, data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, shards = data
    out = tmp_path / "b"
    (out / "checkpoints").mkdir(parents=True)
    for ckpt in list_checkpoints(run_a):
        shutil.copytree(ckpt, out / "checkpoints" / ckpt.name)
    corrupt = out / "checkpoints" / "step-00000006" / "model.safetensors"
    blob = bytearray(corrupt.read_bytes())
    blob[-10] ^= 0xFF
    corrupt.write_bytes(bytes(blob))
    (out / "checkpoints" / ".tmp-step-00000008").mkdir()  # a write that died before its rename

    assert find_resume_checkpoint(SINGLE, out).name == "step-00000004"
    summary = train(TrainConfig.from_dict(config_dict(base, [shards], out, checkpoint_every=2)), resume=True)
    assert "model.safetensors does not match its sha256" in capsys.readouterr().err
    assert summary["resumed_from"] == [str(out / "checkpoints" / "step-00000004")]
    reference, resumed = load_file(str(run_a / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(reference) == set(resumed)
    for name in reference:
        assert torch.equal(reference[name], resumed[name]), name
    expected = json.loads((run_a / "summary.json").read_text())
    assert summary["loss_curve"] == expected["loss_curve"]
    assert summary["tokens_seen"] == expected["tokens_seen"]
    assert summary["packing_efficiency"] == expected["packing_efficiency"]
    assert summary["conversations"] == expected["conversations"]


def test_existing_run_needs_resume_and_same_world_size(run_a: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    base, shards = data
    with pytest.raises(ConfigError, match="already holds checkpoints; pass --resume"):
        train(TrainConfig.from_dict(config_dict(base, [shards], run_a)))
    out = tmp_path / "c"
    shutil.copytree(run_a / "checkpoints", out / "checkpoints")
    marker_path = out / "checkpoints" / "step-00000006" / MARKER
    marker = json.loads(marker_path.read_text())
    marker_path.write_text(json.dumps({**marker, "world_size": 2}))
    with pytest.raises(RuntimeError, match="written by 2 processes but this run has 1"):
        find_resume_checkpoint(SINGLE, out)


def test_resume_refuses_a_config_that_changes_the_data_stream(
    run_a: Path, data: tuple[Path, Path], tmp_path: Path
) -> None:
    base, shards = data
    out = tmp_path / "d"
    shutil.copytree(run_a / "checkpoints", out / "checkpoints")
    with pytest.raises(ConfigError, match=r"config keys \['seq_len'\] differ"):
        train(TrainConfig.from_dict(config_dict(base, [shards], out, seq_len=32)), resume=True)
