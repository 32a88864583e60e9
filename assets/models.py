"""Model layer: the base model (tokenizer with chat template + initial weights)."""

from typing import Any

import dagster as dg
from pydantic import Field

from assets.conversations import curated_conversations
from core.atomic_io import Leftover
from core.base_model import TinyModelPreset, import_local_model
from core.model_families import DEFAULT_FAMILY, FAMILIES, save_family_model
from core.settings import load_settings
from resources.artifacts import ArtifactStore, leftovers_metadata
from resources.warehouse import Warehouse

_PRESET = TinyModelPreset()
# The fields of BaseModelConfig that are not TinyModelPreset's knobs.
NOT_PRESET_KNOBS = frozenset({"local_path", "chat_template_defaults", "family"})


class BaseModelConfig(dg.Config):
    """Either a local Hugging Face model directory (`local_path`) or the tiny built-in preset.

    The preset knobs default to `TinyModelPreset`'s values (referenced, never re-typed; a test checks every one),
    so the Launchpad form and `core.base_model` cannot disagree. `local_path` defaults to BASE_MODEL_PATH as it is
    when the run starts, not when the code location was imported; an explicit "" builds the preset even when
    BASE_MODEL_PATH is set. `family` picks the network built around the preset's tokenizer and sizes
    (core/model_families.py); the default, "llama", is the preset as it always was.
    """

    local_path: str = Field(
        default_factory=lambda: load_settings().base_model_path,
        description="a local Hugging Face model directory to import; unset: BASE_MODEL_PATH; empty: the preset",
    )
    vocab_size: int = _PRESET.vocab_size
    hidden_size: int = _PRESET.hidden_size
    intermediate_size: int = _PRESET.intermediate_size
    num_hidden_layers: int = _PRESET.num_hidden_layers
    num_attention_heads: int = _PRESET.num_attention_heads
    num_key_value_heads: int = _PRESET.num_key_value_heads
    template: str = _PRESET.template
    seed: int = _PRESET.seed
    chat_template_defaults: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "defaults for the imported chat template's switches, written into its chat_template.jinja, e.g. "
            '{"enable_thinking": false} for Qwen3 on replies without reasoning; ignored for the preset'
        ),
    )
    family: str = Field(
        default=DEFAULT_FAMILY,
        description=f"the preset's model family, one of {sorted(FAMILIES)}; ignored when a local model is imported",
    )

    def preset(self) -> TinyModelPreset:
        """The preset these knobs describe; preset fields the form does not expose keep their defaults."""
        return TinyModelPreset(**self.model_dump(exclude=set(NOT_PRESET_KNOBS)))


def training_texts(warehouse: Warehouse) -> list[str]:
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
    warehouse: Warehouse,
    artifacts: ArtifactStore,
) -> dg.MaterializeResult:
    leftovers: list[Leftover] = []
    with artifacts.new_version("base_model", leftovers=leftovers) as (version, tmp):
        if config.local_path:
            card = import_local_model(config.local_path, tmp, config.chat_template_defaults)
            context.log.info(
                f"imported local model {config.local_path}: {card['architecture']} ({card['family']} family), "
                f"end of turn {card['end_of_turn']}, vocabulary {card['vocab_padding']}"
            )
            for warning in card["warnings"]:
                context.log.warning(warning)
        else:
            texts = training_texts(warehouse)
            if not texts:
                raise RuntimeError(
                    "curated.conversations has no train rows to train the tokenizer on: "
                    "materialize curated_conversations for at least one day first"
                )
            card = save_family_model(tmp, texts, config.preset(), config.family)
            context.log.info(f"built the tiny preset ({config.family}) from {len(texts)} train messages")
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
    if "family" in card:
        meta["family"] = card["family"]
    if "preset" in card:
        meta["preset"] = dg.MetadataValue.json(card["preset"])
    for finding in (
        "chat_template_defaults",
        "chat_template",
        "end_of_turn",
        "vocab_padding",
        "warnings",
    ):  # what an import checked
        if finding in card:
            meta[finding] = dg.MetadataValue.json(card[finding])
    return dg.MaterializeResult(
        metadata=meta, data_version=dg.DataVersion(card["tokenizer_fingerprint"][:16] + version)
    )
