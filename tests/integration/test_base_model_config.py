"""BaseModelConfig (the base_model Launchpad form) and TinyModelPreset (core.base_model) hold one set of defaults."""

from __future__ import annotations

import dataclasses

import pytest

from assets.models import NOT_PRESET_KNOBS, BaseModelConfig
from core.base_model import TinyModelPreset
from core.model_families import DEFAULT_FAMILY


def test_every_preset_knob_defaults_to_the_preset_value() -> None:
    preset = {f.name: f for f in dataclasses.fields(TinyModelPreset)}
    knobs = set(BaseModelConfig.model_fields) - NOT_PRESET_KNOBS
    assert knobs <= set(preset)
    for name in knobs:
        field = BaseModelConfig.model_fields[name]
        assert field.default == preset[name].default, name
        assert field.annotation.__name__ == preset[name].type, name
    assert BaseModelConfig(local_path="").preset() == TinyModelPreset()


def test_family_defaults_to_the_llama_preset() -> None:
    """The family is not a preset knob: it picks the network (core/model_families.py); llama is the preset."""
    assert BaseModelConfig(local_path="").family == DEFAULT_FAMILY == "llama"
    assert BaseModelConfig(local_path="", family="gemma3").preset() == TinyModelPreset()


def test_knobs_reach_the_preset() -> None:
    config = BaseModelConfig(local_path="", vocab_size=600, num_hidden_layers=2, template="chatml", seed=3)
    assert config.preset() == TinyModelPreset(vocab_size=600, num_hidden_layers=2, seed=3)


def test_local_path_defaults_to_base_model_path_when_the_config_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read when a run builds its config, not when the code location was imported."""
    monkeypatch.setenv("BASE_MODEL_PATH", "/models/first")
    assert BaseModelConfig().local_path == "/models/first"
    monkeypatch.setenv("BASE_MODEL_PATH", "/models/second")
    assert BaseModelConfig().local_path == "/models/second"
    assert BaseModelConfig(local_path="").local_path == ""  # the preset, whatever BASE_MODEL_PATH says
    monkeypatch.delenv("BASE_MODEL_PATH")
    assert BaseModelConfig().local_path == ""
