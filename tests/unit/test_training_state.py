"""The loop's progress: recorded per step, carried through trainer_state.json, and a resume that keeps the data."""

import json
from pathlib import Path

import pytest

from training.config import ConfigError, TrainConfig
from training.loss import StepLoss
from training.metrics import Throughput
from training.state import TrainerState


def _cfg(tmp_path: Path, **overrides: object) -> TrainConfig:
    return TrainConfig(base_model_dir=str(tmp_path), shard_dirs=[str(tmp_path)], output_dir=str(tmp_path), **overrides)


def test_steps_add_up_and_the_best_loss_is_the_lowest() -> None:
    state = TrainerState()
    for loss, lr in ((2.0, 0.1), (1.5, 0.2), (1.75, 0.3)):
        state.record(StepLoss(mean_loss=loss, loss_tokens=10, tokens=25), lr)
    assert (state.step, state.tokens_seen, state.loss_tokens) == (3, 75, 30)
    assert state.best_loss == 1.5 and state.final_loss == 1.75
    assert state.loss_curve[1] == {"step": 2, "loss": 1.5, "lr": 0.2}
    assert TrainerState().final_loss is None


def test_a_checkpointed_state_resumes_equal_and_remembers_where_from(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    state = TrainerState()
    state.record(StepLoss(mean_loss=1.25, loss_tokens=3, tokens=7), 0.5)
    saved = json.loads(json.dumps(state.to_checkpoint(cfg)))  # as trainer_state.json holds it
    assert set(saved) == {"step", "tokens_seen", "loss_tokens", "best_loss", "loss_curve", "resumed_from", "config"}
    resumed = TrainerState.from_checkpoint(saved, cfg, tmp_path / "step-00000001")
    assert resumed.loss_curve == state.loss_curve and resumed.step == 1 and resumed.best_loss == 1.25
    assert resumed.resumed_from == [str(tmp_path / "step-00000001")]
    again = TrainerState.from_checkpoint(resumed.to_checkpoint(cfg), cfg, tmp_path / "step-00000002")
    assert again.resumed_from == [str(tmp_path / "step-00000001"), str(tmp_path / "step-00000002")]


def test_resume_refuses_a_config_that_changes_the_data_stream_but_not_the_schedule(tmp_path: Path) -> None:
    saved = TrainerState().to_checkpoint(_cfg(tmp_path))
    TrainerState.from_checkpoint(saved, _cfg(tmp_path, max_steps=5000, lr=1e-3), tmp_path)
    with pytest.raises(ConfigError, match=r"config keys \['seed'\] differ"):
        TrainerState.from_checkpoint(saved, _cfg(tmp_path, seed=1), tmp_path)


def test_throughput_leaves_out_the_warmup_step_unless_it_is_the_only_one() -> None:
    meter = Throughput()
    meter.record(100, 10.0)  # compilation
    assert meter.run_rate() == 10.0 and meter.warmup_seconds == 10.0
    meter.record(100, 1.0)
    meter.record(300, 1.0)
    assert meter.run_rate() == 200.0
    assert meter.take_window_rate() == 500 / 12.0  # the progress line's window includes the warm-up
    meter.record(50, 0.5)
    assert meter.take_window_rate() == 100.0
    assert Throughput().run_rate() == 0.0 and Throughput().warmup_seconds is None
