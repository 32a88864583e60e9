"""End-to-end runs of `python -m training.dpo`: in-process, and under torchrun with a killed rank."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.processes import training_ranks
from support.training_builders import (
    REPO,
    config_dict,
    make_base_model,
    make_pair_shards,
    run_torchrun,
    subprocess_env,
    torchrun_cmd,
    write_config,
)
from transformers import AutoModelForCausalLM

from training.config import ConfigError
from training.dpo import train
from training.dpo_config import DPOConfig

pytestmark = pytest.mark.usefixtures("restore_torch_globals")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def pairs(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pair_shards(tmp_path_factory.mktemp("pairs") / "v1", base_model, n=48)


def _config(base_model: Path, pairs: Path, out: Path, **overrides) -> dict:
    cfg = config_dict(base_model, [pairs], out, seq_len=96, grad_accum_steps=1, attn_implementation="pair_sdpa")
    cfg.update({"beta": 0.5, "lr": 5e-3, "sft_weight": 0.0, **overrides})  # plain DPO unless a test says otherwise
    return cfg


def test_a_run_raises_the_chosen_reward_and_records_it(base_model: Path, pairs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = train(DPOConfig.from_dict(_config(base_model, pairs, out, max_steps=12)))
    assert summary is not None and summary["steps"] == 12
    curve = summary["preference_curve"]
    assert summary["loss_curve"][0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1
    assert curve[-1]["reward_margin"] > 0 and summary["final_accuracy"] > 0.5
    assert summary["loss_curve"][-1]["loss"] < summary["loss_curve"][0]["loss"]
    assert summary["trainable_parameters"] == summary["parameters"]
    assert (out / "reference_logps").is_dir()
    AutoModelForCausalLM.from_pretrained(out)  # the output is a loadable HF model dir
    assert json.loads((out / "summary.json").read_text())["weights_sha256"] == summary["weights_sha256"]


def test_sft_weight_keeps_the_chosen_completion_more_likely(base_model: Path, pairs: Path, tmp_path: Path) -> None:
    nll = {}
    for weight in (0.0, 1.0):
        summary = train(
            DPOConfig.from_dict(_config(base_model, pairs, tmp_path / str(weight), max_steps=12, sft_weight=weight))
        )
        assert summary is not None and summary["sft_weight"] == weight
        nll[weight] = summary["final_chosen_nll"]
    assert nll[1.0] < nll[0.0]


def test_precomputed_and_on_the_fly_references_train_alike(base_model: Path, pairs: Path, tmp_path: Path) -> None:
    runs = {}
    for reference in ("precomputed", "on_the_fly"):
        cfg = _config(base_model, pairs, tmp_path / reference, max_steps=4, reference=reference)
        runs[reference] = train(DPOConfig.from_dict(cfg))
    for a, b in zip(runs["precomputed"]["loss_curve"], runs["on_the_fly"]["loss_curve"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_bad_preference_settings_name_the_key(base_model: Path, pairs: Path, tmp_path: Path) -> None:
    for key, value, match in (
        ("beta", 0.0, "beta"),
        ("loss_type", "hinge", "loss_type"),
        ("label_smoothing", 0.5, "label_smoothing"),
        ("sft_weight", -1.0, "sft_weight"),
        ("sft_weight", float("nan"), "sft_weight"),
        ("reference", "nearby", "reference"),
        ("attn_implementation", "packed_sdpa", "sdpa"),
    ):
        with pytest.raises(ConfigError, match=match):
            DPOConfig.from_dict(_config(base_model, pairs, tmp_path / "x", **{key: value}))


@pytest.mark.slow
def test_killed_rank_then_resume_gives_the_same_weights_as_an_uninterrupted_run(
    base_model: Path, pairs: Path, tmp_path: Path
) -> None:
    env = subprocess_env()
    overrides = {"max_steps": 30, "checkpoint_every": 3, "log_every": 30, "micro_batch_rows": 1}
    ref_cfg = write_config(tmp_path / "ref.json", _config(base_model, pairs, tmp_path / "ref", **overrides))
    ref = run_torchrun(2, "--config", str(ref_cfg), cwd=REPO, env=env, timeout=300, module="training.dpo")
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "crash"
    cfg = write_config(tmp_path / "crash.json", _config(base_model, pairs, out, **overrides))
    first = out / "checkpoints" / "step-00000003"
    proc = subprocess.Popen(
        torchrun_cmd(2, "--config", str(cfg), module="training.dpo"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    victim = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not first.is_dir():
        time.sleep(0.01)
    if proc.poll() is None:
        victim = training_ranks(proc.pid, "training.dpo").get(1)
        assert victim is not None, "could not find the rank-1 worker"
        os.kill(victim, signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)
    assert victim is not None and proc.returncode != 0, output[-3000:]
    assert not (out / "summary.json").exists(), "the run finished before the kill; make it longer"

    resumed = run_torchrun(2, "--config", str(cfg), "--resume", cwd=REPO, env=env, timeout=300, module="training.dpo")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "reference log-probs reused" in resumed.stdout, resumed.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] and summary["steps"] == 30
    reference, final = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(reference) == set(final)
    for name in reference:
        assert torch.equal(reference[name], final[name]), name
    ref_summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["loss_curve"] == ref_summary["loss_curve"]
    assert summary["preference_curve"] == ref_summary["preference_curve"]


def test_a_failing_run_exits_nonzero_with_the_traceback(base_model: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "bad.json", _config(base_model, tmp_path / "missing", tmp_path / "o"))
    proc = subprocess.run(
        torchrun_cmd(1, "--config", str(cfg), module="training.dpo"),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "preference training failed" in proc.stderr and "missing" in proc.stderr


@pytest.mark.slow
def test_fsdp2_trains_as_ddp(base_model: Path, pairs: Path, tmp_path: Path) -> None:
    """The same preference run sharded with FSDP2 follows the DDP run's loss (two processes, gloo)."""
    env = subprocess_env()
    curves = {}
    for strategy in ("ddp", "fsdp2"):
        out = tmp_path / strategy
        cfg = _config(base_model, pairs, out, max_steps=6, micro_batch_rows=1, distributed=strategy)
        proc = run_torchrun(2, "--config", str(write_config(tmp_path / f"{strategy}.json", cfg)), cwd=REPO, env=env,
                            timeout=300, module="training.dpo")  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        curves[strategy] = json.loads((out / "summary.json").read_text())["loss_curve"]
    for a, b in zip(curves["ddp"], curves["fsdp2"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
