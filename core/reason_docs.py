"""Render docs/reason-codes.md from the reason-code tables in the code.

The tables (``{code: one-line meaning}``) live next to the code that produces the codes, so a
new code cannot be added without its meaning; this module only lays them out as Markdown.
Regenerate the page after changing a table:

    python -m core.reason_docs > docs/reason-codes.md

``tests/unit/test_docs.py`` fails while the page and the tables disagree. Only ``core`` modules are
imported here (the layer rule: core imports no other layer).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from core.curation import PAIR_REASONS, PARSE_REASONS, REASONS
from core.eval_report import EVAL_SKIP_REASONS
from core.ingest import CATALOG_REASONS, INTERACTION_REASONS, READ_REASONS, REPAIRED_REASONS
from core.landing_files import IGNORE_REASONS
from core.masking import MASK_REASONS
from core.preferences.tokenize import PAIR_TOKEN_REASONS
from core.schemas import QUARANTINE_PAYLOAD_MAX_CHARS

REGENERATE = "python -m core.reason_docs > docs/reason-codes.md"


def _table(reasons: Mapping[str, str], *, ordered: bool = False) -> str:
    """A Markdown table of codes and meanings, in the table's own order (numbered when order matters)."""
    head = "| # | reason | meaning |\n|---|---|---|" if ordered else "| reason | meaning |\n|---|---|"
    rows = []
    for i, (code, meaning) in enumerate(reasons.items(), start=1):
        cell = meaning.replace("|", "\\|")
        rows.append(f"| {i} | `{code}` | {cell} |" if ordered else f"| `{code}` | {cell} |")
    return "\n".join([head, *rows])


def render_reason_codes() -> str:
    """The whole reason-codes page as Markdown, ending in one newline."""
    repaired = ", ".join(f"`{r}`" for r in sorted(REPAIRED_REASONS))
    parts = [
        "# Reason codes",
        "",
        "<!-- Generated from the *_REASONS tables in core/ by core/reason_docs.py; do not edit by hand.",
        f"     Regenerate: {REGENERATE} -->",
        "",
        "Bad input never fails a day: every rejected row is kept with a reason code, a human-readable",
        "`detail` and its original payload, and the counts per reason are in each materialization's",
        "metadata (`quarantined/<reason>`, `quarantined_by_reason`). Payloads are cut at",
        f"{QUARANTINE_PAYLOAD_MAX_CHARS:,} characters; `payload_chars` keeps the original length and",
        "`payload_truncated` says the payload was cut. How bad input is handled, and why, is in",
        "[operations.md](operations.md#one-bad-line-never-fails-a-day); the tables themselves are",
        "described in [architecture.md](architecture.md#data-contracts).",
        "",
        "Contents: [Unreadable records](#unreadable-records-rawquarantine-either-source) ·",
        "[Catalog](#catalog-rawquarantine-source-catalog) ·",
        "[Interactions](#interactions-rawquarantine-source-interactions) ·",
        "[External conversations](#external-conversations-curatedquarantine-parse-step) ·",
        "[Curation](#curation-curatedquarantine) ·",
        "[Tokenization](#tokenization-tokenized_shards-quarantineparquet) ·",
        "[Preference pairs](#preference-pairs-curatedpreference_quarantine-and-preference_shards) ·",
        "[Landing files that are not read](#landing-files-that-are-not-read) ·",
        "[Evaluation](#evaluation-skipped_by_reason)",
        "",
        "## Unreadable records (`raw.quarantine`, either source)",
        "",
        "Records that cannot be read as values at all; the detail names `file:line`. One such record",
        "never fails the file. (`core.ingest.READ_REASONS`)",
        "",
        _table(READ_REASONS),
        "",
        "## Catalog (`raw.quarantine`, source `catalog`)",
        "",
        f"Repairs ({repaired}) are recorded in the quarantine but the row is kept. (`core.ingest.CATALOG_REASONS`)",
        "",
        _table(CATALOG_REASONS),
        "",
        "## Interactions (`raw.quarantine`, source `interactions`)",
        "",
        "Checked in this order; a row gets the first reason that applies. Exact duplicate events are not",
        "rejected: they are collapsed and counted (`ingest/duplicates_collapsed`). With one file for all",
        "days, rows whose timestamp cannot be parsed belong to no day: they are kept once, with `day`",
        "null. (`core.ingest.INTERACTION_REASONS`)",
        "",
        _table(INTERACTION_REASONS, ordered=True),
        "",
        "## External conversations (`curated.quarantine`, parse step)",
        "",
        "JSONL files dropped in `landing/conversations/day=YYYY-MM-DD/` are parsed first; a line gets the",
        "first reason that applies, and lines that parse go on to curation. (`core.curation.PARSE_REASONS`)",
        "",
        _table(PARSE_REASONS, ordered=True),
        "",
        "## Curation (`curated.quarantine`)",
        "",
        "Checked in this order; a row gets the first reason that applies. PII (email addresses, phone",
        "numbers) is scrubbed to `[EMAIL]` / `[PHONE]` and counted, not rejected. (`core.curation.REASONS`)",
        "",
        _table(REASONS, ordered=True),
        "",
        "## Tokenization (`tokenized_shards`, `quarantine.parquet`)",
        "",
        "Conversations whose loss mask cannot be made exact, or that are too long, are listed in the shard",
        "version's `quarantine.parquet`, with counts in the manifest and the metadata; nothing is masked",
        "wrongly in silence. (`core.masking.MASK_REASONS`)",
        "",
        _table(MASK_REASONS),
        "",
        "## Preference pairs (`curated.preference_quarantine` and `preference_shards`)",
        "",
        "External pairs dropped in `landing/preferences/day=YYYY-MM-DD/` are parsed with the parse reasons",
        "above. Each side of a pair, the prompt followed by its completion, then goes through the curation",
        "rules above (the detail starts with `chosen:` or `rejected:`), and after them the pair rules; a",
        "duplicate is a whole pair with the same normalized text. Rejects land in",
        "`curated.preference_quarantine` (the columns of `curated.quarantine`, `conversation_id` holding the",
        "pair_id). (`core.curation.PAIR_REASONS`)",
        "",
        _table(PAIR_REASONS),
        "",
        "Tokenizing a pair quarantines it, in the shard version's `quarantine.parquet`, with the masking",
        "reasons above, or with: (`core.preferences.tokenize.PAIR_TOKEN_REASONS`)",
        "",
        _table(PAIR_TOKEN_REASONS),
        "",
        "## Landing files that are not read",
        "",
        "Files in the landing area that the readers skip, reported in the landing sensor's evaluation and",
        "in the raw assets' metadata (`ignored_files`); they are not rows, so they are not quarantined.",
        "(`core.landing_files.IGNORE_REASONS`)",
        "",
        _table(IGNORE_REASONS),
        "",
        "## Evaluation (`skipped_by_reason`)",
        "",
        "Held-out rows and recommendation cases that cannot be scored are left out of the metric they",
        "belong to instead of failing the evaluation. The evaluation functions (the `evaluation` package)",
        "return each with a reason code and a detail, counted per reason in their `skipped_by_reason`;",
        "report.json keeps those counts for a system whose result carries them.",
        "(`core.eval_report.EVAL_SKIP_REASONS`)",
        "",
        _table(EVAL_SKIP_REASONS),
    ]
    return "\n".join(parts) + "\n"


def main() -> int:
    sys.stdout.write(render_reason_codes())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
