"""Defaults for a chat template's switches, written into the template of an imported model.

Some templates take keyword switches: Qwen3's `enable_thinking` decides whether the serving
prompt already closes an empty reasoning block. Left unset, such a template renders a reply
with a reasoning block that the serving prompt does not contain, so no reply can be masked
exactly and every row is quarantined. Passing the switch only at tokenization time would
leave evaluation, export and whoever serves the checkpoint rendering differently. Instead the
import writes the default into the template itself: a prologue that sets each switch unless
the caller passes one. Every later rendering, ours or a serving stack's, then agrees, and an
explicit keyword still wins.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

TemplateValue = bool | int | float | str

# Switches known to change what a template renders around a reply, with the value that makes a reply
# without reasoning render exactly after its serving prompt. The import suggests these when a probe fails.
KNOWN_SWITCHES: dict[str, TemplateValue] = {"enable_thinking": False}

CHAT_TEMPLATE_FILE = "chat_template.jinja"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def jinja_literal(value: TemplateValue) -> str:
    """`value` as a Jinja expression that evaluates to it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a double-quoted string with JSON escapes, which Jinja reads the same way
    raise TypeError(f"a chat template default must be a bool, number or string, got {type(value).__name__}")


def validate_defaults(defaults: Mapping[str, object]) -> dict[str, TemplateValue]:
    """The defaults, checked: names a template can refer to, scalar values."""
    checked: dict[str, TemplateValue] = {}
    for name, value in defaults.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"chat_template_defaults: {name!r} is not a template variable name")
        if name in ("messages", "add_generation_prompt", "tools", "documents"):
            raise ValueError(f"chat_template_defaults: {name!r} is set per rendering and cannot have a default")
        if not isinstance(value, bool | int | float | str):
            raise ValueError(f"chat_template_defaults: {name!r} is {value!r}; use true/false, a number or a string")
        checked[name] = value
    return checked


def with_defaults(template: str, defaults: Mapping[str, TemplateValue]) -> str:
    """`template` opened by one `set` per default, each applied only when the caller passes no value."""
    prologue = "".join(
        f"{{%- if {name} is not defined -%}}{{%- set {name} = {jinja_literal(value)} -%}}{{%- endif -%}}"
        for name, value in validate_defaults(defaults).items()
    )
    return prologue + template


def write_template_defaults(tokenizer: object, model_dir: Path, defaults: Mapping[str, TemplateValue]) -> None:
    """Save `tokenizer`'s template with `defaults` as the directory's chat_template.jinja.

    transformers reads chat_template.jinja in preference to the template in tokenizer_config.json, so this one
    file carries the change; the tokenizer's other files stay byte copies.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        raise ValueError(
            "chat_template_defaults need a single chat template; this tokenizer has "
            f"{'named templates ' + str(sorted(template)) if isinstance(template, dict) else 'none'}"
        )
    (Path(model_dir) / CHAT_TEMPLATE_FILE).write_text(with_defaults(template, defaults), encoding="utf-8")


def switches_named(template: str) -> dict[str, TemplateValue]:
    """The known switches that `template` refers to, with the value to suggest for each."""
    return {name: value for name, value in KNOWN_SWITCHES.items() if re.search(rf"\b{name}\b", template)}
