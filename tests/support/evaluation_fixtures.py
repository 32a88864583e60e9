"""Shared data for the evaluation tests: a small catalog, held-out conversations that name its titles,
and a tiny model trained on their text. Not a conftest, so names cannot collide with other test modules'
fixtures."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl

from core.base_model import TinyModelPreset, save_preset
from core.conversation_builder import DEFAULT_SYSTEM_PROMPT
from evaluation import TitleMatcher

CATALOG = pl.DataFrame(
    {
        "title_id": ["T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10"],
        "title": [
            "The Silent Harbor",
            "The Silent Harbor",
            "Up",
            "Night Train",
            "Quiet Rivers",
            "Moonfall",
            "Matrix, The",
            "Amélie",
            "Schindler's List",
            "Fast & Furious",
        ],
        "year": [1995, 2010, 2009, 2001, 2004, 2022, 1999, 2001, 1993, 2009],
    },
    schema={"title_id": pl.String, "title": pl.String, "year": pl.Int32},
)
MATCHER = TitleMatcher(CATALOG)


def reco_messages(history: str, recs: str, *, system: bool = True) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}] if system else []
    return [
        *msgs,
        {"role": "user", "content": f"I just watched {history}. What should I watch next?"},
        {"role": "assistant", "content": f"Here are a few picks for you:\n{recs}"},
        {"role": "user", "content": "Tell me more about the first one."},
        {"role": "assistant", "content": "It is a drama about a harbor town."},
    ]


CONVERSATIONS = pl.DataFrame(
    {
        "conversation_id": ["c01", "c02", "c03", "c04", "c05", "c06"],
        "day": [date(2026, 1, 1)] * 6,
        "kind": ["recommendation", "recommendation", "title_qa", "recommendation", "recommendation", "search"],
        "member_id": ["m1", "m2", None, "m3", "m4", "m5"],
        "split": ["validation", "test", "validation", "train", "validation", "test"],
        "messages": [
            reco_messages(
                "Night Train (2001), Quiet Rivers (2004)",
                "1. The Silent Harbor (2010)\n2. Moonfall (2022)\n3. Up (2009)",
            ),
            reco_messages(
                "Moonfall (2022)", "1. Amélie (2001)\n2. Night Train (2001)\n3. Quiet Rivers (2004)", system=False
            ),
            [
                {"role": "user", "content": "What year did Moonfall come out?"},
                {"role": "assistant", "content": "Moonfall came out in 2022."},
            ],
            reco_messages("Up (2009)", "1. Moonfall (2022)\n2. Night Train (2001)\n3. Amélie (2001)"),
            reco_messages(
                "Up (2009), Amélie (2001)", "1. Schindler's List (1993)\n2. Moonfall (2022)\n3. Night Train (2001)"
            ),
            [
                {"role": "user", "content": "Show me some drama movies."},
                {"role": "assistant", "content": "Here's what matches:\n1. Quiet Rivers (2004)\n2. Night Train (2001)"},
            ],
        ],
    },
    schema_overrides={"day": pl.Date},
)
TEXTS = [m["content"] for msgs in CONVERSATIONS["messages"].to_list() for m in msgs] * 20 + [
    f"Member {i} watched Night Train ({1990 + i % 30}) and liked drama." for i in range(100)
]
TINY_EVAL_MODEL = TinyModelPreset(
    vocab_size=400,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=512,
)


def save_tiny_eval_model(out: Path) -> Path:
    """A tiny model whose tokenizer was trained on the conversations' text, saved as a Hugging Face directory."""
    save_preset(out, TEXTS, TINY_EVAL_MODEL)
    return out
