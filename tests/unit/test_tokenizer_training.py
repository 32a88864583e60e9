"""Byte-level BPE training: lossless round trips, control tokens, save/load, fingerprints."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.masking_fixtures import conversations, corpus, tokenizer_for
from transformers import AutoTokenizer

from core.chat_templates import TEMPLATES, TemplateSpec
from core.tokenizer_training import tokenizer_fingerprint, train_bpe_tokenizer

AWKWARD = [
    "plain words",
    "  leading and trailing  \n\n",
    "e\u0301 combining, 👩\u200d👩\u200d👧 zwj emoji, שלום RTL, 東京物語 CJK",
    "\x00\x1f control chars \t tabs \r\n crlf",
    "<|im_start|> typed markers <|eot_id|> [ASSISTANT] </turn>",
    "\U0010fffd private use and \ufeff BOM",
]


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_special_tokens_are_single_special_ids(template):
    spec = TEMPLATES[template]
    tok = tokenizer_for(template)
    assert tok.chat_template == spec.template
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (spec.bos_token, spec.eos_token, spec.pad_token)
    specials = {t.content: i for i, t in tok.added_tokens_decoder.items() if t.special}
    assert set(spec.special_tokens) <= set(specials)
    for text in spec.special_tokens:
        assert tok.encode(text, add_special_tokens=False) == [specials[text]]
    assert tok.convert_tokens_to_ids(spec.end_of_turn) == specials[spec.end_of_turn]


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("text", AWKWARD)
def test_decode_inverts_encode(template, text):
    tok = tokenizer_for(template)
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == text


@settings(max_examples=60, deadline=None, database=None)
@given(st.text(max_size=40))
def test_decode_inverts_encode_for_any_unicode(text):
    tok = tokenizer_for("chatml")
    ids = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    assert tok.backend_tokenizer.decode(ids, skip_special_tokens=False) == text


def test_learns_merges_up_to_vocab_size():
    tok = train_bpe_tokenizer(corpus(), vocab_size=500, spec=TEMPLATES["chatml"])
    assert 300 < len(tok) <= 500
    # frequent words become single tokens
    assert len(tok.encode(" movie", add_special_tokens=False)) == 1


def test_vocab_size_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_bpe_tokenizer(["hello"], vocab_size=100, spec=TEMPLATES["chatml"])


def test_template_spec_requires_listed_special_tokens():
    with pytest.raises(ValueError, match="must be listed in special_tokens"):
        TemplateSpec("x", "{{ '' }}", ("<a>",), bos_token="<a>", eos_token="<b>", pad_token="<a>", end_of_turn="<a>")


def test_newline_runs_split_the_same_at_a_prompt_boundary():
    # The header template's generation prompt ends in "\n\n": serving tokenizes it at the
    # end of the text, training before content. Both must give the same tokens.
    tok = tokenizer_for("header")
    alone = tok.encode("<|end_header_id|>\n\n", add_special_tokens=False)
    before = tok.encode("<|end_header_id|>\n\nHello there", add_special_tokens=False)
    assert before[: len(alone)] == alone


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_save_and_reload_offline_is_identical(template, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = tokenizer_for(template)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.chat_template == tok.chat_template
    assert loaded.special_tokens_map == tok.special_tokens_map
    assert {i: t.content for i, t in loaded.added_tokens_decoder.items()} == {
        i: t.content for i, t in tok.added_tokens_decoder.items()
    }
    for text in AWKWARD + corpus(20, seed=7):
        assert loaded.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    for messages in conversations(10):
        for kwargs in ({}, {"add_generation_prompt": True}):
            assert loaded.apply_chat_template(messages, tokenize=False, **kwargs) == tok.apply_chat_template(
                messages, tokenize=False, **kwargs
            )
            assert (
                loaded.apply_chat_template(messages, **kwargs)["input_ids"]
                == tok.apply_chat_template(messages, **kwargs)["input_ids"]
            )


def test_fingerprint_is_stable_and_tracks_template_and_files(tmp_path):
    tok = tokenizer_for("chatml")
    a, b = tmp_path / "a", tmp_path / "b"
    tok.save_pretrained(a)
    tok.save_pretrained(b)
    fp = tokenizer_fingerprint(a)
    assert len(fp) == 64
    assert fp == tokenizer_fingerprint(b)

    reloaded = AutoTokenizer.from_pretrained(a)
    reloaded.chat_template = tok.chat_template.replace("assistant", "bot")
    c = tmp_path / "c"
    reloaded.save_pretrained(c)
    assert tokenizer_fingerprint(c) != fp

    d = tmp_path / "d"
    tokenizer_for("header").save_pretrained(d)
    assert tokenizer_fingerprint(d) != fp

    # any change to the tokenizer files changes it too
    data = json.loads((b / "tokenizer.json").read_text())
    data["model"]["vocab"]["zzz_new"] = len(data["model"]["vocab"]) + 100
    (b / "tokenizer.json").write_text(json.dumps(data))
    assert tokenizer_fingerprint(b) != fp


def test_fingerprint_names_a_wrong_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        tokenizer_fingerprint(tmp_path)
