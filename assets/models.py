"""Model layer: the base model (tokenizer with chat template + initial weights)."""

import dagster as dg

from assets.conversations import curated_conversations
from core.atomic_io import Leftover
from core.base_model import TinyModelPreset, import_local_model, save_preset
from core.settings import load_settings
from resources.artifacts import ArtifactStore, leftovers_metadata
from resources.warehouse import DuckDBWarehouse

_DEFAULT_PRESET = TinyModelPreset()


class BaseModelConfig(dg.Config):
    """Either a local Hugging Face model directory (`local_path`) or the tiny built-in preset."""

    local_path: str = load_settings().base_model_path
    vocab_size: int = _DEFAULT_PRESET.vocab_size
    hidden_size: int = _DEFAULT_PRESET.hidden_size
    intermediate_size: int = _DEFAULT_PRESET.intermediate_size
    num_hidden_layers: int = _DEFAULT_PRESET.num_hidden_layers
    num_attention_heads: int = _DEFAULT_PRESET.num_attention_heads
    num_key_value_heads: int = _DEFAULT_PRESET.num_key_value_heads
    template: str = _DEFAULT_PRESET.template
    seed: int = _DEFAULT_PRESET.seed

    def preset(self) -> TinyModelPreset:
        return TinyModelPreset(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            template=self.template,
            seed=self.seed,
        )


def training_texts(warehouse: DuckDBWarehouse) -> list[str]:
    """Message contents of the train split only, so validation/test text never shapes the vocabulary."""
    rows = warehouse.query(
        "SELECT m.content AS content FROM curated.conversations, UNNEST(messages) AS t(m) "
        "WHERE split = 'train' ORDER BY conversation_id"
    )
    return rows["content"].to_list() if rows.height else []


@dg.asset(
    group_name="model",
    kinds={"pytorch", "huggingface"},
    deps=[curated_conversations],
    description=(
        "A Hugging Face model directory (save_pretrained): tokenizer with chat template + initial weights. "
        "Built-in tiny preset by default; BASE_MODEL_PATH or config local_path imports a local model."
    ),
)
def base_model(
    context: dg.AssetExecutionContext,
    config: BaseModelConfig,
    warehouse: DuckDBWarehouse,
    artifacts: ArtifactStore,
) -> dg.MaterializeResult:
    leftovers: list[Leftover] = []
    with artifacts.new_version("base_model", leftovers=leftovers) as (version, tmp):
        if config.local_path:
            card = import_local_model(config.local_path, tmp)
            context.log.info(f"imported local model {config.local_path}")
        else:
            texts = training_texts(warehouse)
            if not texts:
                raise RuntimeError(
                    "curated.conversations has no train rows to train the tokenizer on: "
                    "materialize curated_conversations for at least one day first"
                )
            card = save_preset(tmp, texts, config.preset())
            context.log.info(f"built the tiny preset from {len(texts)} train messages")
    path = artifacts.version_path("base_model", version)
    meta = {
        "path": dg.MetadataValue.path(str(path)),
        "version": version,
        "source": card["source"],
        "architecture": card["architecture"],
        "vocab_size": card["vocab_size"],
        "tokenizer_fingerprint": card["tokenizer_fingerprint"],
        "cleaned_up": leftovers_metadata(leftovers),
    }
    if "parameters" in card:
        meta["parameters"] = dg.MetadataValue.int(card["parameters"])
    if "preset" in card:
        meta["preset"] = dg.MetadataValue.json(card["preset"])
    return dg.MaterializeResult(
        metadata=meta, data_version=dg.DataVersion(card["tokenizer_fingerprint"][:16] + version)
    )
