"""Template switches (Qwen3's `enable_thinking`) get their default at import, in the template itself.

The template below is ours, in the shape of Qwen3's: the reply after the last user turn always carries a
reasoning block (empty when the reply has none), earlier replies lose theirs, and only `enable_thinking`
set to false makes the serving prompt close an empty block. Unset, no reply renders right after its
serving prompt, so every row would be quarantined.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from support.masking_fixtures import conversations, tokenizer_for
from support.model_dirs import save_model_dir
from transformers import AutoTokenizer

from core.base_model import import_local_model
from core.masking import encode_batch
from core.masking.rewrites import encode_with_policy
from core.model_checks import PROBES
from core.template_defaults import validate_defaults, with_defaults

THINKING_SWITCH = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role: ' + m['role']) }}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{%- set answer = m['content'] -%}{%- set thought = '' -%}"
    "{%- if '</think>' in answer -%}"
    "{%- set thought = answer.split('</think>')[0].split('<think>')[-1].strip('\n') -%}"
    "{%- set answer = answer.split('</think>')[-1].lstrip('\n') -%}"
    "{%- endif -%}"
    "{%- if loop.index0 > ns.last_user -%}"
    "{{ '<|im_start|>assistant\n<think>\n' + thought + '\n</think>\n\n' + answer + '<|im_end|>\n' }}"
    "{%- else -%}{{ '<|im_start|>assistant\n' + answer + '<|im_end|>\n' }}{%- endif -%}"
    "{%- else -%}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking -%}{{ '<think>\n\n</think>\n\n' }}{%- endif -%}"
    "{%- endif -%}"
)
CLOSED_BLOCK = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def thinking_tokenizer():
    tokenizer = copy.deepcopy(tokenizer_for("reasoning"))
    tokenizer.chat_template = THINKING_SWITCH
    return tokenizer


@pytest.fixture(scope="module")
def qwen3_dir(thinking_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("qwen3-thinking"), "qwen3", tokenizer=thinking_tokenizer)


def _prompt(tokenizer, **kwargs) -> str:
    messages = PROBES["user/assistant"][:-1]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


def test_a_default_applies_only_when_the_caller_passes_no_value(thinking_tokenizer) -> None:
    tokenizer = copy.deepcopy(thinking_tokenizer)
    tokenizer.chat_template = with_defaults(THINKING_SWITCH, {"enable_thinking": False})
    assert _prompt(tokenizer).endswith(CLOSED_BLOCK)
    assert _prompt(tokenizer, enable_thinking=True).endswith("<|im_start|>assistant\n")
    assert not _prompt(thinking_tokenizer).endswith(CLOSED_BLOCK)


def test_string_and_number_defaults_render_as_written(thinking_tokenizer) -> None:
    tokenizer = copy.deepcopy(thinking_tokenizer)
    tokenizer.chat_template = with_defaults(
        "{{ greeting + ' ' + (limit * 2) | string }}", {"greeting": 'say "hi"\n', "limit": 21}
    )
    assert tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == 'say "hi"\n 42'


@pytest.mark.parametrize(
    ("defaults", "message"),
    [
        ({"enable-thinking": False}, "not a template variable name"),
        ({"messages": []}, "set per rendering"),
        ({"enable_thinking": [False]}, "use true/false, a number or a string"),
    ],
)
def test_bad_defaults_are_refused_with_the_offending_name(defaults: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_defaults(defaults)


def test_import_without_the_switch_suggests_it(qwen3_dir: Path, tmp_path: Path) -> None:
    card = import_local_model(qwen3_dir, tmp_path / "out")
    assert card["chat_template_defaults"] == {}
    assert set(card["chat_template"]["probes_not_masked"]) == set(PROBES)
    assert card["chat_template"]["suggested_chat_template_defaults"] == {"enable_thinking": False}
    assert any('chat_template_defaults {"enable_thinking": false}' in w for w in card["warnings"])


def test_import_with_the_switch_masks_every_reply_and_keeps_the_source(qwen3_dir: Path, tmp_path: Path) -> None:
    source_template = (qwen3_dir / "chat_template.jinja").read_bytes()
    out = tmp_path / "out"
    card = import_local_model(qwen3_dir, out, {"enable_thinking": False})
    assert card["chat_template_defaults"] == {"enable_thinking": False}
    assert card["chat_template"] == {"probes_rendered": list(PROBES)}
    assert card["warnings"] == []
    assert (qwen3_dir / "chat_template.jinja").read_bytes() == source_template

    imported = AutoTokenizer.from_pretrained(out)
    assert _prompt(imported).endswith(CLOSED_BLOCK)  # what evaluation and a serving stack will render
    rows = conversations(40, seed=3)
    single = [r for r in rows if sum(m["role"] == "assistant" for m in r) == 1]
    encoded, rejects = encode_batch(imported, single)
    assert single and rejects == [] and all(e is not None for e in encoded)
    # Earlier replies lose the closed block once a user turn follows: the rewrite policy expands those rows.
    outcome = encode_with_policy(imported, rows, policy="expand")
    assert outcome.rejects == []
    assert outcome.counts["kept"] == len(single) and outcome.counts["expanded"] == len(rows) - len(single)
