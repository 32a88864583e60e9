"""Shared helpers for the tokenizer and masking tests: a small varied corpus, cached
tokenizers per template, and conversation builders. Not a conftest, so names cannot
collide with other test modules' fixtures."""

from __future__ import annotations

import functools
import random

from core.chat_templates import TEMPLATES
from core.tokenizer_training import train_bpe_tokenizer

WORDS = [
    "the",
    "a",
    "movie",
    "series",
    "drama",
    "comedy",
    "thriller",
    "documentary",
    "recommend",
    "watch",
    "title",
    "year",
    "genre",
    "great",
    "classic",
    "new",
    "season",
    "episode",
    "love",
    "because",
    "you",
    "liked",
    "heist",
    "space",
    "western",
    "anime",
    "family",
    "night",
    "tonight",
    "short",
    "long",
    "funny",
    "dark",
    "cozy",
    "award",
    "winning",
    "director",
    "cast",
    "sequel",
    "binge",
    "finale",
    "pilot",
    "why",
    "what",
    "which",
    "how",
    "café",
    "naïve",
    "déjà",
    "vu",
    "東京",
    "物語",
    "映画",
    "שלום",
    "مرحبا",
    "Ünïcödé",
    "résumé",
]
PUNCT = (".", "!", "?", ",", ":", " (2019)", " 4.5/5", "...", " -")


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """A few hundred varied sentences, plus role names, so BPE learns real merges."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rnd.choice(WORDS) for _ in range(rnd.randint(2, 16))]
        sentence = " ".join(words) + rnd.choice(PUNCT)
        if rnd.random() < 0.2:
            sentence += "\n" + " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 6)))
        if rnd.random() < 0.1:
            sentence = sentence.capitalize() + " 😀"
        out.append(sentence)
    out += ["system user assistant"] * 20
    return out


@functools.cache
def tokenizer_for(template: str):
    """A trained tokenizer per template name; cached for the whole test session."""
    return train_bpe_tokenizer(corpus(), vocab_size=800, spec=TEMPLATES[template])


def sentence(rnd: random.Random) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 12))) + rnd.choice(PUNCT)


def conversation(rnd: random.Random, exchanges: int, system: bool) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": sentence(rnd)}] if system else []
    for _ in range(exchanges):
        messages.append({"role": "user", "content": sentence(rnd)})
        messages.append({"role": "assistant", "content": sentence(rnd)})
    return messages


def conversations(n: int, seed: int = 1) -> list[list[dict[str, str]]]:
    rnd = random.Random(seed)
    return [conversation(rnd, rnd.randint(1, 4), rnd.random() < 0.5) for _ in range(n)]


def long_conversation(exchanges: int, seed: int = 0, typed: str | None = None) -> list[dict[str, str]]:
    """A system prompt and ``exchanges`` user/assistant pairs of short sentences; ``typed`` (text that
    looks like a control token) is appended to the first user message, making it a lookalike row."""
    rnd = random.Random(seed)
    messages = conversation(rnd, exchanges, True)
    if typed is not None:
        messages[1] = {"role": "user", "content": f"{messages[1]['content']} {typed}"}
    return messages


def with_reasoning(conversations: list[list[dict[str, str]]], every: int = 2) -> list[list[dict[str, str]]]:
    """Copies of ``conversations`` where every ``every``-th assistant turn (counted across them) opens
    with ``<think>...</think>`` reasoning, as a reasoning model writes it: the data a reasoning
    template rewrites when a later user turn follows."""
    out, seen = [], 0
    for messages in conversations:
        copy = []
        for m in messages:
            m = dict(m)
            if m["role"] == "assistant":
                if seen % every == 0:
                    m["content"] = f"<think>\nThe member asked: {len(copy)} turns so far.\n</think>\n\n{m['content']}"
                seen += 1
            copy.append(m)
        out.append(copy)
    return out


def decode_ids(tok, ids) -> str:
    """The exact text of `ids`, special tokens included, without transformers' clean-up of spaces."""
    return tok.backend_tokenizer.decode(list(ids), skip_special_tokens=False)


def masked_runs(tok, encoded) -> list[str]:
    """The masked text of an encoded conversation, one string per run of consecutive masked tokens."""
    runs, current = [], []
    for i, m in zip(encoded.input_ids, encoded.loss_mask, strict=True):
        if m:
            current.append(i)
        elif current:
            runs.append(decode_ids(tok, current))
            current = []
    if current:
        runs.append(decode_ids(tok, current))
    return runs
