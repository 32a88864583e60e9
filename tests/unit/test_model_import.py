"""What importing a local Hugging Face model directory checks and reports (core.model_checks via import_local_model).

The directories are tiny Llama and Qwen3 models built offline from transformers' config classes, with tokenizers
trained here, so every check runs on the same kind of files `huggingface-cli download` leaves behind.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from support.masking_fixtures import tokenizer_for
from support.model_dirs import save_model_dir
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaForCausalLM,
    Qwen3ForCausalLM,
)

from core.base_model import import_local_model, read_model_card
from core.model_checks import PROBES, supported_architectures
from core.vocab import add_tokens, padded_size, save_vocab_padding


def _import(src: Path, tmp_path: Path) -> dict:
    out = tmp_path / f"out-{src.name}"
    out.mkdir()
    card = import_local_model(src, out)
    assert read_model_card(out) == card
    return card


@pytest.mark.parametrize(
    ("kind", "template", "eot"),
    [
        ("llama", "chatml", "<|im_end|>"),
        ("qwen3", "header", "<|eot_id|>"),
        ("qwen3", "reasoning", "<|im_end|>"),
        ("llama", "llama3", "<|eot_id|>"),
        ("gemma3", "gemma", "<end_of_turn>"),
        ("qwen3_moe", "chatml", "<|im_end|>"),
    ],
)
def test_import_reports_family_template_end_of_turn_and_padding(
    kind: str, template: str, eot: str, tmp_path: Path
) -> None:
    tokenizer = copy.deepcopy(tokenizer_for(template))
    rows = padded_size(len(tokenizer))
    src = save_model_dir(tmp_path / kind, kind, template, rows=rows, tokenizer=tokenizer)
    card = _import(src, tmp_path)
    classes = {"llama": "Llama", "qwen3": "Qwen3", "gemma3": "Gemma3", "qwen3_moe": "Qwen3Moe"}
    assert card["family"] == kind and card["architecture"] == f"{classes[kind]}ForCausalLM"
    assert card["chat_template"] == {"probes_rendered": list(PROBES)}
    assert card["end_of_turn"] == {"token": eot, "id": tokenizer.convert_tokens_to_ids(eot), "stops_generation": True}
    assert card["vocab_padding"] == {
        "real_vocab_size": len(tokenizer),
        "embedding_rows": rows,
        "multiple": 64,
        "padding_rows": rows - len(tokenizer),
        "aligned": True,
    }
    assert card["vocab_size"] == len(tokenizer)
    assert card["warnings"] == []
    # Padding rows the checkpoint brought are suppressed in the copy's generation config, not the user's.
    assert card["padding_suppression_written"] == (rows > len(tokenizer))
    copied = GenerationConfig.from_pretrained(tmp_path / f"out-{src.name}").suppress_tokens
    assert copied == (list(range(len(tokenizer), rows)) or None)
    assert GenerationConfig.from_pretrained(src).suppress_tokens is None


def test_import_reads_the_padding_recorded_when_tokens_were_added(tmp_path: Path) -> None:
    tokenizer = copy.deepcopy(tokenizer_for("chatml"))
    src = save_model_dir(tmp_path / "grown", "qwen3", tokenizer=tokenizer)
    model = Qwen3ForCausalLM.from_pretrained(src)
    padding = add_tokens(model, tokenizer, ["<item_1>", "<item_2>"], special=True)
    model.save_pretrained(src)
    tokenizer.save_pretrained(src)
    save_vocab_padding(src, padding)
    card = _import(src, tmp_path)
    assert card["vocab_padding"] == padding.to_dict() and padding.aligned and padding.padding_rows > 0
    assert card["padding_suppression_written"] is False  # add_tokens saved it already
    assert GenerationConfig.from_pretrained(tmp_path / "out-grown").suppress_tokens == padding.padding_ids


def test_an_unsupported_architecture_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    src = save_model_dir(tmp_path / "other", "llama")
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (src / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"\['MistralForCausalLM'\].*not cover.*Qwen3ForCausalLM"):
        import_local_model(src, out)
    assert not out.exists()  # refused before a byte was copied
    config["architectures"] = ["Gemma3ForConditionalGeneration"]
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"Gemma3ForCausalLM, e\.g\. gemma-3-1b-it"):
        import_local_model(src, out)
    assert {"LlamaForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM"} <= set(supported_architectures())


def _with_template(src: Path, template: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(src)
    tokenizer.chat_template = template
    for leftover in src.glob("chat_template*"):
        leftover.unlink()
    tokenizer.save_pretrained(src)


def test_a_template_that_refuses_a_system_message_is_refused(tmp_path: Path) -> None:
    src = save_model_dir(tmp_path / "nosys", "llama")
    _with_template(
        src,
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    )
    with pytest.raises(ValueError, match=r"cannot render a probe conversation.*System role not supported"):
        import_local_model(src, tmp_path / "out")


def test_a_missing_chat_template_says_where_one_goes(tmp_path: Path) -> None:
    src = save_model_dir(tmp_path / "base", "llama")
    _with_template(src, "")
    config = json.loads((src / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"no chat template \(none in tokenizer_config.json.*-Instruct"):
        import_local_model(src, tmp_path / "out")


def test_a_template_without_an_end_of_turn_token_is_imported_with_a_warning(tmp_path: Path) -> None:
    src = save_model_dir(tmp_path / "plain", "llama")
    _with_template(
        src,
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}",
    )
    card = _import(src, tmp_path)
    assert card["end_of_turn"] == {"token": None, "id": None, "stops_generation": False}
    assert any("no end-of-turn token found" in w for w in card["warnings"])


def test_an_end_of_turn_token_that_does_not_stop_generation_is_a_warning(tmp_path: Path) -> None:
    src = save_model_dir(tmp_path / "nostop", "llama")
    generation = GenerationConfig.from_pretrained(src)
    generation.eos_token_id = 0
    generation.save_pretrained(src)
    card = _import(src, tmp_path)
    assert card["end_of_turn"]["token"] == "<|im_end|>" and not card["end_of_turn"]["stops_generation"]
    assert any("is not an eos_token_id of the generation config" in w for w in card["warnings"])
    assert card["padding_suppression_written"] is False  # no padding rows: generation_config.json is the user's
    assert (tmp_path / "out-nostop" / "generation_config.json").read_bytes() == (
        src / "generation_config.json"
    ).read_bytes()


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path: Path) -> None:
    tokenizer = copy.deepcopy(tokenizer_for("chatml"))
    src = save_model_dir(tmp_path / "short", "llama", tokenizer=tokenizer)
    tokenizer.add_tokens(["<item_1>"])
    tokenizer.save_pretrained(src)
    with pytest.raises(ValueError, match="without resizing the model"):
        import_local_model(src, tmp_path / "out")


def test_special_tokens_past_the_embedding_are_tolerated_while_the_template_never_emits_them(tmp_path: Path) -> None:
    """Some releases ship a multimodal placeholder (an image token) one id past the text model's rows."""
    tokenizer = copy.deepcopy(tokenizer_for("chatml"))
    rows = len(tokenizer)
    src = save_model_dir(tmp_path / "extra", "llama", tokenizer=tokenizer)
    tokenizer.add_tokens(["<image_soft_token>"], special_tokens=True)
    tokenizer.save_pretrained(src)
    card = _import(src, tmp_path)
    assert card["tokens_without_embedding"] == ["<image_soft_token>"]
    assert card["vocab_padding"]["real_vocab_size"] == card["vocab_padding"]["embedding_rows"] == rows
    assert any("past the model's" in w for w in card["warnings"])

    _with_template(src, "{{ '<image_soft_token>' }}" + tokenizer.chat_template)
    with pytest.raises(ValueError, match=r"emits \['<image_soft_token>'\], whose ids are past"):
        import_local_model(src, tmp_path / "out2")


# Qwen3's shape: the assistant turn after the last user turn opens with a reasoning block, empty when the
# message has none, which the generation prompt does not contain (unless thinking is switched off).
QWEN3_SHAPE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{%- if m['role'] == 'assistant' and loop.index0 > ns.last_user and '</think>' not in m['content'] -%}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{{ m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def test_a_template_that_inserts_reasoning_before_the_reply_still_shows_its_end_of_turn(tmp_path: Path) -> None:
    src = save_model_dir(tmp_path / "qwen3_shape", "qwen3")
    _with_template(src, QWEN3_SHAPE)
    card = _import(src, tmp_path)
    assert card["end_of_turn"]["token"] == "<|im_end|>" and card["end_of_turn"]["stops_generation"]
    not_masked = card["chat_template"]["probes_not_masked"]
    assert set(not_masked) == set(PROBES) and all("serving_prefix_mismatch" in e for e in not_masked.values())
    assert sum("gets no exact loss mask" in w for w in card["warnings"]) == len(PROBES)


def test_a_stale_padding_record_is_refused(tmp_path: Path) -> None:
    tokenizer = copy.deepcopy(tokenizer_for("chatml"))
    src = save_model_dir(tmp_path / "stale", "llama", tokenizer=tokenizer)
    model = LlamaForCausalLM.from_pretrained(src)
    save_vocab_padding(src, add_tokens(model, tokenizer, ["<item_1>"]))
    model.save_pretrained(src)  # the tokenizer with <item_1> is never saved
    with pytest.raises(ValueError, match=r"vocab_padding\.json .* records 581 tokens .* tokenizer has 580"):
        import_local_model(src, tmp_path / "out")
