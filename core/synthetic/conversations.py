"""External partner conversations: the JSONL chats a partner drops each day, some deliberately broken."""

from __future__ import annotations

import json
import math
from datetime import date

from core.synthetic.config import SyntheticConfig, stream
from core.synthetic.vocabulary import LANGUAGE_NAMES
from core.synthetic.world import build_world, sample_popular

EXTERNAL_DEFECTS = ("invalid_json", "wrong_role", "empty_turn", "no_assistant", "pii_email", "pii_phone")
_EXTERNAL_BAD_FRACTION = 0.15


def _first_sentence(text: str) -> str:
    head, _, _ = text.partition(".")
    return head + "."


def generate_external_conversations(cfg: SyntheticConfig, day: date) -> list[str]:
    """JSONL lines ``{"messages": [...]}`` as an external partner would drop them.

    About 15% are deliberately bad, one defect each, cycling through EXTERNAL_DEFECTS
    (invalid JSON, a wrong role, an empty turn, no assistant turn, an e-mail address or
    a phone number in the content) so curation's quarantine paths get exercised.
    """
    n = cfg.external_conversations_per_day
    if n <= 0:
        return []
    world = build_world(cfg)
    rng = stream(cfg.seed, day.toordinal(), 1)
    cat = world.titles.frame
    titles, kinds, genres = cat["title"].to_list(), cat["kind"].to_list(), cat["genres"].to_list()
    years, synopses, langs = cat["year"].to_list(), cat["synopsis"].to_list(), cat["language"].to_list()
    n_bad = min(n, math.ceil(n * _EXTERNAL_BAD_FRACTION))
    defects: list[str | None] = [None] * n
    for slot, j in zip(rng.choice(n, size=n_bad, replace=False).tolist(), range(n_bad), strict=True):
        defects[slot] = EXTERNAL_DEFECTS[j % len(EXTERNAL_DEFECTS)]
    picks = sample_popular(world, rng.random((n, 2)))
    templates = rng.integers(0, 3, size=n)
    nums = rng.integers(10, 100, size=n)

    def describe(i: int) -> str:
        first = genres[i].split("|")[0].lower()
        return f"{titles[i]} ({years[i]}), a {first} {kinds[i]}. {_first_sentence(synopses[i])}"

    lines: list[str] = []
    for i in range(n):
        a, b = (int(x) for x in picks[i])
        tpl = int(templates[i])
        if tpl == 0:
            msgs = [
                {
                    "role": "user",
                    "content": f"I just watched {titles[a]}. Can you recommend something similar?",
                },
                {"role": "assistant", "content": f"You might enjoy {describe(b)}"},
            ]
        elif tpl == 1:
            msgs = [
                {"role": "user", "content": f"What is {titles[a]} about?"},
                {
                    "role": "assistant",
                    "content": f"{titles[a]} ({years[a]}) is a {genres[a].replace('|', ', ').lower()} "
                    f"{kinds[a]}. {synopses[a]}",
                },
            ]
        else:
            genre = genres[a].split("|")[0].lower()
            msgs = [
                {
                    "role": "system",
                    "content": "You are a friendly assistant for a streaming service. "
                    "Recommend titles from the catalog.",
                },
                {"role": "user", "content": f"Looking for a good {genre} {kinds[a]} tonight, any ideas?"},
                {"role": "assistant", "content": f"Try {describe(a)}"},
                {"role": "user", "content": f"Seen it. Anything else, maybe in {LANGUAGE_NAMES[langs[b]]}?"},
                {"role": "assistant", "content": f"Then {describe(b)}"},
            ]
        defect = defects[i]
        user_turn = next(t for t in msgs if t["role"] == "user")
        if defect == "wrong_role":
            next(t for t in msgs if t["role"] == "assistant")["role"] = "bot"
        elif defect == "empty_turn":
            user_turn["content"] = ""
        elif defect == "no_assistant":
            msgs = [t for t in msgs if t["role"] != "assistant"]
        elif defect == "pii_email":
            user_turn["content"] += f" You can reach me at jamie.rivera{nums[i]}@example.com."
        elif defect == "pii_phone":
            user_turn["content"] += f" Call me back at +1 415 555 01{nums[i]}."
        line = json.dumps({"messages": msgs}, ensure_ascii=False)
        if defect == "invalid_json":
            line = line[: len(line) // 2]
        lines.append(line)
    return lines
