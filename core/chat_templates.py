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


TEMPLATES: dict[str, TemplateSpec] = {
    "chatml": TemplateSpec(
        name="chatml",
        template=CHATML_GENERATION,
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"),
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        end_of_turn="<|im_end|>",
    ),
    "header": TemplateSpec(
        name="header",
        template=HEADER_STYLE,
        special_tokens=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|pad_id|>",
        ),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|pad_id|>",
        end_of_turn="<|eot_id|>",
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
}

DEFAULT_TEMPLATE = "chatml"
