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


def test_imported_version_does_not_change_when_the_source_is_edited(preset_dir: Path, tmp_path: Path) -> None:
    """A base_model version is immutable: later edits of the user's directory must not reach it."""
    import shutil

    from core.tokenizer_training import tokenizer_fingerprint

    src = tmp_path / "user_model"
    shutil.copytree(preset_dir, src)
    out = tmp_path / "snap"
    out.mkdir()
    card = import_local_model(src, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # The user keeps working in place: save_pretrained rewrites the same files (same inodes), and a raw edit.
    tokenizer = AutoTokenizer.from_pretrained(src)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(src)
    with open(src / "model.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\xff\xff\xff\xff")
    assert tokenizer_fingerprint(src) != card["tokenizer_fingerprint"]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert tokenizer_fingerprint(out) == card["tokenizer_fingerprint"] == read_model_card(out)["tokenizer_fingerprint"]
    assert all(p.stat().st_nlink == 1 for p in out.iterdir() if p.is_file())  # no file shared with the source


def test_import_refuses_a_source_that_changes_while_it_is_copied(
    preset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A torn snapshot (half old, half new weights) must not become a version."""
    import shutil

    import core.base_model as base_model_module

    src = tmp_path / "user_model"
    shutil.copytree(preset_dir, src)
    real_copy = base_model_module.copy_file

    def copy_then_edit_source(a: Path, b: Path) -> None:
        real_copy(a, b)
        if a.name == "model.safetensors":
            with open(a, "ab") as fh:  # another writer appends while we copy
                fh.write(b"more")

    monkeypatch.setattr(base_model_module, "copy_file", copy_then_edit_source)
    with pytest.raises(RuntimeError, match=r"model\.safetensors changed while it was copied"):
        import_local_model(src, tmp_path / "snap")


def test_copy_falls_back_to_a_plain_copy_where_the_kernel_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from core.base_model import copy_file

    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(3 << 20))

    def cross_device(*_args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cross_device, raising=False)
    copy_file(src, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == src.read_bytes()
    assert (tmp_path / "copy.bin").stat().st_ino != src.stat().st_ino
