"""Assistant-only loss masks: exact by the DESIGN.md rule, equal to transformers' own
generation-marker masks, skew-free against the serving prompt, and never wrong in
silence (MaskError with a reason code instead)."""

from __future__ import annotations

import bisect
import gc
import random
import re
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.masking_fixtures import (
    conversation,
    conversations,
    decode_ids,
    long_conversation,
    masked_runs,
    tokenizer_for,
)
from tokenizers import Tokenizer

from core import masking
from core.chat_templates import CHATML_GENERATION, DEFAULT_SYSTEM_PROMPT, FAMILY_TEMPLATES, TEMPLATES
from core.masking import (
    MASK_REASONS,
    EncodedConversation,
    MaskError,
    encode_batch,
    encode_conversation,
    encode_prompt,
    generation_inline,
    has_special_token_lookalike,
    rendering,
    segments,
    tokenizer_info,
    verify,
    verify_masks,
    verify_serving_prefix,
)
from core.masking.compiled_template import compile_jinja_template, render_compiled
from core.masking.content_spans import content_spans
from core.masking.lookalikes import segment_encode
from core.masking.prefix_stability import prefix_bound
from core.masking.rendering import comparable
from core.masking.segments import SegmentCache, tokenize_segments
from core.masking.tokenizer_info import info_for

ALL = sorted(TEMPLATES)
# The platform's own layouts; the family templates (which rewrite the conversation, and whose
# serving prompts are rendered one by one) have their own tests in test_family_templates.py.
SHIPPED = [t for t in ALL if t not in FAMILY_TEMPLATES]
MASKING_DIR = Path(masking.__file__).parent  # the package's modules: frames of our code


def _with_template(template_name: str, chat_template: str):
    """A fresh tokenizer (same vocab as ``template_name``'s) carrying ``chat_template``."""
    tok = tokenizer_for(template_name)
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    clone = type(tok)(tokenizer_object=backend, **tok.special_tokens_map)
    clone.chat_template = chat_template
    return clone


# --------------------------------------------------------------------------------------
# The rule, checked by hand.


def test_chatml_mask_by_hand():
    tok = tokenizer_for("chatml")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What should I watch tonight?"},
        {"role": "assistant", "content": "Try the heist movie."},
        {"role": "user", "content": "Something funny?"},
        {"role": "assistant", "content": "A cozy comedy series."},
    ]
    enc = encode_conversation(tok, messages)
    assert masked_runs(tok, enc) == ["Try the heist movie.<|im_end|>", "A cozy comedy series.<|im_end|>"]
    unmasked = decode_ids(tok, [i for i, m in zip(enc.input_ids, enc.loss_mask, strict=True) if not m])
    assert unmasked == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat should I watch tonight?<|im_end|>\n"
        "<|im_start|>assistant\n\n<|im_start|>user\nSomething funny?<|im_end|>\n<|im_start|>assistant\n\n"
    )
    # the newline after the end-of-turn token is scaffolding: the last token is unmasked
    assert decode_ids(tok, enc.input_ids[-1:]) == "\n" and enc.loss_mask[-1] == 0
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert enc.input_ids[-2] == im_end and enc.loss_mask[-2] == 1
    assert enc.truncated is False


def test_header_mask_by_hand():
    tok = tokenizer_for("header")
    messages = [{"role": "user", "content": "Any thriller?"}, {"role": "assistant", "content": "Dark night."}]
    enc = encode_conversation(tok, messages)
    assert masked_runs(tok, enc) == ["Dark night.<|eot_id|>"]
    first = enc.loss_mask.index(1)
    assert decode_ids(tok, enc.input_ids[:first]) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nAny thriller?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert enc.input_ids[0] == tok.bos_token_id and enc.loss_mask[0] == 0
    assert sum(enc.loss_mask) == len(enc.input_ids) - first  # nothing after the eot


def test_default_system_mask_by_hand():
    tok = tokenizer_for("default_system")
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, watch a western."},
    ]
    enc = encode_conversation(tok, messages)
    assert masked_runs(tok, enc) == ["Hello, watch a western.</turn>"]
    first = enc.loss_mask.index(1)
    # the inserted default system prompt is scaffolding, unmasked
    assert (
        decode_ids(tok, enc.input_ids[:first])
        == f"<s>[SYS]{DEFAULT_SYSTEM_PROMPT}</turn>\n[USER]Hi</turn>\n[ASSISTANT]"
    )
    with_system = [{"role": "system", "content": "Own prompt."}, *messages]
    assert DEFAULT_SYSTEM_PROMPT not in decode_ids(tok, encode_conversation(tok, with_system).input_ids)


@pytest.mark.parametrize("template", ALL)
@pytest.mark.parametrize("exchanges", [1, 2, 3, 4])
@pytest.mark.parametrize("system", [False, True])
def test_masked_runs_are_assistant_content_plus_eot(template, exchanges, system):
    tok = tokenizer_for(template)
    eot = TEMPLATES[template].end_of_turn
    messages = conversation(random.Random(exchanges * 10 + system), exchanges, system)
    enc = encode_conversation(tok, messages)
    expected = [m["content"] + eot for m in messages if m["role"] == "assistant"]
    assert masked_runs(tok, enc) == expected
    assert verify_masks(tok, messages, enc.input_ids, enc.loss_mask) is None
    assert verify_serving_prefix(tok, messages, enc.input_ids, enc.loss_mask) is None
    # input_ids are exactly the stock tokenization of the stock rendering
    assert enc.input_ids == tok.apply_chat_template(messages)["input_ids"]
    # user and system text never carries loss
    for m in messages:
        if m["role"] != "assistant":
            assert all(m["content"] not in run for run in masked_runs(tok, enc))


def test_equals_transformers_assistant_mask_for_chatml():
    tok = tokenizer_for("chatml")
    convs = conversations(150, seed=3)
    results, rejects = encode_batch(tok, convs)
    assert rejects == []
    for messages, enc in zip(convs, results, strict=True):
        stock = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert enc.input_ids == stock["input_ids"]
        assert enc.loss_mask == stock["assistant_masks"]


@pytest.mark.parametrize("template", ALL)
def test_serving_prompt_is_the_training_prefix(template):
    tok = tokenizer_for(template)
    for messages in conversations(20, seed=4):
        enc = encode_conversation(tok, messages)
        for k, turn in enumerate(j for j, m in enumerate(messages) if m["role"] == "assistant"):
            prompt = encode_prompt(tok, messages[:turn])
            stock = tok.apply_chat_template(messages[:turn], add_generation_prompt=True)["input_ids"]
            assert prompt == stock
            first = [
                i for i, (a, b) in enumerate(zip(enc.loss_mask, [0, *enc.loss_mask], strict=False)) if a and not b
            ][k]
            assert enc.input_ids[:first] == prompt


# --------------------------------------------------------------------------------------
# Templates that cannot give an exact mask.

REWRITES_EARLIER_USER = CHATML_GENERATION.replace(
    "{{ message['content'] + '<|im_end|>' + '\\n' }}",
    "{{ ('(latest) ' if loop.last or (loop.index0 == messages|length - 2) else '') + message['content'] "
    "+ '<|im_end|>' + '\\n' }}",
)
DROPS_EARLIER_ASSISTANT = CHATML_GENERATION.replace(
    "{%- generation -%}{{ message['content'] + '<|im_end|>' }}{%- endgeneration -%}",
    "{%- generation -%}{{ (message['content'] if loop.last else '[earlier reply omitted]') + '<|im_end|>' }}"
    "{%- endgeneration -%}",
)
INJECTS_BEFORE_CONTENT = CHATML_GENERATION.replace(
    "{%- generation -%}{{ message['content']", "{%- generation -%}{{ 'Sure! ' + message['content']"
)
MARKS_TRAILING_NEWLINE = CHATML_GENERATION.replace(
    "{%- endgeneration -%}{{ '\\n' }}", "{{ '\\n' }}{%- endgeneration -%}"
)
UPPERCASES_CONTENT = TEMPLATES["header"].template.replace("message['content'] | trim", "message['content'] | upper")
ALTERS_BANGS = TEMPLATES["header"].template.replace(
    "message['content'] | trim", "message['content'] | replace('!', '.')"
)


@pytest.mark.parametrize(
    ("base", "template", "reason"),
    [
        ("chatml", REWRITES_EARLIER_USER, "serving_prefix_mismatch"),
        ("chatml", DROPS_EARLIER_ASSISTANT, "content_not_rendered"),
        ("chatml", INJECTS_BEFORE_CONTENT, "serving_prefix_mismatch"),
        ("chatml", MARKS_TRAILING_NEWLINE, "generation_marker_mismatch"),
        ("header", UPPERCASES_CONTENT, "content_not_rendered"),
    ],
)
def test_unfaithful_templates_raise_instead_of_masking(base, template, reason):
    tok = _with_template(base, template)
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "second answer"},
    ]
    with pytest.raises(MaskError) as info:
        encode_conversation(tok, messages)
    assert info.value.reason == reason, info.value.detail
    assert info.value.detail
    _, rejects = encode_batch(tok, [messages])
    assert rejects == [(0, reason, info.value.detail)]


def test_rewriting_template_hides_a_wrong_stock_mask():
    # The stock generation-marker mask for DROPS_EARLIER_ASSISTANT would train on
    # "[earlier reply omitted]": exactly the silent error we refuse to make.
    tok = _with_template("chatml", DROPS_EARLIER_ASSISTANT)
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    stock = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    trained_on = decode_ids(tok, [i for i, m in zip(stock["input_ids"], stock["assistant_masks"], strict=True) if m])
    assert "[earlier reply omitted]" in trained_on
    with pytest.raises(MaskError):
        encode_conversation(tok, messages)


@pytest.mark.parametrize("reply", ["  padded reply  ", " leading", "trailing\n\n"])
def test_whitespace_the_template_trims_is_masked_as_rendered(reply):
    tok = tokenizer_for("header")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}]
    encoded = encode_conversation(tok, messages)
    masked = [i for i, m in zip(encoded.input_ids, encoded.loss_mask, strict=True) if m]
    assert decode_ids(tok, masked) == reply.strip() + "<|eot_id|>"
    assert verify_masks(tok, messages, encoded.input_ids, encoded.loss_mask) is None
    assert verify_serving_prefix(tok, messages, encoded.input_ids, encoded.loss_mask) is None


def test_an_empty_system_message_the_template_renders_is_accepted():
    tok = tokenizer_for("chatml")
    messages = [
        {"role": "system", "content": ""},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    encoded = encode_conversation(tok, messages)
    assert "<|im_start|>system\n<|im_end|>" in decode_ids(tok, encoded.input_ids)
    assert verify_masks(tok, messages, encoded.input_ids, encoded.loss_mask) is None
    with pytest.raises(MaskError) as info:
        encode_conversation(tok, [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}])
    assert info.value.reason == "invalid_messages"


SPACE_AFTER_ROLE = CHATML_GENERATION.replace("message['role'] + '\\n'", "message['role'] + ' '").replace(
    "'<|im_start|>assistant\\n'", "'<|im_start|>assistant '"
)


def test_token_straddling_the_content_boundary_is_rejected():
    # "<|im_start|>assistant " + "movie": the space merges into the token " movie", so
    # the prompt's last token is not a prefix of the training tokens.
    tok = _with_template("chatml", SPACE_AFTER_ROLE)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "movie"}]
    assert tok.apply_chat_template(messages, tokenize=False).endswith("<|im_start|>assistant movie<|im_end|>\n")
    assert len(tok.encode(" movie", add_special_tokens=False)) == 1
    with pytest.raises(MaskError) as info:
        encode_conversation(tok, messages)
    assert info.value.reason == "boundary_straddle"


def test_template_error_and_bad_input_are_rejects_not_crashes():
    tok = tokenizer_for("chatml")
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    batch = [
        good,
        [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}],  # template raises
        [{"role": "user", "content": "only a question"}],
        [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}],
        [{"role": "user"}, {"role": "assistant", "content": "y"}],
        "not a conversation",
        [],
        [{"role": "assistant", "content": "starts with assistant"}, {"role": "user", "content": "u"}],
        [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}],
        [{"role": "user", "content": "bad \ud800 text"}, {"role": "assistant", "content": "y"}],
        good,
    ]
    results, rejects = encode_batch(tok, batch)
    assert [r[:2] for r in rejects] == [
        (1, "template_error"),
        (2, "no_assistant_turn"),
        (3, "invalid_messages"),
        (4, "invalid_messages"),
        (5, "invalid_messages"),
        (6, "invalid_messages"),
        (7, "invalid_messages"),
        (8, "invalid_messages"),
        (9, "invalid_messages"),
    ]
    assert "unknown role: tool" in rejects[0][2]
    assert "surrogate" in rejects[-1][2]
    assert results[0] == results[10] == encode_conversation(tok, good)
    assert all(results[i] is None for i in range(1, 10))


def test_mask_error_rejects_unknown_reason_codes():
    with pytest.raises(ValueError, match="unknown mask reason"):
        MaskError("oops", "x")
    assert all(code == code.lower() and " " not in code for code in MASK_REASONS)


def test_tokenizer_without_template_is_a_config_error():
    tok = _with_template("chatml", CHATML_GENERATION)
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        encode_batch(tok, [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]])


# --------------------------------------------------------------------------------------
# Length limits.


@pytest.mark.parametrize("template", ALL)
def test_overlong_is_quarantined_or_truncated(template):
    tok = tokenizer_for(template)
    messages = conversation(random.Random(5), 3, True)
    full = encode_conversation(tok, messages)
    n = len(full.input_ids)
    assert encode_conversation(tok, messages, max_length=n) == full

    with pytest.raises(MaskError) as info:
        encode_conversation(tok, messages, max_length=n - 1)
    assert info.value.reason == "too_long" and str(n) in info.value.detail

    cut = n - 7
    short = encode_conversation(tok, messages, max_length=cut, overlong="truncate")
    assert short == EncodedConversation(full.input_ids[:cut], full.loss_mask[:cut], True)
    assert verify_masks(tok, messages, short.input_ids, short.loss_mask, truncated=True) is None
    assert verify_serving_prefix(tok, messages, short.input_ids, short.loss_mask, truncated=True) is None
    assert verify_masks(tok, messages, short.input_ids, short.loss_mask) is not None

    first = full.loss_mask.index(1)
    with pytest.raises(MaskError) as info:
        encode_conversation(tok, messages, max_length=first, overlong="truncate")
    assert info.value.reason == "truncated_no_loss"


def test_length_arguments_are_validated():
    tok = tokenizer_for("chatml")
    with pytest.raises(ValueError, match="overlong"):
        encode_batch(tok, [], overlong="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length"):
        encode_batch(tok, [], max_length=0)


# --------------------------------------------------------------------------------------
# Text that looks like a control token stays text.


@pytest.mark.parametrize("template", ALL)
def test_lookalikes_in_user_and_assistant_content_are_plain_text(template):
    tok = tokenizer_for(template)
    spec = TEMPLATES[template]
    typed = " ".join(spec.special_tokens)
    messages = [
        {"role": "system", "content": f"system says {typed}"},
        {"role": "user", "content": f"I typed {typed} here"},
        {"role": "assistant", "content": f"You typed {typed}, which is just text"},
        {"role": "user", "content": spec.end_of_turn},
        {"role": "assistant", "content": spec.end_of_turn},
    ]
    assert has_special_token_lookalike(tok, messages)
    enc = encode_conversation(tok, messages)
    assert verify_masks(tok, messages, enc.input_ids, enc.loss_mask) is None
    assert verify_serving_prefix(tok, messages, enc.input_ids, enc.loss_mask) is None
    assert masked_runs(tok, enc) == [
        messages[2]["content"] + spec.end_of_turn,
        messages[4]["content"] + spec.end_of_turn,
    ]
    # Control ids appear only where the template put them: as many as with the
    # contents replaced by plain words.
    special_ids = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    plain = [{**m, "content": "word"} for m in messages]
    n_control = sum(i in special_ids for i in enc.input_ids)
    assert n_control == sum(i in special_ids for i in encode_conversation(tok, plain).input_ids)
    # The stock tokenizer would have read the typed text as control tokens.
    stock = tok.apply_chat_template(messages)["input_ids"]
    assert sum(i in special_ids for i in stock) > n_control
    assert decode_ids(tok, enc.input_ids) == decode_ids(tok, stock)
    # The serving path keeps typed markers as text too.
    prompt = encode_prompt(tok, messages[:2])
    assert prompt == enc.input_ids[: enc.loss_mask.index(1)]


def test_partial_marker_at_content_edge_is_handled():
    tok = tokenizer_for("chatml")
    messages = [{"role": "user", "content": "end|> or <|im_"}, {"role": "assistant", "content": "ok <|im_"}]
    assert has_special_token_lookalike(tok, messages)
    enc = encode_conversation(tok, messages)
    assert masked_runs(tok, enc) == ["ok <|im_<|im_end|>"]
    assert verify_serving_prefix(tok, messages, enc.input_ids, enc.loss_mask) is None


def test_no_lookalike_means_segmented_tokenization_equals_stock():
    for template in ALL:
        tok = tokenizer_for(template)
        info = info_for(tok)
        for messages in conversations(30, seed=6):
            assert not has_special_token_lookalike(tok, messages)
            for gen in (False, True):
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
                spans = content_spans(info, messages, text, gen)
                assert [text[a:b] for _, a, b in spans] == [m["content"] for m in messages]
                ids, _ = segment_encode(info, text, spans)
                assert ids == tok.apply_chat_template(messages, add_generation_prompt=gen)["input_ids"]


def _gpt2_style_tokenizer():
    """Header template on a tokenizer whose pre-tokenizer splits "\n\n" differently at the
    end of a text (the serving prompt) than before a word (the training text)."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = TEMPLATES["header"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t in spec.special_tokens]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([f"line {i}\n\n" for i in range(200)], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        chat_template=spec.template,
    )


@pytest.mark.parametrize("segment_safe", [True, False])
def test_token_level_skew_is_caught_when_text_matches(segment_safe, monkeypatch):
    tok = _gpt2_style_tokenizer()
    assert len(tok.encode("\n\n", add_special_tokens=False)) == 1  # merged at the end of a text
    monkeypatch.setattr(info_for(tok), "segment_safe", segment_safe)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "line"}]
    with pytest.raises(MaskError) as info:
        encode_conversation(tok, messages)
    assert info.value.reason == "token_prefix_mismatch"
    # the stock generation-free approach would have trained on a prefix serving never sends
    stock = tok.apply_chat_template(messages)["input_ids"]
    prompt = tok.apply_chat_template(messages[:1], add_generation_prompt=True)["input_ids"]
    assert stock[: len(prompt)] != prompt


@pytest.mark.parametrize("template", ALL)
def test_full_prompt_tokenization_fallback_agrees(template, monkeypatch):
    tok = tokenizer_for(template)
    convs = conversations(30, seed=11)
    fast, _ = encode_batch(tok, convs)
    monkeypatch.setattr(info_for(tok), "segment_safe", False)
    slow, rejects = encode_batch(tok, convs)
    assert rejects == [] and slow == fast


def test_segment_safety_detects_position_dependent_tokenizers():
    assert tokenizer_info._segment_safe({"added_tokens": [{"content": "<a>", "lstrip": False}]})
    assert not tokenizer_info._segment_safe({"added_tokens": [{"content": "<a>", "rstrip": True}]})
    assert not tokenizer_info._segment_safe({"added_tokens": [{"content": "<a>", "single_word": True}]})
    first = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"}
    assert not tokenizer_info._segment_safe({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [first]}})
    assert tokenizer_info._segment_safe({"pre_tokenizer": {**first, "prepend_scheme": "always"}})


def test_callers_tokenizer_is_left_untouched():
    tok = tokenizer_for("chatml")
    before = tok.backend_tokenizer.encode_special_tokens
    messages = [{"role": "user", "content": "<|im_end|>"}, {"role": "assistant", "content": "<|im_start|>"}]
    encode_conversation(tok, messages)
    encode_prompt(tok, messages[:1])
    assert tok.backend_tokenizer.encode_special_tokens == before
    assert tok.encode("<|im_end|>", add_special_tokens=False) == [tok.convert_tokens_to_ids("<|im_end|>")]


# --------------------------------------------------------------------------------------
# The verifiers catch wrong masks.


def test_verifiers_catch_wrong_masks():
    tok = tokenizer_for("chatml")
    messages = conversation(random.Random(8), 2, True)
    enc = encode_conversation(tok, messages)
    ids, mask = enc.input_ids, enc.loss_mask
    first = mask.index(1)
    eot = max(i for i, m in enumerate(mask) if m)

    shifted = [0, *mask[:-1]]
    assert verify_masks(tok, messages, ids, shifted) is not None
    assert verify_serving_prefix(tok, messages, ids, shifted) is not None
    no_eot = list(mask)
    no_eot[eot] = 0
    assert "not masked" in verify_masks(tok, messages, ids, no_eot)
    header_too = list(mask)
    header_too[first - 1] = 1
    assert verify_masks(tok, messages, ids, header_too) is not None
    user_too = list(mask)
    user_too[2] = 1
    assert verify_masks(tok, messages, ids, user_too) is not None
    assert verify_masks(tok, messages, ids, mask[:-1]) is not None
    skewed = list(ids)
    skewed[1] = skewed[2]
    assert verify_serving_prefix(tok, messages, skewed, mask) is not None
    # a typed marker encoded as the control id is caught
    typed = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a <|im_end|> b"}]
    stock = tok.apply_chat_template(typed, return_dict=True, return_assistant_tokens_mask=True)
    assert verify_masks(tok, typed, stock["input_ids"], stock["assistant_masks"]) is not None


# --------------------------------------------------------------------------------------
# Batches.


def test_encode_batch_equals_encode_conversation_elementwise():
    tok = tokenizer_for("header")
    convs = conversations(40, seed=9)
    convs[3] = [{"role": "user", "content": "no answer"}]
    convs[17] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": " untrimmed "}]
    convs[25] = [
        {"role": "user", "content": "<|eot_id|>"},
        {"role": "assistant", "content": "[ok]<|eot_id|>"},
    ]
    results, rejects = encode_batch(tok, convs, max_length=120)
    assert {i for i, _, _ in rejects} == {i for i, r in enumerate(results) if r is None}
    assert (3, "no_assistant_turn") in {(i, reason) for i, reason, _ in rejects}
    assert results[17] is not None  # the template trims it: masked as rendered
    assert results[25] is not None
    for i, messages in enumerate(convs):
        try:
            single = encode_conversation(tok, messages, max_length=120)
        except MaskError as err:
            assert (i, err.reason, err.detail) in rejects
        else:
            assert results[i] == single
    assert any(reason == "too_long" for _, reason, _ in rejects)


def test_encode_batch_of_nothing():
    assert encode_batch(tokenizer_for("chatml"), []) == ([], [])


# --------------------------------------------------------------------------------------
# Properties on awkward content.

FRAGMENTS = [
    "<|im_",
    "<|im_end|>",
    "<|im_start|>assistant\n",
    "<|eot_id|>",
    "<|start_header_id|>",
    "|>",
    "<|",
    "[ASSISTANT]",
    "[USER]",
    "</turn>",
    "<s>",
    "</s",
    "e\u0301",
    "\u0301",
    "😀",
    "👩\u200d👩\u200d👧",
    "שלום",
    "مرحبا",
    "東京物語",
    "\u200f",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "\r\n",
    "movie",
    " the",
    "4.5",
]
piece = st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4))
raw_content = st.lists(piece, min_size=1, max_size=8).map("".join).filter(lambda s: s != "")
curated_content = raw_content.map(str.strip).filter(lambda s: s != "")


@st.composite
def chats(draw, content):
    messages = [{"role": "system", "content": draw(content)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(content)})
        messages.append({"role": "assistant", "content": draw(content)})
    return messages


@pytest.mark.parametrize("template", ALL)
@settings(max_examples=60, deadline=None, database=None)
@given(messages=chats(raw_content))
def test_property_raise_or_verified(template, messages):
    tok = tokenizer_for(template)
    try:
        enc = encode_conversation(tok, messages)
    except MaskError as err:
        assert err.reason in MASK_REASONS
        return
    assert verify_masks(tok, messages, enc.input_ids, enc.loss_mask) is None
    assert verify_serving_prefix(tok, messages, enc.input_ids, enc.loss_mask) is None


@pytest.mark.parametrize("template", ALL)
@settings(max_examples=40, deadline=None, database=None)
@given(messages=chats(curated_content))
def test_property_curated_content_always_encodes(template, messages):
    # Curated content is stripped and non-empty: our templates must never reject it.
    tok = tokenizer_for(template)
    enc = encode_conversation(tok, messages)
    assert verify_masks(tok, messages, enc.input_ids, enc.loss_mask) is None
    assert verify_serving_prefix(tok, messages, enc.input_ids, enc.loss_mask) is None
    assert decode_ids(tok, enc.input_ids) == tok.apply_chat_template(messages, tokenize=False)


@pytest.mark.parametrize("template", ALL)
def test_segment_tokenization_equals_whole_rendering(template, monkeypatch):
    """Distinct text segments tokenized once (and reused from a tiny, often-cleared cache)
    give exactly the ids and offsets of tokenizing each rendering whole."""
    tok = tokenizer_for(template)
    info = info_for(tok)
    assert info.segment_safe and info.split_exact
    texts = [rendering.render_one(info, c, False, False)[0] for c in conversations(60, seed=21)]
    texts += [t + "<|im_end|>x<|im_end|><|im_end|>" for t in texts[:5]] + ["", "\n\n", "plain text only"]
    monkeypatch.setattr(segments, "_SEGMENT_CACHE_TOKENS", 50)
    cache = SegmentCache()
    for lo in range(0, len(texts), 7):  # several calls share the cache, as chunks do
        part = texts[lo : lo + 7]
        got = tokenize_segments(info, cache, part)
        for text, enc, (ids, offsets) in zip(part, info.plain.encode_batch(part), got, strict=True):
            assert ids == enc.ids, text
            assert offsets.pairs() == enc.offsets, text
            assert offsets.n == len(ids)
            for char in range(len(text) + 2):  # the piece-wise lookups answer as the flat list would
                assert offsets.first_from(char) == bisect.bisect_left([a for a, _ in enc.offsets], char)


def test_segment_split_disagreement_switches_to_whole_renderings(monkeypatch):
    """Were our added-token split ever wrong for a tokenizer, the once-per-tokenizer probe
    notices and the whole renderings are tokenized instead: masks stay exact."""
    tok = _with_template("chatml", TEMPLATES["chatml"].template)
    convs = conversations(20, seed=4)
    expected, _ = encode_batch(tokenizer_for("chatml"), convs)
    info = info_for(tok)
    # a split at text that is no added token: tokenizes "ss" apart from its neighbours
    monkeypatch.setattr(info, "added_split_re", re.compile("(<\\|im_start\\|>|<\\|im_end\\|>|ss)"))
    monkeypatch.setattr(info, "added_entries", {**info.added_entries, "ss": ([0], [(0, 2)])})
    results, rejects = encode_batch(tok, convs)
    assert rejects == [] and results == expected
    assert info.split_checked is False and info.split_exact is False


# Generation blocks in places the inlined template handles (top level, if, for) and in
# places it must leave to transformers' tracker (macro, set block, filter, nested, recursive loop).
_GEN = "{%- generation -%}{{ message['content'] + '<|im_end|>' }}{%- endgeneration -%}"
GENERATION_VARIANTS = {
    "chatml": (CHATML_GENERATION, True),
    "set_inside_stays_local": (
        CHATML_GENERATION.replace(
            _GEN,
            "{%- generation -%}{%- set tail = 'LEAK' -%}{{ message['content'] + '<|im_end|>' }}"
            "{%- endgeneration -%}{{ tail }}",
        ).replace("{%- for message in messages -%}", "{%- set tail = '' -%}{%- for message in messages -%}"),
        True,
    ),
    "loop_and_namespace": (
        CHATML_GENERATION.replace(
            "{%- for message in messages -%}", "{%- set ns = namespace(n=0) -%}{%- for message in messages -%}"
        ).replace(
            _GEN,
            "{%- generation -%}{%- set ns.n = ns.n + 1 -%}{{ message['content'] }}"
            "{{ '<|im_end|>' if loop.index > 0 else '' }}{%- endgeneration -%}",
        ),
        True,
    ),
    "in_macro": (
        "{%- macro turn(message) -%}"
        + _GEN
        + "{%- endmacro -%}"
        + CHATML_GENERATION.replace(_GEN, "{{ turn(message) }}"),
        False,
    ),
    "in_set_block": (
        CHATML_GENERATION.replace(_GEN, "{%- set body -%}" + _GEN + "{%- endset -%}{{ body }}"),
        False,
    ),
    "in_filter": (CHATML_GENERATION.replace(_GEN, "{%- filter trim -%}" + _GEN + "{%- endfilter -%}"), False),
    "nested": (
        CHATML_GENERATION.replace(_GEN, "{%- generation -%}" + _GEN + "{%- endgeneration -%}"),
        False,
    ),
    "names_caller": (
        CHATML_GENERATION.replace(
            "message['content'] + '<|im_end|>' }}{%- endgeneration",
            "message['content'] + '<|im_end|>' }}{{ caller is defined and '' or '' }}{%- endgeneration",
        ),
        False,
    ),
}


@pytest.mark.parametrize("variant", sorted(GENERATION_VARIANTS))
def test_inlined_generation_template_renders_as_transformers_tracker(variant):
    """Same text and the same {% generation %} spans as transformers' tracker, per mode; templates
    whose blocks cannot be inlined exactly keep the stock path."""
    template, inlinable = GENERATION_VARIANTS[variant]
    tok = _with_template("chatml", template)
    info = info_for(tok)
    compiled = compile_jinja_template(info.template)
    chats = [m for m in conversations(40, seed=9)]
    chats.append([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])  # raises in the template
    prompts = [c[:t] for c in chats for t, m in enumerate(c) if m["role"] == "assistant"]
    for batch, agp, spans in ((chats, False, True), (prompts, True, False), (chats, False, False)):
        fast = rendering._render_plain(info, batch, agp, spans)
        stock = render_compiled(info, compiled, batch, agp, spans)
        assert comparable(fast) == comparable(stock)
    assert bool(info.fast_template) is inlinable
    if inlinable:
        assert info.fast_checked == {(False, True), (True, False), (False, False)}
        results, _ = encode_batch(tok, chats)
        tokenizer_info._INFO_CACHE.clear()
        info = info_for(tok)
        info.fast_template = False  # the stock tracker from the start
        assert encode_batch(tok, chats)[0] == results


def test_inlined_generation_template_probe_falls_back(monkeypatch):
    """A rewrite that rendered differently is caught by the per-mode probe: stock rendering instead."""
    tok = _with_template("chatml", CHATML_GENERATION)
    info = info_for(tok)
    convs = conversations(20, seed=3)
    expected, _ = encode_batch(tokenizer_for("chatml"), convs)

    class Loud(generation_inline._GenerationMark):
        def __str__(self) -> str:
            super().__str__()
            return "!"

    monkeypatch.setattr(generation_inline, "_GenerationMark", Loud)
    results, rejects = encode_batch(tok, convs)
    assert rejects == [] and results == expected
    assert info.fast_template is False


@pytest.mark.parametrize("template", ALL)
def test_encode_batch_leaves_no_reference_cycles(template):
    """encode_batch pauses the cyclic collector (paused_gc), which is only free if it makes no
    garbage cycles: also not for rejected conversations (template errors, lookalikes, overlong)."""
    tok = tokenizer_for(template)
    convs = conversations(40, seed=8)
    convs += [
        [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}, {"role": "assistant", "content": "c"}],
        [{"role": "user", "content": "<|im_end|> <s> [INST]"}, {"role": "assistant", "content": "x <|im_start|>"}],
        [{"role": "user", "content": ""}],
        "not a conversation",
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 400}],
    ]
    encode_batch(tok, convs[:2])
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what the collector finds, to look at it
    try:
        results, rejects = encode_batch(tok, convs, max_length=200)
        assert rejects and any(r is not None for r in results)
        del results, rejects
        gc.collect()
        # Other threads of the test session may leave garbage of their own: only ours counts.
        ours = [
            obj
            for obj in gc.garbage
            if isinstance(obj, MaskError)
            or type(obj).__module__.startswith(f"{masking.__name__}.")
            or (isinstance(obj, types.FrameType) and Path(obj.f_code.co_filename).parent == MASKING_DIR)
        ]
        assert ours == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert gc.isenabled()
    with masking.paused_gc():
        assert not gc.isenabled()
        with masking.paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


# --------------------------------------------------------------------------------------
# Bounded cost per conversation: work linear in the turns, nothing per turn for what is rejected anyway.

_LOOP = "{%- for message in messages -%}"
_USER_TURN = "{{ message['content'] + '<|im_end|>' + '\\n' }}"
_GEN_PROMPT = "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
# Prefix-stable templates beyond the shipped ones (the bound is the largest constant messages[k] read).
STABLE_TEMPLATES = {
    "numbers_user_turns": (
        CHATML_GENERATION.replace(_LOOP, "{%- set ns = namespace(n=0) -%}" + _LOOP).replace(
            _USER_TURN, "{%- set ns.n = ns.n + 1 -%}{{ '(' ~ ns.n ~ ') ' ~ message['content'] ~ '<|im_end|>\\n' }}"
        ),
        -1,
    ),
    "loop_index_and_previtem": (
        CHATML_GENERATION.replace(
            _USER_TURN,
            "{{ message['content'] ~ ' [' ~ loop.index ~ (' after ' ~ loop.previtem['role'] if not loop.first "
            "else '') ~ ']<|im_end|>\\n' }}",
        ),
        -1,
    ),
    "system_first_then_filtered_loop": (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- endif -%}"
        + CHATML_GENERATION.replace(_LOOP, "{%- for message in messages if message['role'] != 'system' -%}"),
        0,
    ),
}
# Templates whose serving prompts the syntax does not prove to be prefixes: rendered turn by turn.
HARMLESS_LOOP_LAST = CHATML_GENERATION.replace(_USER_TURN, "{{ '' if loop.last else '' }}" + _USER_TURN)
STRIPS_EARLIER_REASONING = (  # Qwen3-like: reasoning kept only in the turns after the last user message
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    + CHATML_GENERATION.replace(
        "{{ message['content'] + '<|im_end|>' }}",
        "{{ (message['content'].split('</think>')[-1] if loop.index0 < ns.last_user else message['content']) "
        "+ '<|im_end|>' }}",
    )
)
UNSTABLE_TEMPLATES = {
    "harmless_loop_last": HARMLESS_LOOP_LAST,
    "rewrites_earlier_user": REWRITES_EARLIER_USER,
    "drops_earlier_assistant": DROPS_EARLIER_ASSISTANT,
    "strips_earlier_reasoning": STRIPS_EARLIER_REASONING,
    "generation_prompt_from_loop_state": CHATML_GENERATION.replace(
        _LOOP, "{%- set ns = namespace(last='') -%}" + _LOOP + "{%- set ns.last = message['role'] -%}"
    ).replace(
        _GEN_PROMPT,
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' if ns.last == 'user' else "
        "'<|im_start|>assistant (again)\\n' }}{%- endif -%}",
    ),
    "add_generation_prompt_in_loop": CHATML_GENERATION.replace(
        _USER_TURN, "{{ '' if add_generation_prompt else '' }}" + _USER_TURN
    ),
    "length_in_loop": CHATML_GENERATION.replace(_USER_TURN, "{{ '' if messages|length > 1 else '' }}" + _USER_TURN),
    "last_message_read": "{{ '' if messages[-1]['role'] == 'user' else '' }}" + CHATML_GENERATION,
    "messages_sliced": CHATML_GENERATION.replace(_LOOP, "{%- for message in messages[0:] -%}"),
    "second_loop": "{%- for m in messages -%}{%- endfor -%}" + CHATML_GENERATION,
    "for_else": CHATML_GENERATION.replace(
        "{%- endfor -%}{%- if add_generation_prompt", "{%- else -%}{{ '' }}{%- endfor -%}{%- if add_generation_prompt"
    ),
    "macro_after_loop": "{%- macro gp() -%}{{ '<|im_start|>assistant\\n' }}{%- endmacro -%}"
    + CHATML_GENERATION.replace(_GEN_PROMPT, "{%- if add_generation_prompt -%}{{ gp() }}{%- endif -%}"),
    "loop_inside_if": "{%- if true -%}" + CHATML_GENERATION.replace(_GEN_PROMPT, "") + "{%- endif -%}" + _GEN_PROMPT,
    "next_item": CHATML_GENERATION.replace(_USER_TURN, "{{ '' if loop.nextitem else '' }}" + _USER_TURN),
}


def _tokenizer_named(name: str):
    if name in ALL:
        return tokenizer_for(name)
    if name in STABLE_TEMPLATES:
        return _with_template("chatml", STABLE_TEMPLATES[name][0])
    if name in GENERATION_VARIANTS:
        return _with_template("chatml", GENERATION_VARIANTS[name][0])
    return _with_template("chatml", UNSTABLE_TEMPLATES[name])


def test_prefix_stability_is_proved_from_the_template_syntax():
    """Shipped and other forward-only templates are recognised; anything that can see later messages
    (loop.last, length, messages[-1], a second loop, state read after the loop, ...) is not."""
    expected = {"chatml": -1, "header": -1, "default_system": 0}
    expected |= {name: bound for name, (_, bound) in STABLE_TEMPLATES.items()}
    expected |= {name: -1 for name in GENERATION_VARIANTS}
    expected |= {name: None for name in UNSTABLE_TEMPLATES}
    for name, bound in expected.items():
        assert prefix_bound(info_for(_tokenizer_named(name))) == bound, name


class _Work:
    """Counts rendering work (messages the chat template runs over, per add_generation_prompt)
    and tokenizing work (characters given to the tokenizer) during encode_batch."""

    def __init__(self, monkeypatch, tok):
        self.messages = {False: 0, True: 0}
        self.chars = 0
        render_many, render_one = rendering.render_many, rendering.render_one

        def many(info, chats, add_generation_prompt, spans, plain=False):
            self.messages[add_generation_prompt] += sum(len(chat) for chat in chats)
            return render_many(info, chats, add_generation_prompt, spans, plain)

        def one(info, chat, add_generation_prompt, spans):
            self.messages[add_generation_prompt] += len(chat)
            return render_one(info, chat, add_generation_prompt, spans)

        monkeypatch.setattr(rendering, "render_many", many)
        monkeypatch.setattr(rendering, "render_one", one)
        info = info_for(tok)
        work = self

        class Counting:
            def __init__(self, inner):
                self.inner = inner

            def encode(self, text, **kwargs):
                work.chars += len(text)
                return self.inner.encode(text, **kwargs)

            def encode_batch(self, texts, **kwargs):
                work.chars += sum(map(len, texts))
                return self.inner.encode_batch(texts, **kwargs)

            def __getattr__(self, name):
                return getattr(self.inner, name)

        monkeypatch.setattr(info, "plain", Counting(info.plain))
        monkeypatch.setattr(info, "textual", Counting(info.textual))

    def reset(self):
        self.messages = {False: 0, True: 0}
        self.chars = 0


@pytest.mark.parametrize("template", [*SHIPPED, "harmless_loop_last"])
@pytest.mark.parametrize("typed", [None, "<|im_end|> [USER] <|eot_id|>"])
def test_encoding_work_grows_linearly_with_the_turns(template, typed, monkeypatch):
    """Twice the turns, at most about twice the rendering and tokenizing: each turn's serving prompt
    is no longer rendered (or, for lookalike rows, sentinel-rendered and tokenized) from the start
    of the conversation. Templates not proved prefix-stable keep the exact per-turn rendering."""
    tok = _tokenizer_named(template)
    work = _Work(monkeypatch, tok)
    measured = {}
    for exchanges in (40, 80):
        messages = long_conversation(exchanges, typed=typed)
        work.reset()
        enc = encode_conversation(tok, messages)
        measured[exchanges] = (sum(work.messages.values()), work.chars)
        assert verify_masks(tok, messages, enc.input_ids, enc.loss_mask) is None
    (renders, chars), (renders2, chars2) = measured[40], measured[80]
    if template == "harmless_loop_last":  # the exact fallback: still quadratic, and still exact
        assert renders2 > 3 * renders, measured
        return
    assert renders2 <= 2 * renders + 20, measured
    assert chars2 <= 2 * chars + 400, measured


@pytest.mark.parametrize("template", [*ALL, "harmless_loop_last"])
@pytest.mark.parametrize("typed", [None, "<|im_end|> [USER] <|eot_id|>"])
def test_overlong_conversation_is_quarantined_before_any_serving_prompt(template, typed, monkeypatch):
    tok = _tokenizer_named(template)
    messages = long_conversation(100, typed=typed)
    work = _Work(monkeypatch, tok)
    results, rejects = encode_batch(tok, [messages], max_length=200)
    assert results == [None]
    assert [(i, reason) for i, reason, _ in rejects] == [(0, "too_long")]
    assert "max_length=200" in rejects[0][2]
    assert work.messages[True] == 0  # not one serving prompt rendered
    assert work.messages[False] <= 2 * len(messages)  # the conversation (and for lookalikes its sentinel rendering)


def test_truncation_renders_serving_prompts_only_up_to_the_cut(monkeypatch):
    """With a template rendered turn by turn, a truncated conversation renders the prompts of the
    turns before the cut and of the first one after it, not of every turn."""
    tok = _tokenizer_named("harmless_loop_last")
    messages = long_conversation(100)
    full = encode_conversation(tok, messages)
    starts = [k for k, (a, b) in enumerate(zip(full.loss_mask, [0, *full.loss_mask], strict=False)) if a and not b]
    cut = starts[2] + 3  # inside the third assistant turn
    work = _Work(monkeypatch, tok)
    short = encode_conversation(tok, messages, max_length=cut, overlong="truncate")
    assert short == EncodedConversation(full.input_ids[:cut], full.loss_mask[:cut], True)
    turns = [j for j, m in enumerate(messages) if m["role"] == "assistant"]
    assert work.messages[True] == sum(turns[:4])  # prompts of assistant turns 1..4 (the 4th starts past the cut)


def test_truncation_does_not_reject_for_turns_past_the_cut():
    """A turn that cannot be masked exactly only matters if truncation keeps it."""
    tok = _with_template("header", ALTERS_BANGS)
    messages = long_conversation(6)
    messages[-1] = {"role": "assistant", "content": "altered reply!"}  # the template renders it as "altered reply."
    with pytest.raises(MaskError) as info:
        encode_conversation(tok, messages)
    assert info.value.reason == "content_not_rendered"
    kept = encode_conversation(tok, messages[:-2])  # ends with an end-of-turn token: a token boundary
    short = encode_conversation(tok, messages, max_length=len(kept.input_ids), overlong="truncate")
    assert short == EncodedConversation(kept.input_ids, kept.loss_mask, True)
    assert verify_masks(tok, messages, short.input_ids, short.loss_mask, truncated=True) is None
    assert verify_serving_prefix(tok, messages, short.input_ids, short.loss_mask, truncated=True) is None


def _awkward_conversations(n: int, seed: int) -> list[list[dict[str, str]]]:
    """Conversations of 1-8 exchanges whose messages are often built from FRAGMENTS (typed control
    tokens, partial markers, odd whitespace and scripts)."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        messages = []
        for role in ["system"] * (rnd.random() < 0.3) + ["user", "assistant"] * rnd.randint(1, 8):
            if rnd.random() < 0.4:
                content = "".join(rnd.choice(FRAGMENTS) for _ in range(rnd.randint(1, 4)))
            else:
                content = conversation(rnd, 1, False)[0]["content"]
            messages.append({"role": role, "content": content})
        out.append(messages)
    return out


def _exactly(monkeypatch, tok) -> None:
    """Switch the prefix-stable path off for ``tok``: every serving prompt rendered and tokenized on its own."""
    info = info_for(tok)
    monkeypatch.setattr(info, "prefix_checked", True)
    monkeypatch.setattr(info, "prefix_bound", None)


EQUIVALENCE_TEMPLATES = [
    *SHIPPED,
    *STABLE_TEMPLATES,
    *(name for name, (_, inlinable) in GENERATION_VARIANTS.items() if name != "chatml"),
    "harmless_loop_last",
    "strips_earlier_reasoning",
]


@pytest.mark.parametrize("template", EQUIVALENCE_TEMPLATES)
def test_prefix_stable_path_equals_rendering_every_prompt(template, monkeypatch):
    """Byte for byte the same masks, rejects and reasons as rendering and tokenizing each turn's
    serving prompt on its own, on awkward and long conversations, with and without length limits."""
    tok = _tokenizer_named(template)
    convs = conversations(30, seed=12) + _awkward_conversations(45, seed=13)
    convs += [long_conversation(25, seed=14), long_conversation(25, seed=15, typed="x <|im_start|>")]
    for limits in ({}, {"max_length": 200}, {"max_length": 60, "overlong": "truncate"}):
        with monkeypatch.context() as patch:
            got = encode_batch(tok, convs, **limits)
            _exactly(patch, tok)
            assert encode_batch(tok, convs, **limits) == got, limits
        assert sum(r is not None for r in got[0]) >= 8, limits  # the comparison covers accepted rows


@pytest.mark.parametrize("template", ALL)
@settings(max_examples=30, deadline=None, database=None)
@given(messages=chats(raw_content))
def test_property_prefix_stable_path_equals_rendering_every_prompt(template, messages):
    tok = tokenizer_for(template)
    info = info_for(tok)
    fast = encode_batch(tok, [messages])
    saved = (info.prefix_checked, info.prefix_bound)
    info.prefix_checked, info.prefix_bound = True, None
    try:
        assert encode_batch(tok, [messages]) == fast
    finally:
        info.prefix_checked, info.prefix_bound = saved


@pytest.mark.parametrize("template", ALL)
def test_serving_check_on_a_turn_budget_keeps_its_power(template):
    """Checking the last turn covers every token before it: a skew anywhere before the last turn is
    found whatever the budget; a mask that starts early in a middle turn is found by verify_masks."""
    tok = tokenizer_for(template)
    messages = long_conversation(30)
    enc = encode_conversation(tok, messages)
    assert verify_serving_prefix(tok, messages, enc.input_ids, enc.loss_mask, max_turns=2) is None
    middle = len(enc.input_ids) // 2
    skewed = list(enc.input_ids)
    skewed[middle] = skewed[middle - 1] if skewed[middle] != skewed[middle - 1] else skewed[middle + 1]
    assert verify_serving_prefix(tok, messages, skewed, enc.loss_mask, max_turns=2) is not None


def test_turn_budget_picks_first_last_and_evenly_spaced():
    assert verify._spread(3, 16) == [0, 1, 2]
    assert verify._spread(100, 0) == list(range(100))
    assert verify._spread(100, 1) == [99]
    assert verify._spread(100, 5) == [0, 25, 50, 74, 99]
