"""trained_checkpoint owns its inputs: extra_json cannot redirect paths or lineage, and a bad config or a missing
upstream fails once, before any trainer starts (no retry of an error that only a person can fix)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from assets.training import (
    PLATFORM_KEYS,
    RUN_CONFIG_KEYS,
    TrainingRunConfig,
    build_train_config,
    trained_checkpoint,
)
from core.atomic_io import new_version_id
from core.shards import FORMAT_VERSION
from resources.artifacts import ArtifactStore
from resources.launchers import LaunchResult, TrainingLauncher
from resources.warehouse import Warehouse
from training.config import TrainConfig


class RecordingLauncher(TrainingLauncher):
    """Writes every launch to a journal file (resources may be copied, a file is not) and trains nothing."""

    journal: str

    @property
    def world_size(self) -> int:
        return 1

    def launch(self, context: dg.AssetExecutionContext, train_config: dict[str, Any], output_dir: Path) -> LaunchResult:
        with open(self.journal, "a") as fh:
            fh.write(json.dumps({"config": train_config, "output_dir": str(output_dir)}) + "\n")
        summary = {"steps": 1, "loss_curve": []}
        (output_dir / "summary.json").write_text(json.dumps(summary))
        return LaunchResult(output_dir=output_dir, summary=summary)


def _base_model(home: Path) -> Path:
    base = home / "artifacts" / "base_model" / new_version_id()
    base.mkdir(parents=True)
    (base / "tokenizer.json").write_text("{}")
    return base


def _shards(home: Path, day: str = "2026-01-01") -> Path:
    shards = home / "artifacts" / "tokenized_shards" / day / new_version_id()
    shards.mkdir(parents=True)
    manifest = {"format_version": FORMAT_VERSION, "splits": {"train": {"conversations": 3, "loss_tokens": 30}}}
    (shards / "manifest.json").write_text(json.dumps(manifest))
    return shards


def _launches(journal: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []


def _materialize(home: Path, config: dict[str, Any] | None = None) -> dg.ExecuteInProcessResult:
    resources = {
        "artifacts": ArtifactStore(root=str(home / "artifacts")),
        "trainer": RecordingLauncher(journal=str(home / "journal.jsonl")),
    }
    return dg.materialize(
        [trained_checkpoint],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {"trained_checkpoint": {"config": config or {}}}},
        raise_on_error=False,
    )


def _failure(result: dg.ExecuteInProcessResult, step: str) -> tuple[str, int]:
    """The step's failure message and how many times the step ran (a retried step runs more than once)."""
    data = result.failure_data_for_node(step)
    assert data is not None, f"{step} did not fail"
    message = data.user_failure_data.description if data.user_failure_data else data.error.message
    attempts = 1 + sum(1 for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY")
    return message or "", attempts


def _config(**overrides: Any) -> TrainingRunConfig:
    return TrainingRunConfig(**overrides)


# ---------------------------------------------------------------------------------------- extra_json ownership


@pytest.mark.parametrize(
    "key",
    ["output_dir", "base_model_dir", "shard_dirs", "split", "check_tokenizer_fingerprint", "cpu_threads"],
)
def test_extra_json_cannot_set_a_platform_owned_key(tmp_path: Path, key: str) -> None:
    value = {"shard_dirs": ["/elsewhere"], "check_tokenizer_fingerprint": False, "cpu_threads": 64}.get(key, "/etc/x")
    config = _config(extra_json=json.dumps({key: value}))
    with pytest.raises(dg.Failure) as failure:
        build_train_config(config, tmp_path / "base", [tmp_path / "shards"], tmp_path / "out")
    assert failure.value.allow_retries is False
    assert repr(key) in failure.value.description and "extra_json" in failure.value.description


def test_extra_json_cannot_repeat_a_run_config_field() -> None:
    with pytest.raises(dg.Failure, match=r"'seq_len'.*set it as the run config field seq_len") as failure:
        build_train_config(_config(extra_json='{"seq_len": 64}'), Path("/b"), [Path("/s")], Path("/o"))
    assert failure.value.allow_retries is False


def test_window_days_in_extra_json_points_at_the_run_config_field() -> None:
    with pytest.raises(dg.Failure, match=r"'window_days'.*run config field window_days"):
        build_train_config(_config(extra_json='{"window_days": 3}'), Path("/b"), [Path("/s")], Path("/o"))


def test_every_run_config_field_is_refused_in_extra_json() -> None:
    """One way to set each knob: every TrainingRunConfig field that is a TrainConfig key is platform-refused."""
    knobs = set(TrainingRunConfig.model_fields) - {"window_days", "extra_json"}
    assert knobs <= set(PLATFORM_KEYS)


def test_run_config_defaults_are_the_trainer_defaults() -> None:
    """One source per default: every knob of the Launchpad form defaults to TrainConfig's value, with its type."""
    trainer = {f.name: f for f in dataclasses.fields(TrainConfig)}
    defaults = TrainConfig.defaults()
    for key in RUN_CONFIG_KEYS:
        field = TrainingRunConfig.model_fields[key]
        assert field.default == defaults[key], key
        assert field.annotation.__name__ == trainer[key].type, key


def test_an_empty_run_config_trains_with_the_trainer_defaults(tmp_path: Path) -> None:
    """What `python -m training.sft` does with only the paths is what an empty Launchpad form does."""
    paths = {"base_model_dir": str(tmp_path / "b"), "shard_dirs": [str(tmp_path / "s")], "output_dir": str(tmp_path)}
    built = build_train_config(TrainingRunConfig(), tmp_path / "b", [tmp_path / "s"], tmp_path)
    assert built == TrainConfig.from_dict(paths).to_dict()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"pack_bufer_rows": 1024}, "pack_bufer_rows"),  # typo of pack_buffer_rows
        ({"overlong": "truncate"}, "overlong"),
        ({"betas": 0.9}, "betas"),
        ({"weight_decay": "a lot"}, "weight_decay"),
        ({"deterministic": "yes"}, "deterministic"),
        ({"peak_flops": float("nan")}, "peak_flops"),
    ],
)
def test_bad_extra_json_is_refused_before_launch(tmp_path: Path, extra: dict[str, Any], named: str) -> None:
    with pytest.raises(dg.Failure, match=named) as failure:
        build_train_config(_config(extra_json=json.dumps(extra)), tmp_path, [tmp_path], tmp_path / "o")
    assert failure.value.allow_retries is False


def test_a_bad_run_config_value_is_refused_before_launch(tmp_path: Path) -> None:
    with pytest.raises(dg.Failure, match=r"distributed must be one of") as failure:
        build_train_config(_config(distributed="fsdp"), tmp_path, [tmp_path], tmp_path / "o")
    assert failure.value.allow_retries is False


def test_valid_extra_json_gives_the_complete_validated_config(tmp_path: Path) -> None:
    config = _config(max_steps=7, extra_json='{"pack_buffer_rows": 64, "overlong": "drop"}')
    built = build_train_config(config, tmp_path / "b", [tmp_path / "s"], tmp_path / "o")
    assert built["output_dir"] == str(tmp_path / "o") and built["base_model_dir"] == str(tmp_path / "b")
    assert built["shard_dirs"] == [str(tmp_path / "s")] and built["split"] == "train"
    assert built["check_tokenizer_fingerprint"] is True
    assert (built["max_steps"], built["pack_buffer_rows"], built["overlong"]) == (7, 64, "drop")
    # Every trainer key is spelled out, so the run's metadata records the whole config, defaults included.
    assert {"keep_checkpoints", "betas", "device", "compile"} <= set(built)


@pytest.mark.parametrize(
    "config",
    [
        {"extra_json": '{"output_dir": "/etc/cron.d"}'},
        {"extra_json": '{"pack_bufer_rows": 1024}'},
        {"extra_json": '{"overlong": "truncate"}'},
        {"extra_json": "[1, 2]"},
        {"extra_json": '{"no_such_key": 1}'},
        {"seq_len": 1},
        {"lr": -1.0},
    ],
)
def test_a_bad_config_fails_the_asset_once_without_launching(tmp_path: Path, config: dict[str, Any]) -> None:
    _base_model(tmp_path)
    _shards(tmp_path)
    result = _materialize(tmp_path, config)
    assert not result.success
    message, attempts = _failure(result, "trained_checkpoint")
    assert attempts == 1, message
    assert "trained_checkpoint config" in message
    assert _launches(tmp_path / "journal.jsonl") == []
    assert ArtifactStore(root=str(tmp_path / "artifacts")).versions("trained_checkpoint") == []


def test_a_good_config_reaches_the_launcher_with_platform_paths(tmp_path: Path) -> None:
    base, shards = _base_model(tmp_path), _shards(tmp_path)
    result = _materialize(tmp_path, {"max_steps": 3, "extra_json": '{"pack_buffer_rows": 64}'})
    assert result.success
    (launch,) = _launches(tmp_path / "journal.jsonl")
    assert launch["config"]["output_dir"] == launch["output_dir"]
    assert launch["config"]["base_model_dir"] == str(base) and launch["config"]["shard_dirs"] == [str(shards)]
    assert launch["config"]["pack_buffer_rows"] == 64 and launch["config"]["max_steps"] == 3
    (version,) = ArtifactStore(root=str(tmp_path / "artifacts")).versions("trained_checkpoint")
    assert json.loads((version / "lineage.json").read_text())["base_model"] == str(base)


# ---------------------------------------------------------------------------- permanent errors are not retried


def test_missing_base_model_fails_once(tmp_path: Path) -> None:
    _shards(tmp_path)
    result = _materialize(tmp_path)
    message, attempts = _failure(result, "trained_checkpoint")
    assert attempts == 1, message
    assert "base_model" in message and "materialize base_model" in message
    assert _launches(tmp_path / "journal.jsonl") == []


@pytest.mark.parametrize("shard_root_exists", [False, True])
def test_no_tokenized_shards_fails_once(tmp_path: Path, shard_root_exists: bool) -> None:
    _base_model(tmp_path)
    if shard_root_exists:
        (tmp_path / "artifacts" / "tokenized_shards" / "2026-01-01").mkdir(parents=True)  # a day, no version
    result = _materialize(tmp_path)
    message, attempts = _failure(result, "trained_checkpoint")
    assert attempts == 1, message
    assert "tokenized_shards" in message
    assert _launches(tmp_path / "journal.jsonl") == []


def test_tokenized_shards_without_base_model_fails_once(tmp_path: Path) -> None:
    from assets.shards import tokenized_shards

    result = dg.materialize(
        [tokenized_shards],
        partition_key="2026-01-01",
        resources={
            "artifacts": ArtifactStore(root=str(tmp_path / "artifacts")),
            "warehouse": Warehouse(path=str(tmp_path / "warehouse.duckdb")),
        },
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    message, attempts = _failure(result, "tokenized_shards")
    assert attempts == 1, message
    assert "base_model" in message
