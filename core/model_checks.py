"""What the import of a user's Hugging Face model directory checks before it becomes a base_model version.

A model that the platform cannot train correctly should fail at import with a message that says what is
missing and what to do, not hours later as quarantined rows or a wrong loss. The checks:

- the architecture is one whose training forward the logit verifier proves equal to Hugging Face's own
  (the families of ``core.model_families``);
- the tokenizer is a fast one with a chat template, and the template renders the two shapes of
  conversation the platform builds (with and without a system message);
- the end-of-turn token: the masking code's own notion of it (the added token right after an assistant
  turn's content, masked with the content) read from the loss mask of a probe conversation, and whether
  generation stops on it;
- the vocabulary: how many embedding rows are padding beyond the tokenizer's ids.

``check_model_dir`` returns the findings as the model card's fields.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, GenerationConfig

from core.masking import MaskError, encode_batch, encode_conversation, render_conversations
from core.template_defaults import switches_named, with_defaults
from core.vocab import VOCAB_PADDING_FILE, VocabPadding, embedding_rows, read_vocab_padding, vocab_padding

PROBE_ANSWER = "You might enjoy Quiet Rivers (2004), a drama about two sisters."
PROBES: dict[str, list[dict[str, str]]] = {
    "system/user/assistant": [
        {"role": "system", "content": "You are the catalog assistant."},
        {"role": "user", "content": "What should I watch next?"},
        {"role": "assistant", "content": PROBE_ANSWER},
    ],
    "user/assistant": [
        {"role": "user", "content": "What should I watch next?"},
        {"role": "assistant", "content": PROBE_ANSWER},
    ],
}
_TEMPLATE_FILES = "tokenizer_config.json (chat_template), chat_template.jinja or chat_template.json"


def supported_architectures() -> dict[str, str]:
    """Architecture class name -> family name, for every family the logit verifier covers."""
    # Imported here: core.model_families builds on core.base_model, which imports this module.
    from core.model_families import FAMILIES

    return {entry.architecture: name for name, entry in FAMILIES.items()}


def check_architecture(config: Any, src: Path) -> str:
    """The family of the model's architecture; ValueError naming the supported ones otherwise."""
    supported = supported_architectures()
    architectures = list(config.architectures or [])
    for architecture in architectures:
        if architecture in supported:
            return supported[architecture]
    hint = ""
    if any(a.startswith("Gemma3") for a in architectures):
        hint = (
            " Gemma 3 is supported as a text-only model (Gemma3ForCausalLM, e.g. gemma-3-1b-it); "
            "the multimodal checkpoints are not."
        )
    raise ValueError(
        f"the model in {src} is {architectures or 'of no declared architecture (config.json has no architectures)'}, "
        f"which the platform's logit verifier does not cover; supported: {sorted(supported)}.{hint} "
        "Use a model of one of these architectures, or unset BASE_MODEL_PATH for the built-in preset"
    )


def load_chat_tokenizer(model_dir: Path, src: Path) -> Any:
    """The directory's tokenizer, refused when it is slow or has no chat template."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer in {src} has no chat template (none in {_TEMPLATE_FILES}): add one "
            "(tokenizer.chat_template = ...; tokenizer.save_pretrained) or use the chat (-Instruct / -it) "
            "version of the model"
        )
    if not tokenizer.is_fast:
        raise ValueError(
            f"the tokenizer in {src} is not a fast (Rust) tokenizer; loss masks need its offset mappings: "
            "save it with a tokenizer.json (AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained)"
        )
    return tokenizer


def _end_of_turn(tokenizer: Any, name: str, messages: list[dict[str, str]]) -> int | None:
    """The id the loss mask ends the assistant turn with when it is an added token (the end-of-turn token).

    Read from the mask of the turn as the template renders it (``as_rendered``), so that a template which
    inserts text before the content (Qwen3's empty reasoning block) still shows which token ends the turn.
    """
    results, rejects = encode_batch(tokenizer, [messages], as_rendered=True)
    if rejects:
        return None
    encoded = results[0]
    masked = [i for i, m in enumerate(encoded.loss_mask) if m]
    if not masked:
        raise ValueError(f"the chat template masks no assistant token in the {name} probe conversation")
    last = encoded.input_ids[masked[-1]]
    return last if last in tokenizer.added_tokens_decoder else None


def _probes_not_masked(tokenizer: Any) -> dict[str, str]:
    """Probe name -> why it gets no exact loss mask, for each probe that gets none."""
    unmasked = {}
    for name, messages in PROBES.items():
        try:
            encode_conversation(tokenizer, messages)
        except MaskError as exc:
            unmasked[name] = str(exc)
    return unmasked


def _switches_that_mask(tokenizer: Any) -> dict[str, Any]:
    """The template switches (core.template_defaults) whose defaults make every probe mask exactly; {} if none."""
    switches = switches_named(tokenizer.chat_template)
    if not switches:
        return {}
    trial = copy.deepcopy(tokenizer)
    trial.chat_template = with_defaults(tokenizer.chat_template, switches)
    return switches if not _probes_not_masked(trial) else {}


def _stop_ids(model_dir: Path, config: Any) -> set[int]:
    """The token ids that end generation: generation_config.json's eos_token_id, else config.json's."""
    try:
        eos = GenerationConfig.from_pretrained(model_dir, local_files_only=True).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    if eos is None:
        eos = getattr(config.get_text_config(), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(i) for i in (eos if isinstance(eos, list) else [eos])}


def probe_chat_template(tokenizer: Any, src: Path) -> tuple[dict[str, Any], int | None, set[int]]:
    """Render and mask each probe; returns the template findings, the end-of-turn id (None: none found) and
    every id the renderings tokenize to.

    Rendering must work: every conversation the platform builds has one of these shapes. A probe the masking
    code cannot mask exactly is reported, not refused, because the row policy on tokenized_shards decides
    what happens to such rows.
    """
    try:
        renderings = render_conversations(tokenizer, list(PROBES.values()))
    except MaskError as exc:
        raise ValueError(
            f"the chat template in {src} cannot render a probe conversation ({exc}); the platform's "
            f"conversations have the shapes {list(PROBES)}: fix the template or use another model"
        ) from exc
    found: dict[str, int | None] = {}
    unmasked = _probes_not_masked(tokenizer)
    for name, messages in PROBES.items():
        found[name] = _end_of_turn(tokenizer, name, messages)
    ids = set(found.values())
    if len(ids) > 1:
        raise ValueError(f"the chat template in {src} ends assistant turns with different tokens: {found}")
    findings: dict[str, Any] = {"probes_rendered": list(PROBES)}
    if unmasked:
        findings["probes_not_masked"] = unmasked
        suggested = _switches_that_mask(tokenizer)
        if suggested:
            findings["suggested_chat_template_defaults"] = suggested
    rendered_ids = {i for text in renderings for i in tokenizer(text, add_special_tokens=False)["input_ids"]}
    return findings, next(iter(ids), None), rendered_ids


def check_vocabulary(config: Any, tokenizer: Any, rendered_ids: set[int]) -> tuple[VocabPadding, list[str]]:
    """The padding rows past the tokenizer's ids, and the tokens whose ids lie past the embedding.

    Some releases ship a tokenizer with a few more special tokens than the text model has rows (multimodal
    placeholders such as an image token). They are harmless while the chat template never emits them: content
    that spells a special token is encoded as plain text. Any other token past the embedding is refused.
    """
    rows, real = embedding_rows(config), len(tokenizer)
    if real <= rows:
        return vocab_padding(config, tokenizer), []
    past = range(rows, real)
    special = {i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
    if any(i not in special for i in past):
        vocab_padding(config, tokenizer)  # raises, naming the mismatch
    emitted = sorted(rendered_ids.intersection(past))
    if emitted:
        raise ValueError(
            f"the chat template emits {tokenizer.convert_ids_to_tokens(emitted)}, whose ids are past the model's "
            f"{rows} embedding rows: resize the model (core.vocab.add_tokens) or fix the template"
        )
    return VocabPadding(real_vocab_size=rows, embedding_rows=rows), tokenizer.convert_ids_to_tokens(list(past))


def describe_end_of_turn(tokenizer: Any, eot: int | None, stop_ids: set[int]) -> dict[str, Any]:
    if eot is None:
        return {"token": None, "id": None, "stops_generation": False}
    return {"token": tokenizer.convert_ids_to_tokens(eot), "id": eot, "stops_generation": eot in stop_ids}


def check_model_dir(model_dir: Path, config: Any, src: Path) -> tuple[dict[str, Any], VocabPadding]:
    """The findings on the tokenizer side of ``model_dir`` (a snapshot of ``src``), as model card fields, and
    its vocabulary padding.

    ValueError with what is missing and what to do when the model cannot be trained here. The architecture
    is checked apart (``check_architecture``) because it needs only config.json, before anything is copied.
    """
    tokenizer = load_chat_tokenizer(model_dir, src)
    template, eot, rendered_ids = probe_chat_template(tokenizer, src)
    padding, unembedded = check_vocabulary(config, tokenizer, rendered_ids)
    recorded = read_vocab_padding(model_dir)
    if recorded is not None:
        if (recorded.real_vocab_size, recorded.embedding_rows) != (padding.real_vocab_size, padding.embedding_rows):
            raise ValueError(
                f"{VOCAB_PADDING_FILE} in {src} records {recorded.real_vocab_size} tokens in "
                f"{recorded.embedding_rows} rows, but the tokenizer has {padding.real_vocab_size} and the model "
                f"{padding.embedding_rows}: the model or tokenizer changed after it was written; save all three "
                "again (core.vocab.add_tokens, save_pretrained, save_vocab_padding) or delete the file"
            )
        padding = recorded
    findings = {
        "vocab_size": len(tokenizer),
        "chat_template": template,
        "end_of_turn": describe_end_of_turn(tokenizer, eot, _stop_ids(model_dir, config)),
        "vocab_padding": padding.to_dict(),
    }
    if unembedded:
        findings["tokens_without_embedding"] = unembedded
    return findings, padding


def warnings_for(card: dict[str, Any]) -> list[str]:
    """Findings that do not stop the import but that a user should read before training."""
    out = []
    eot = card.get("end_of_turn") or {}
    if eot.get("id") is None:
        out.append(
            "no end-of-turn token found after the assistant's content in the probe conversations: "
            "the model will not learn where a reply ends"
        )
    elif not eot.get("stops_generation"):
        out.append(
            f"the end-of-turn token {eot['token']!r} is not an eos_token_id of the generation config: generation "
            "will run past the end of a reply; add its id to eos_token_id in generation_config.json"
        )
    if card.get("tokens_without_embedding"):
        out.append(
            f"the tokenizer's special tokens {card['tokens_without_embedding']} have ids past the model's "
            f"{card['vocab_padding']['embedding_rows']} embedding rows; the chat template never emits them, "
            "so training is unaffected, but do not add them to prompts"
        )
    template = card.get("chat_template") or {}
    for name, error in template.get("probes_not_masked", {}).items():
        out.append(
            f"the {name} probe gets no exact loss mask ({error}); tokenized_shards' rewrite_policy handles "
            "templates that rewrite earlier turns, other rows like it are quarantined"
        )
    suggested = template.get("suggested_chat_template_defaults")
    if suggested:
        out.append(
            f"with chat_template_defaults {json.dumps(suggested)} every probe masks exactly: import again with "
            "that base_model config (docs/training.md, 'Template switches') unless your replies carry reasoning"
        )
    return out
