"""The base_model asset imports a local model directory and shows what the import checked in its metadata."""

from __future__ import annotations

import copy
from pathlib import Path

import dagster as dg
import pytest
from support.masking_fixtures import tokenizer_for
from support.model_dirs import save_model_dir

from assets.models import BaseModelConfig, base_model
from core.vocab import padded_size
from resources.artifacts import ArtifactStore
from resources.warehouse import Warehouse


def _qwen3_dir(out: Path) -> Path:
    tokenizer = copy.deepcopy(tokenizer_for("chatml"))
    return save_model_dir(out, "qwen3", rows=padded_size(len(tokenizer)), tokenizer=tokenizer)


@pytest.mark.slow
def test_import_findings_reach_the_asset_metadata(tmp_path: Path) -> None:
    src = _qwen3_dir(tmp_path / "Qwen3-tiny")
    result = dg.materialize(
        [base_model],
        resources={
            "warehouse": Warehouse(path=str(tmp_path / "w.duckdb")),
            "artifacts": ArtifactStore(root=str(tmp_path / "artifacts")),
        },
        run_config=dg.RunConfig(
            {"base_model": BaseModelConfig(local_path=str(src), chat_template_defaults={"enable_thinking": False})}
        ),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("base_model")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert meta["source"] == "local" and meta["architecture"] == "Qwen3ForCausalLM"
    assert meta["end_of_turn"] == {"token": "<|im_end|>", "id": 2, "stops_generation": True}
    assert meta["vocab_padding"]["embedding_rows"] == padded_size(meta["vocab_size"])
    assert meta["chat_template"]["probes_rendered"] == ["system/user/assistant", "user/assistant"]
    assert meta["warnings"] == []
    # The switch this template does not use is still written into the version's template, and reported.
    assert meta["chat_template_defaults"] == {"enable_thinking": False}
