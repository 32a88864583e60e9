import itertools
import json
import math
from pathlib import Path

import pytest

from training.config import ConfigError, TrainConfig, load_config
from training.sft import lr_factor

REQUIRED = {"base_model_dir": "/m", "shard_dirs": ["/s"], "output_dir": "/o"}


def test_defaults_are_documented_values() -> None:
    cfg = TrainConfig.from_dict(REQUIRED)
    assert (cfg.split, cfg.seq_len, cfg.overlong, cfg.distributed, cfg.device, cfg.dtype) == (
        "train",
        1024,
        "split",
        "ddp",
        "auto",
        "auto",
    )
    assert cfg.to_dict()["betas"] == [0.9, 0.95]


def test_defaults_are_every_optional_key_with_its_default() -> None:
    cfg = TrainConfig.from_dict(REQUIRED)
    defaults = TrainConfig.defaults()
    assert defaults == {k: v for k, v in cfg.to_dict().items() if k not in REQUIRED}
    defaults["betas"].append(0.5)  # a copy: changing it leaves the class default alone
    assert TrainConfig.defaults()["betas"] == [0.9, 0.95]


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({**REQUIRED, "max_step": 10}))
    with pytest.raises(ConfigError, match=r"unknown config keys \['max_step'\]"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"overlong": "truncate"}, "overlong must be one of"),
        ({"distributed": "fsdp"}, "distributed must be one of"),
        ({"seq_len": 0}, "seq_len must be an integer >= 1"),
        ({"shard_dirs": "/s"}, "shard_dirs must be a non-empty list"),
        ({"betas": [0.9]}, "betas must be two numbers"),
    ],
)
def test_invalid_values_are_refused(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({**REQUIRED, **override})


def test_missing_required_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"missing required config keys \['output_dir'\]"):
        TrainConfig.from_dict({"base_model_dir": "/m", "shard_dirs": ["/s"]})


def test_yaml_config_is_read(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("base_model_dir: /m\nshard_dirs: [/a, /b]\noutput_dir: /o\nseq_len: 256\n")
    cfg = load_config(path)
    assert cfg.shard_dirs == ["/a", "/b"] and cfg.seq_len == 256


def test_lr_schedule_warms_up_linearly_then_cosine_decays_to_min() -> None:
    cfg = TrainConfig.from_dict({**REQUIRED, "max_steps": 110, "warmup_steps": 10, "min_lr_ratio": 0.1})
    assert [lr_factor(s, cfg) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_factor(9, cfg) == pytest.approx(1.0) and lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, cfg) == pytest.approx(0.1)
    factors = [lr_factor(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(factors))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"min_lr_ratio": "0.1"}, r"min_lr_ratio must be a finite number, got '0.1' \(str\)"),
        ({"weight_decay": None}, "weight_decay must be a finite number"),
        ({"betas": 0.9}, r"betas must be list\[float\]"),
        ({"betas": [0.9, "x"]}, r"betas must be list\[float\]"),
        ({"grad_clip": float("inf")}, "grad_clip must be a finite number"),
        ({"deterministic": "yes"}, "deterministic must be true or false"),
        ({"check_tokenizer_fingerprint": 0}, "check_tokenizer_fingerprint must be true or false"),
        ({"device": 0}, "device must be str"),
        ({"shard_dirs": ["/a", 3]}, r"shard_dirs must be list\[str\]"),
        ({"lr": True}, "lr must be a finite number"),
    ],
)
def test_wrong_types_are_config_errors_naming_the_key(override: dict, message: str) -> None:
    """A wrong type from a JSON file or extra_json is refused up front, not a TypeError deep in a trainer."""
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({**REQUIRED, **override})


def test_unknown_key_error_suggests_the_close_match() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'pack_bufer_rows' -> 'pack_buffer_rows'"):
        TrainConfig.from_dict({**REQUIRED, "pack_bufer_rows": 1024})


def test_importing_the_config_module_stays_cheap() -> None:
    """The Dagster process validates configs with this module before launching; it must not pull in torch."""
    import subprocess
    import sys

    code = "import sys, training.config; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_adapter_by_default_and_an_adapter_mapping_is_completed_with_the_lora_defaults() -> None:
    assert TrainConfig.from_dict(REQUIRED).adapter is None and TrainConfig.from_dict(REQUIRED).lora is None
    cfg = TrainConfig.from_dict({**REQUIRED, "adapter": {"type": "lora", "r": 4, "target_modules": ["q_proj"]}})
    assert cfg.adapter == {"type": "lora", "r": 4, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj"]}
    assert cfg.lora is not None and (cfg.lora.r, cfg.lora.alpha) == (4, 16)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # the recorded config reads back as the same run


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        ("lora", r"adapter must be a mapping of keys to values, or null, got 'lora' \(str\)"),
        ({"type": "lora", "rank": 8}, r"unknown adapter keys \['rank'\]; valid keys are"),
        ({"r": 8}, r"adapter.type is missing"),
        ({"type": "ia3"}, r"adapter.type must be one of \('lora',\), got 'ia3'"),
        ({"type": "lora", "r": 0}, r"adapter.r must be an integer >= 1"),
        ({"type": "lora", "r": 2.5}, r"adapter.r must be an integer >= 1"),
        ({"type": "lora", "alpha": -1}, r"adapter.alpha must be a finite number > 0"),
        ({"type": "lora", "dropout": 1.0}, r"adapter.dropout must be a number in \[0, 1\)"),
        ({"type": "lora", "dropout": -0.1}, r"adapter.dropout must be a number in \[0, 1\)"),
        ({"type": "lora", "target_modules": []}, r"adapter.target_modules must be a non-empty list"),
        ({"type": "lora", "target_modules": "q_proj"}, r"adapter.target_modules must be a non-empty list"),
        ({"type": "lora", "target_modules": ["q_proj", "q_proj"]}, r"adapter.target_modules names a module twice"),
    ],
)
def test_bad_adapters_are_config_errors_naming_the_key(adapter: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({**REQUIRED, "adapter": adapter})
