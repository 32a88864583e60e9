from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.base_model import TinyModelPreset, import_local_model, read_model_card, save_preset

TEXTS = [
    f"I recently watched The Silent Harbor ({1990 + i % 30}) and Night Train {i}. What should I watch next?"
    for i in range(300)
] + [
    "You might enjoy Quiet Rivers (2004), a drama about two sisters.",
    "What genre is Moonfall? It is sci-fi.",
] * 50


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base")
    save_preset(out, TEXTS, TinyModelPreset(vocab_size=600))
    return out


def test_preset_is_a_loadable_hf_model_dir(preset_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(preset_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(preset_dir, local_files_only=True)
    assert "{% generation %}" in tokenizer.chat_template.replace("{%- generation -%}", "{% generation %}")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What should I watch?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits
    assert logits.shape == (1, len(prompt), len(tokenizer))
    card = read_model_card(preset_dir)
    assert card["source"] == "preset" and 1_000_000 <= card["parameters"] <= 10_000_000
    assert (preset_dir / "model.safetensors").is_file()


def test_default_preset_has_a_few_million_parameters() -> None:
    from core.base_model import build_preset_model

    class _Tok:
        bos_token_id = eos_token_id = pad_token_id = 0

        def __len__(self) -> int:
            return 4096

    model = build_preset_model(_Tok(), TinyModelPreset())  # type: ignore[arg-type]
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 10_000_000


def test_preset_initialisation_is_seeded(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    save_preset(a, TEXTS, TinyModelPreset(vocab_size=600, seed=3))
    save_preset(b, TEXTS, TinyModelPreset(vocab_size=600, seed=3))
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_local_model_is_snapshotted_with_its_own_template(preset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "snap"
    out.mkdir()
    card = import_local_model(preset_dir, out)
    assert card["source"] == "local"
    original = AutoTokenizer.from_pretrained(preset_dir).chat_template
    assert AutoTokenizer.from_pretrained(out).chat_template == original
    AutoModelForCausalLM.from_pretrained(out, local_files_only=True)


def test_local_model_errors_name_the_problem(preset_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        import_local_model(tmp_path / "nowhere", tmp_path / "o1")
    bare = tmp_path / "bare"
    tokenizer = AutoTokenizer.from_pretrained(preset_dir)
    tokenizer.chat_template = None
    AutoModelForCausalLM.from_pretrained(preset_dir).save_pretrained(bare)
    tokenizer.save_pretrained(bare)
    for leftover in bare.glob("chat_template*"):
        leftover.unlink()
    with pytest.raises(ValueError, match="no chat template"):
        import_local_model(bare, tmp_path / "o2")
