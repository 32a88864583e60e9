"""Builders shared by the training tests: a tiny base model, random shard dirs, configs, subprocess env."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from core.base_model import TinyModelPreset, save_preset
from core.shards import write_shard_directory
from core.tokenizer_training import tokenizer_fingerprint
from support.processes import training_ranks

REPO = Path(__file__).resolve().parents[2]
TEXTS = [f"Member {i} watched The Silent Harbor ({1990 + i % 30}) and liked drama {i % 7}." for i in range(200)]
# The base_model asset's config for a model small enough to train in seconds in the asset and e2e tests.
TINY_MODEL = {
    "vocab_size": 800,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}
# trained_checkpoint's `extra_json` for asset runs whose subject is not compiled layers: inductor compiling each
# trainer process costs more than a tiny run (config_dict below leaves compile off for the same reason).
NO_COMPILE_EXTRA_JSON = '{"compile": "off"}'
TINY = TinyModelPreset(
    vocab_size=400,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def make_base_model(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    save_preset(out, TEXTS, TINY)
    return out


def random_rows(
    n: int, *, vocab: int, min_len: int, max_len: int, seed: int, split: str = "train", prefix: str = "c"
) -> pl.DataFrame:
    """Conversations of random tokens; each has a prompt (mask 0) then a response (mask 1)."""
    rng = np.random.default_rng(seed)
    ids, masks = [], []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        prompt = int(rng.integers(1, max(2, length // 2)))
        ids.append(rng.integers(0, vocab, length).astype(np.int32).tolist())
        masks.append([0] * prompt + [1] * (length - prompt))
    return pl.DataFrame(
        {
            "conversation_id": [f"{prefix}{seed}-{i}" for i in range(n)],
            "split": [split] * n,
            "input_ids": ids,
            "loss_mask": masks,
        }
    )


def make_shards(
    out: Path,
    base_model: Path,
    n: int = 40,
    *,
    min_len: int = 4,
    max_len: int = 40,
    seed: int = 0,
    rows_per_file: int = 16,
    vocab: int = 300,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_shard_directory(
        out,
        random_rows(n, vocab=vocab, min_len=min_len, max_len=max_len, seed=seed),
        partition="2026-01-01",
        tokenizer_fingerprint=tokenizer_fingerprint(base_model),
        source_data_version=f"test-{seed}",
        rows_per_file=rows_per_file,
    )
    return out


def random_pairs(
    n: int, *, vocab: int, seed: int, split: str = "train", max_part: int = 12, separable: bool = False
) -> pl.DataFrame:
    """Preference rows of random tokens: a prompt, then two completions whose last token is unmasked.

    `separable`: chosen tokens come from the lower half of the ids, rejected ones from the upper half, a
    preference a few steps can learn (random sides can only be memorized)."""
    rng = np.random.default_rng(seed)
    bounds = {"chosen": (0, vocab // 2), "rejected": (vocab // 2, vocab)} if separable else {}
    rows: dict[str, list[Any]] = {k: [] for k in ("pair_id", "split", "prompt_ids", "chosen_ids", "chosen_mask")}
    rows.update(rejected_ids=[], rejected_mask=[])
    for i in range(n):
        rows["pair_id"].append(f"p{seed}-{i}")
        rows["split"].append(split)
        rows["prompt_ids"].append(rng.integers(0, vocab, int(rng.integers(2, max_part))).tolist())
        for side in ("chosen", "rejected"):
            length = int(rng.integers(2, max_part))
            rows[f"{side}_ids"].append(rng.integers(*bounds.get(side, (0, vocab)), length).tolist())
            rows[f"{side}_mask"].append([1] * (length - 1) + [0])
    return pl.DataFrame(rows)


def make_pair_shards(
    out: Path, base_model: Path, n: int = 40, *, seed: int = 0, vocab: int = 300, separable: bool = False
) -> Path:
    """A preference_shards version directory of random pairs (`separable`: see random_pairs)."""
    from core.preferences.tokenize import PAIR_LAYOUT

    out.mkdir(parents=True, exist_ok=True)
    write_shard_directory(
        out,
        random_pairs(n, vocab=vocab, seed=seed, separable=separable),
        partition="2026-01-01",
        tokenizer_fingerprint=tokenizer_fingerprint(base_model),
        source_data_version=f"pairs-{seed}",
        rows_per_file=16,
        layout=PAIR_LAYOUT,
    )
    return out


def config_dict(base_model: Path, shard_dirs: list[Path], output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A tiny run's TrainConfig dict. Compile is off: inductor compiling the layers costs more than the run;
    tests about compiled layers pass compile="auto" (and tests/unit/test_training_compilation.py)."""
    cfg = {
        "base_model_dir": str(base_model),
        "shard_dirs": [str(d) for d in shard_dirs],
        "output_dir": str(output_dir),
        "seq_len": 64,
        "micro_batch_rows": 2,
        "grad_accum_steps": 2,
        "max_steps": 6,
        "lr": 1e-3,
        "warmup_steps": 2,
        "checkpoint_every": 3,
        "keep_checkpoints": 2,
        "pack_buffer_rows": 16,
        "log_every": 2,
        "device": "cpu",
        "deterministic": True,
        "cpu_threads": 1,
        "peak_flops": 1e10,
        "compile": "off",
    }
    cfg.update(overrides)
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def subprocess_env() -> dict[str, str]:
    """One thread per process (2-core CI box) and the repo importable from any cwd."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=path, PYTHONUNBUFFERED="1")
    return env


def torchrun_cmd(nproc: int, *args: str, module: str = "training.sft") -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        module,
        *args,
    ]


def run_torchrun(
    nproc: int, *args: str, env: dict[str, str], cwd: Path, timeout: float, module: str = "training.sft"
) -> subprocess.CompletedProcess:
    """torchrun of training.sft, like subprocess.run(capture_output=True, text=True); past `timeout`, each rank
    prints its threads' stacks (training.sft registers SIGUSR1 with faulthandler) before the tree is killed, and the
    test fails with them, so a hang shows where it waits."""
    cmd = torchrun_cmd(nproc, *args, module=module)
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in training_ranks(proc.pid).values():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGUSR1)
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"{' '.join(cmd)} did not exit within {timeout:.0f}s; its output and the ranks' stacks:\n"
            f"{out[-3000:]}\n{err[-12000:]}"
        ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
