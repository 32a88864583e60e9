"""The chat templates the platform ships, written for this project.

The tokenizer's chat template is the single source of truth for how a conversation
becomes text, both for training shards and for serving prompts (DESIGN.md, "Loss mask
rule"). We ship three deliberately different shapes so that the masking code is
exercised on more than one layout:

- ``chatml``: ChatML-like, with ``{% generation %}`` markers around each assistant
  turn's content and end-of-turn token, so transformers' own
  ``return_assistant_tokens_mask`` can cross-check our masks. Platform default.
- ``header``: a header-per-turn layout (Llama-3-like) *without* generation markers,
  that trims content and opens with a BOS token.
- ``default_system``: opens with a BOS token, inserts a default system prompt when the
  conversation has none, uses bracketed role markers, and no generation markers.

Three more follow the shapes of open-weight model families, whose templates rewrite the
conversation (docs/architecture.md, "How loss masks are made and checked", says what the
encoder does with each):

- ``reasoning`` (Qwen3-like): ChatML turns; an assistant turn before the last user turn
  loses its ``<think>...</think>`` reasoning (and the whitespace after it), so a turn's
  rendering depends on whether a user turn follows it.
- ``llama3`` (Llama-3-like): header turns that trim content; the system turn always opens
  with a knowledge-cutoff and today's date (``date_string`` if given, else the day of
  rendering), and a default system prompt is injected when the conversation has none.
- ``gemma`` (Gemma-like): no system role (a system message is folded into the first user
  turn), the assistant is rendered as ``model``, content is trimmed, and roles that do not
  alternate user/assistant raise.

Each template raises on an unknown role instead of rendering something surprising.
"""

from __future__ import annotations

from dataclasses import dataclass

# Rendering follows transformers' Jinja environment (trim_blocks + lstrip_blocks), so
# every literal is emitted through an expression and whitespace control is explicit.

CHATML_GENERATION = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{ message['content'] + '<|im_end|>' }}{%- endgeneration -%}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

HEADER_STYLE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim -}}"
    "{{ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif -%}"
)

DEFAULT_SYSTEM_PROMPT = "You are the catalog assistant. Recommend titles from the catalog and answer briefly."

DEFAULT_SYSTEM_BOS = (
    "{{- bos_token -}}"
    "{%- if messages and messages[0]['role'] != 'system' -%}"
    "{{ '[SYS]' + '" + DEFAULT_SYSTEM_PROMPT + "' + '</turn>' + '\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ '[SYS]' }}"
    "{%- elif message['role'] == 'user' -%}{{ '[USER]' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '[ASSISTANT]' }}"
    "{%- else -%}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ message['content'] + '</turn>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '[ASSISTANT]' }}{%- endif -%}"
)


REASONING_STRIPS_EARLIER = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- set content = message['content'] -%}"
    "{%- if message['role'] == 'assistant' and loop.index0 < ns.last_user and '</think>' in content -%}"
    "{%- set content = content.split('</think>')[-1].lstrip() -%}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

LLAMA3_DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant for a streaming catalog."

LLAMA3_STYLE = (
    "{{- bos_token -}}"
    "{%- if date_string is not defined -%}{%- set date_string = strftime_now('%d %b %Y') -%}{%- endif -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] | trim -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = '" + LLAMA3_DEFAULT_SYSTEM_PROMPT + "' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{{ 'Cutting Knowledge Date: December 2023\n' + 'Today Date: ' + date_string + '\n\n' }}"
    "{{ system_message + '<|eot_id|>' }}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] not in ['user', 'assistant'] -%}"
    "{{ raise_exception('unknown or misplaced role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{- message['content'] | trim -}}"
    "{{ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif -%}"
)

GEMMA_STYLE = (
    "{{- bos_token -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{{- (first_user_prefix if loop.first else '') + (message['content'] | trim) -}}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class TemplateSpec:
    """A chat template plus the special tokens a tokenizer needs to render it.

    ``special_tokens`` lists every control string the template emits; tokenizer
    training registers them as special added tokens so each is one id that text
    can never produce by accident.
    """

    name: str
    template: str
    special_tokens: tuple[str, ...]
    bos_token: str
    eos_token: str
    pad_token: str
    end_of_turn: str

    def __post_init__(self) -> None:
        for tok in (self.bos_token, self.eos_token, self.pad_token, self.end_of_turn):
            if tok not in self.special_tokens:
                raise ValueError(f"template {self.name!r}: {tok!r} must be listed in special_tokens")


# The special tokens two template shapes share (ChatML and its reasoning variant; the two header layouts).
_CHATML_TOKENS: dict = {
    "special_tokens": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"),
    "bos_token": "<|endoftext|>",
    "eos_token": "<|im_end|>",
    "pad_token": "<|pad|>",
    "end_of_turn": "<|im_end|>",
}
_HEADER_TOKENS: dict = {
    "special_tokens": (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|pad_id|>",
    ),
    "bos_token": "<|begin_of_text|>",
    "eos_token": "<|eot_id|>",
    "pad_token": "<|pad_id|>",
    "end_of_turn": "<|eot_id|>",
}


TEMPLATES: dict[str, TemplateSpec] = {
    "chatml": TemplateSpec(
        name="chatml",
        template=CHATML_GENERATION,
        **_CHATML_TOKENS,
    ),
    "header": TemplateSpec(
        name="header",
        template=HEADER_STYLE,
        **_HEADER_TOKENS,
    ),
    "default_system": TemplateSpec(
        name="default_system",
        template=DEFAULT_SYSTEM_BOS,
        special_tokens=("<s>", "</s>", "<pad>", "[SYS]", "[USER]", "[ASSISTANT]", "</turn>"),
        bos_token="<s>",
        eos_token="</turn>",
        pad_token="<pad>",
        end_of_turn="</turn>",
    ),
    "reasoning": TemplateSpec(
        name="reasoning",
        template=REASONING_STRIPS_EARLIER,
        **_CHATML_TOKENS,
    ),
    "llama3": TemplateSpec(
        name="llama3",
        template=LLAMA3_STYLE,
        **_HEADER_TOKENS,
    ),
    "gemma": TemplateSpec(
        name="gemma",
        template=GEMMA_STYLE,
        special_tokens=("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"),
        bos_token="<bos>",
        eos_token="<end_of_turn>",
        pad_token="<pad>",
        end_of_turn="<end_of_turn>",
    ),
}

# The templates that rewrite the conversation, in the shapes of open-weight model families.
FAMILY_TEMPLATES = ("reasoning", "llama3", "gemma")

DEFAULT_TEMPLATE = "chatml"
