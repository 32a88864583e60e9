"""Fixtures shared by the unit tests, each built once per test module that asks for it: a tiny model for
evaluation/, and a saved tiny model of every family."""

from pathlib import Path
from typing import Any

import pytest
import torch
from support.evaluation_fixtures import save_tiny_eval_model
from support.training_builders import TEXTS, TINY
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.model_families import FAMILIES, save_family_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_eval_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> a save_pretrained directory of that family's tiny preset (core.model_families)."""
    dirs = {}
    for name in FAMILIES:
        dirs[name] = tmp_path_factory.mktemp(name)
        save_family_model(dirs[name], TEXTS, TINY, name)
    return dirs
