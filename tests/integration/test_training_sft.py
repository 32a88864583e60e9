"""End-to-end runs of `python -m training.sft`: in-process, as a failing process, under torchrun."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from support.processes import training_ranks
from support.training_builders import (
    REPO,
    config_dict,
    make_base_model,
    make_shards,
    run_torchrun,
    subprocess_env,
    torchrun_cmd,
    write_config,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.shards import write_shard_directory
from core.tokenizer_training import tokenizer_fingerprint
from training.config import TrainConfig
from training.sft import train

pytestmark = pytest.mark.usefixtures("restore_torch_globals")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def shards(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards") / "v1", base_model, n=60)


def _counting_shards(out: Path, base_model: Path) -> Path:
    """Learnable data: each response counts up by one from a random start (loss must fall)."""
    rows = []
    for i in range(80):
        start, length = (i * 37) % 250, 10 + i % 30
        rows.append(
            {
                "conversation_id": f"n{i}",
                "split": "train",
                "input_ids": [start + j for j in range(length)],
                "loss_mask": [0, 0] + [1] * (length - 2),
            }
        )
    out.mkdir(parents=True)
    write_shard_directory(
        out,
        pl.DataFrame(rows),
        partition="2026-01-02",
        tokenizer_fingerprint=tokenizer_fingerprint(base_model),
        source_data_version="count-v1",
    )
    return out


@pytest.mark.slow
def test_single_process_run_writes_a_loadable_model_and_summary(
    base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shard_dir = _counting_shards(tmp_path / "shards", base_model)
    out = tmp_path / "out"
    cfg = config_dict(
        base_model,
        [shard_dir],
        out,
        max_steps=30,
        lr=3e-3,
        log_every=10,
        checkpoint_every=100,
        pack_buffer_rows=40,
        compile="auto",
    )
    summary = train(TrainConfig.from_dict(cfg))

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tokenizer.chat_template and len(tokenizer) == model.config.vocab_size
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    curve = summary["loss_curve"]
    assert [p["step"] for p in curve] == list(range(1, 31)) and summary["steps"] == 30
    assert curve[-1]["loss"] < 0.7 * curve[0]["loss"]  # it learns to count
    assert summary["best_loss"] <= summary["final_loss"] == curve[-1]["loss"]
    assert 0.5 < summary["packing_efficiency"] <= 1 and summary["tokens_per_second"] > 0
    assert summary["tokens_seen"] > summary["loss_tokens"] > 0
    assert summary["mfu_estimate"] > 0 and summary["peak_flops_source"] == "config"
    # CPU defaults: per-conversation attention, compiled decoder layers; compilation is the warm-up step.
    assert summary["attn_implementation"] == "packed_sdpa" and summary["compiled"] is True
    assert summary["cpu_kernels"] == ["attention", "cross_entropy"]  # this machine has a C compiler
    assert summary["warmup_seconds"] > 0
    assert summary["tokenizer_fingerprint"] == tokenizer_fingerprint(base_model)
    assert summary["adapter"] is None and summary["trainable_parameters"] == summary["parameters"]
    assert summary["data"][0]["source_data_version"] == "count-v1"
    assert len(summary["data"][0]["manifest_sha256"]) == 64
    assert summary["conversations"]["total"] == 80 and summary["config"]["max_steps"] == 30
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("step ")] == ["10/30", "20/30", "30/30"]


@pytest.mark.slow
def test_sigusr1_prints_every_threads_stack_and_the_run_goes_on(base_model: Path, shards: Path, tmp_path: Path) -> None:
    """What operations.md tells a user to do with a rank that looks stuck."""
    out = tmp_path / "out"
    cfg = config_dict(base_model, [shards], out, max_steps=200, log_every=1, checkpoint_every=1000)
    config = write_config(tmp_path / "cfg.json", cfg)
    proc = subprocess.Popen(
        [os.sys.executable, "-m", "training.sft", "--config", str(config)],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        while first and not first.startswith("step "):
            first = proc.stdout.readline()
        assert first.startswith("step "), "the run printed no step line"
        proc.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "(most recent call first)" in err and "training/sft.py" in err
    assert json.loads((out / "summary.json").read_text())["steps"] == 200


@pytest.mark.slow
def test_failed_run_exits_nonzero_with_traceback(base_model: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-shards"
    config = write_config(tmp_path / "cfg.json", config_dict(base_model, [missing], tmp_path / "out"))
    proc = subprocess.run(
        [os.sys.executable, "-m", "training.sft", "--config", str(config)],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert f"{missing} has no manifest.json" in proc.stderr


@pytest.mark.slow
def test_one_failing_rank_fails_the_torchrun_job(base_model: Path, tmp_path: Path) -> None:
    """Rank 1 gets no data (1 conversation, 2 ranks) and raises; rank 0 is stopped, the job fails."""
    one = make_shards(tmp_path / "one", base_model, n=1)
    config = write_config(tmp_path / "cfg.json", config_dict(base_model, [one], tmp_path / "out"))
    proc = run_torchrun(2, "--config", str(config), cwd=tmp_path, env=subprocess_env(), timeout=300)
    assert proc.returncode != 0
    assert "[rank 1] training failed:\nTraceback (most recent call last)" in proc.stderr
    assert "rank 1 has no conversations to train on" in proc.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


def _pipes_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    from dagster_pipes import encode_param

    context = {
        "asset_keys": ["trained_checkpoint"],
        "code_version_by_asset_key": None,
        "provenance_by_asset_key": None,
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "test-run",
        "job_name": None,
        "retry_number": 0,
        "extras": {},
    }
    (tmp_path / "context.json").write_text(json.dumps(context))
    messages = tmp_path / "messages.jsonl"
    env = subprocess_env()
    env["DAGSTER_PIPES_CONTEXT"] = encode_param({"path": str(tmp_path / "context.json")})
    env["DAGSTER_PIPES_MESSAGES"] = encode_param({"path": str(messages)})
    return env, messages


@pytest.mark.slow
def test_torchrun_under_dagster_pipes_reports_from_rank_zero_only(
    base_model: Path, shards: Path, tmp_path: Path
) -> None:
    env, messages = _pipes_env(tmp_path)
    config = write_config(tmp_path / "cfg.json", config_dict(base_model, [shards], tmp_path / "out"))
    proc = run_torchrun(2, "--config", str(config), cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sent = [json.loads(line) for line in messages.read_text().splitlines()]
    methods = [m["method"] for m in sent]
    assert methods.count("opened") == 1 and methods.count("closed") == 1  # rank 1 never opened Pipes
    progress = [m["params"]["payload"] for m in sent if m["method"] == "report_custom_message"]
    assert [p["step"] for p in progress] == [2, 4, 6] and all(p["tokens_per_second"] > 0 for p in progress)
    logs = [m["params"]["message"] for m in sent if m["method"] == "log"]
    assert any(line.startswith("step 6/6 loss") for line in logs)
    (materialization,) = [m["params"] for m in sent if m["method"] == "report_asset_materialization"]
    meta = materialization["metadata"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert meta["steps"]["raw_value"] == 6 and meta["world_size"]["raw_value"] == 2
    assert meta["final_loss"]["raw_value"] == summary["final_loss"]
    assert meta["loss_curve"]["raw_value"] == summary["loss_curve"]
    assert meta["path"] == {"raw_value": str(tmp_path / "out"), "type": "path"}
    assert materialization["data_version"] == summary["weights_sha256"][:16]
    assert proc.stdout.count("step 6/6 loss") == 1  # stdout lines from rank 0 only


LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj", "up_proj"]}


@pytest.mark.slow
@pytest.mark.parametrize("adapter", [None, LORA], ids=["full", "lora"])
def test_killed_rank_then_resume_gives_the_same_weights_as_an_uninterrupted_run(
    base_model: Path, shards: Path, tmp_path: Path, adapter: dict | None
) -> None:
    """With LoRA the checkpoint holds the adapter next to the frozen base, and its dropout draws from the resumed
    RNG streams."""
    env = subprocess_env()
    overrides = {"max_steps": 40, "checkpoint_every": 4, "log_every": 40, "micro_batch_rows": 1, "adapter": adapter}
    ref_cfg = write_config(tmp_path / "ref.json", config_dict(base_model, [shards], tmp_path / "ref", **overrides))
    # Timeouts here are budgets for a loaded CI machine, not speed bounds (a run takes about 20 s alone).
    ref = run_torchrun(2, "--config", str(ref_cfg), cwd=REPO, env=env, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "crash"
    cfg = write_config(tmp_path / "crash.json", config_dict(base_model, [shards], out, **overrides))
    first = out / "checkpoints" / "step-00000004"
    proc = subprocess.Popen(
        torchrun_cmd(2, "--config", str(cfg)),
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
        victim = training_ranks(proc.pid).get(1)
        assert victim is not None, "could not find the rank-1 worker"
        os.kill(victim, signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)
    assert victim is not None and proc.returncode != 0, output[-3000:]
    assert not (out / "summary.json").exists(), "the run finished before the kill; make it longer"

    resumed = run_torchrun(2, "--config", str(cfg), "--resume", cwd=REPO, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout, resumed.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] and summary["steps"] == 40
    weights = ["model.safetensors", *(["adapter/adapter_model.safetensors"] if adapter else [])]
    for file in weights:
        reference, final = load_file(str(tmp_path / "ref" / file)), load_file(str(out / file))
        assert set(reference) == set(final)
        for name in reference:
            assert torch.equal(reference[name], final[name]), f"{file}: {name}"
    assert summary["loss_curve"] == json.loads((tmp_path / "ref" / "summary.json").read_text())["loss_curve"]
