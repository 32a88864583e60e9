"""The templates in the shapes of open-weight model families (core.chat_templates): each one's
rewriting is real, and what the encoder does with it is exact."""

from __future__ import annotations

from datetime import datetime

import pytest
from support.masking_fixtures import masked_runs, tokenizer_for

from core.chat_templates import LLAMA3_DEFAULT_SYSTEM_PROMPT
from core.masking import MaskError, encode_conversation, verify_masks, verify_serving_prefix


def _checked(tok, messages):
    encoded = encode_conversation(tok, messages)
    assert verify_masks(tok, messages, encoded.input_ids, encoded.loss_mask) is None
    assert verify_serving_prefix(tok, messages, encoded.input_ids, encoded.loss_mask) is None
    return encoded


THINKING = [
    {"role": "user", "content": "a heist movie?"},
    {"role": "assistant", "content": "<think>\nthe user liked heist films\n</think>\n\nWatch the classic heist."},
    {"role": "user", "content": "and a series?"},
    {"role": "assistant", "content": "<think>\nseries now\n</think>\n\nThe space drama."},
]


def test_reasoning_template_strips_reasoning_before_the_last_user_turn_only():
    tok = tokenizer_for("reasoning")
    text = tok.apply_chat_template(THINKING, tokenize=False)
    assert "the user liked heist films" not in text
    assert "<|im_start|>assistant\nWatch the classic heist.<|im_end|>" in text
    assert THINKING[3]["content"] + "<|im_end|>" in text  # the last turn keeps its reasoning
    encoded = _checked(tok, THINKING[:2])  # reasoning in the last turn only: nothing is rewritten
    assert masked_runs(tok, encoded) == [THINKING[1]["content"] + "<|im_end|>"]


def test_reasoning_in_an_earlier_turn_cannot_be_masked_as_written_in_one_row():
    tok = tokenizer_for("reasoning")
    with pytest.raises(MaskError) as info:
        encode_conversation(tok, THINKING)
    assert info.value.reason == "content_not_rendered"
    assert "Watch the classic heist." in info.value.detail  # names what the rendering shows instead


def test_llama3_template_injects_a_dated_default_system_prompt():
    tok = tokenizer_for("llama3")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  hello there \n"}]
    before = datetime.now().strftime("%d %b %Y")
    text = tok.apply_chat_template(messages, tokenize=False)
    after = datetime.now().strftime("%d %b %Y")
    assert any(f"Today Date: {day}\n\n{LLAMA3_DEFAULT_SYSTEM_PROMPT}<|eot_id|>" in text for day in (before, after))
    pinned = tok.apply_chat_template(messages, tokenize=False, date_string="01 Jan 2030")
    assert "Today Date: 01 Jan 2030" in pinned
    encoded = _checked(tok, messages)
    assert masked_runs(tok, encoded) == ["hello there<|eot_id|>"]  # trimmed, masked as rendered


def test_llama3_template_uses_the_given_system_message_even_when_empty():
    tok = tokenizer_for("llama3")
    messages = [
        {"role": "system", "content": ""},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert LLAMA3_DEFAULT_SYSTEM_PROMPT not in text
    assert masked_runs(tok, _checked(tok, messages)) == ["hello<|eot_id|>"]


def test_gemma_template_folds_the_system_text_into_the_first_user_turn():
    tok = tokenizer_for("gemma")
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a comedy?"},
        {"role": "assistant", "content": "The funny sequel."},
        {"role": "user", "content": "another"},
        {"role": "assistant", "content": " The cozy pilot. "},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert "<start_of_turn>user\nbe brief\n\na comedy?<end_of_turn>\n" in text
    assert "<start_of_turn>model\nThe funny sequel.<end_of_turn>" in text
    assert "system" not in text and "assistant" not in text
    encoded = _checked(tok, messages)
    assert masked_runs(tok, encoded) == ["The funny sequel.<end_of_turn>", "The cozy pilot.<end_of_turn>"]


@pytest.mark.parametrize(
    "roles",
    [
        ["user", "user", "assistant"],
        ["user", "assistant", "assistant"],
        ["system", "user", "system", "assistant"],
    ],
)
def test_gemma_template_raises_on_bad_alternation(roles):
    tok = tokenizer_for("gemma")
    messages = [{"role": role, "content": f"text {k}"} for k, role in enumerate(roles)]
    with pytest.raises(MaskError) as info:
        encode_conversation(tok, messages)
    assert info.value.reason == "template_error"
    assert "alternate" in info.value.detail
