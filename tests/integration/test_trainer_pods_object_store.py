"""Trainers without a shared volume, against a local S3-compatible server: Kubernetes pods and the local launcher.

Each "pod" is `python -m training.k8s_node ... -- python -m training.sft --config ... --resume` (what the Job
runs) with the sync variables the launcher sets, on an emptied artifact directory, as a fresh emptyDir would be.
A pod killed after publishing a checkpoint is replaced by one that fetches it and resumes: the final weights equal
an uninterrupted run's, and the run worker copies the published result back.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
import torch
from safetensors.torch import load_file
from support.s3 import client
from support.training_builders import REPO, config_dict, make_base_model, make_shards, subprocess_env

from core.object_store import VersionStore
from resources.artifacts import ArtifactStore
from resources.launchers import LocalTorchrunLauncher, write_train_config
from training.artifact_sync import ROOT_ENV, URL_ENV, ArtifactSync
from training.k8s_node import CONFIG_KEY_ENV

OVERRIDES = {"max_steps": 24, "checkpoint_every": 4, "log_every": 24, "micro_batch_rows": 1, "keep_checkpoints": 2}


def _published_inputs(endpoint: str, cache: Path) -> tuple[str, ArtifactStore]:
    """A bucket whose artifact store holds a published tiny base model and one day of shards."""
    bucket = f"artifacts-{uuid.uuid4().hex[:8]}"
    client(endpoint).create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/platform"
    store = ArtifactStore(root=url, cache_dir=str(cache))
    with store.new_version("base_model") as (_, tmp):
        make_base_model(tmp)
    with store.new_version("tokenized_shards", "2026-01-01") as (_, tmp):
        make_shards(tmp, store.latest("base_model"))  # type: ignore[arg-type]
    return url, store


def _pod(cache: Path, url: str, config_path: Path, config_key: str, s3_env: dict[str, str]) -> subprocess.Popen:
    env = {**subprocess_env(), **s3_env, URL_ENV: url, ROOT_ENV: str(cache), CONFIG_KEY_ENV: config_key}
    command = [sys.executable, "-m", "training.sft", "--config", str(config_path), "--resume"]
    return subprocess.Popen(
        [sys.executable, "-m", "training.k8s_node", "--wait-for", "localhost", "--wait-seconds", "10", "--", *command],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_pod_lost_after_a_checkpoint_is_replaced_and_resumes_to_the_same_weights(s3_env: str, tmp_path: Path) -> None:
    url, store = _published_inputs(s3_env, tmp_path / "artifact-cache")  # the run worker's cache = the pods' path
    cache = Path(store.cache_dir)
    aws = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL")}
    base, shards = store.latest("base_model"), store.latest("tokenized_shards", "2026-01-01")
    assert base is not None and shards is not None

    # The reference: the same run, uninterrupted, on local disk.
    ref_config = write_train_config(config_dict(base, [shards], tmp_path / "ref", **OVERRIDES), tmp_path / "ref")
    ref = subprocess.run(
        [sys.executable, "-m", "training.sft", "--config", str(ref_config)],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-3000:]

    output_dir = store.staging_path("trained_checkpoint", "lineage-1")
    config_path = write_train_config(config_dict(base, [shards], output_dir, **OVERRIDES), output_dir)
    sync = ArtifactSync(VersionStore(url), cache)
    config_key = sync.push_config(config_path)
    checkpoints = f"trained_checkpoint/{output_dir.name}/checkpoints"

    shutil.rmtree(cache)  # pod A starts on an empty emptyDir
    first = _pod(cache, url, config_path, config_key, aws)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None and not sync.store.published(checkpoints):
        time.sleep(0.05)
    assert first.poll() is None, "pod A finished before it could be killed; make the run longer"
    os.killpg(first.pid, signal.SIGKILL)  # the node is lost
    first.communicate(timeout=60)
    published = sync.store.published(checkpoints)
    assert published, "pod A published no checkpoint"

    shutil.rmtree(cache)  # the replacement pod: a new node, an empty emptyDir
    second = _pod(cache, url, config_path, config_key, aws)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output[-3000:]
    assert "fetched the config, base model, shards and newest checkpoint" in output
    assert "resumed from" in output, output[-3000:]

    shutil.rmtree(cache)  # back on the run worker: it copies the published result into its output directory
    output_dir.mkdir(parents=True)
    assert sync.pull_result(output_dir) == output_dir
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["steps"] == OVERRIDES["max_steps"] and summary["resumed_from"]
    reference, final = (
        load_file(str(tmp_path / "ref" / "model.safetensors")),
        load_file(str(output_dir / "model.safetensors")),
    )
    assert set(reference) == set(final)
    for name in reference:
        assert torch.equal(reference[name], final[name]), name
    assert summary["loss_curve"] == json.loads((tmp_path / "ref" / "summary.json").read_text())["loss_curve"]
    assert not (output_dir / "checkpoints").exists()  # checkpoints stay in the store, not in the result


@pytest.mark.slow
def test_a_local_launch_publishes_its_checkpoints_and_a_retry_on_a_new_machine_resumes_from_them(
    s3_env: str, tmp_path: Path
) -> None:
    """The local launcher in a run worker pod: a retry in a new pod has no staging directory, only the store."""
    url, store = _published_inputs(s3_env, tmp_path / "artifact-cache")
    launcher = LocalTorchrunLauncher(
        nnodes=1, nproc_per_node=1, artifacts_url=url, artifacts_root=store.cache_dir, termination_timeout_s=5
    )
    output_dir = store.staging_path("trained_checkpoint", "lineage-1")

    @dg.asset
    def trained(context: dg.AssetExecutionContext, trainer: LocalTorchrunLauncher) -> dg.MaterializeResult:
        base, shards = store.latest("base_model"), store.latest("tokenized_shards", "2026-01-01")
        cfg = config_dict(base, [shards], output_dir, max_steps=8, checkpoint_every=4, log_every=8)
        result = trainer.launch(context, cfg, output_dir)
        return dg.MaterializeResult(metadata={"resumed_from": str(result.summary.get("resumed_from"))})

    first = dg.materialize([trained], resources={"trainer": launcher})
    checkpoints = f"trained_checkpoint/{output_dir.name}/checkpoints"
    assert VersionStore(url).published(checkpoints) == ["step-00000004", "step-00000008"]
    assert not [
        n for n in VersionStore(url).children(f"trained_checkpoint/{output_dir.name}") if n.startswith("result-")
    ]
    assert first.success

    shutil.rmtree(store.cache_dir)  # a new run worker pod: nothing local, the published checkpoints remain
    second = dg.materialize([trained], resources={"trainer": launcher})
    assert second.success
    event = second.get_asset_materialization_events()[0]
    assert "checkpoints/step-00000008" in event.materialization.metadata["resumed_from"].value
