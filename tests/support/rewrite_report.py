"""Rows kept / expanded / quarantined per template and rewrite policy on a demo day with reasoning
added to some assistant turns: the figures issue 14 asks for, and the data of the demo test.

Run: ``.venv/bin/python -m support.rewrite_report`` from tests/ (prints a markdown table).
"""

from __future__ import annotations

from datetime import date

import polars as pl

from benchmarks.workload import curated_conversations
from core.chat_templates import TEMPLATES
from core.masking import REWRITE_POLICIES
from core.tokenize_partition import audit_masks, audit_serving, tokenize_conversations
from support.masking_fixtures import tokenizer_for, with_reasoning

REPORT_TEMPLATES = ("chatml", "reasoning", "llama3", "gemma")


def demo_day_with_reasoning(n: int = 300, every: int = 2) -> pl.DataFrame:
    """``n`` curated demo conversations, every ``every``-th assistant turn opening with reasoning."""
    curated = curated_conversations(n).select("conversation_id", "split", "messages")
    messages = [[{"role": m["role"], "content": m["content"]} for m in c] for c in curated["messages"].to_list()]
    return curated.with_columns(pl.Series("messages", with_reasoning(messages, every)))


def policy_counts(curated: pl.DataFrame, templates=REPORT_TEMPLATES, policies=REWRITE_POLICIES) -> list[dict]:
    """One row per (template, policy): conversation counts by outcome, shard rows, and audit failures."""
    out = []
    for name in templates:
        tok = tokenizer_for(name)
        for policy in policies:
            part = tokenize_conversations(tok, curated, date(2026, 1, 1), max_length=None, rewrite_policy=policy)
            out.append(
                {
                    "template": name,
                    "policy": policy,
                    **part.counts,
                    "rows": part.rows.height,
                    "audit_failures": len(audit_masks(tok, part.rows, curated).failures)
                    + len(audit_serving(tok, part.rows, curated, 0, turns=0).failures),
                    "reasons": dict(part.quarantine["reason"].value_counts().iter_rows()),
                }
            )
    return out


def main() -> None:
    curated = demo_day_with_reasoning()
    multi = sum(1 for c in curated["messages"].to_list() if sum(m["role"] == "assistant" for m in c) > 1)
    print(
        f"{curated.height} demo conversations, {multi} with more than one assistant turn; templates: "
        f"{', '.join(t for t in REPORT_TEMPLATES if t in TEMPLATES)}"
    )
    rows = policy_counts(curated)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
