"""The documentation stays short, current and self-contained.

- docs/reason-codes.md is generated from the reason-code tables and must match them;
- the README stays a short tour (the details live in docs/);
- no Markdown page links outside the repository or to a file or heading that does not exist.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from core.reason_docs import REGENERATE, render_reason_codes

ROOT = Path(__file__).resolve().parents[2]
README_MAX_BYTES = 12_000

# Inline links and images: [text](target) / ![alt](target); the target ends at whitespace or ")".
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks/results/RESULTS.md"]


def _links(text: str) -> list[str]:
    """Link targets outside code blocks and code spans."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    return _LINK.findall(text)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip()).lower()
    text = "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_reason_codes_page_is_current() -> None:
    page = ROOT / "docs" / "reason-codes.md"
    assert page.is_file(), f"docs/reason-codes.md is missing; create it with: {REGENERATE}"
    assert page.read_text(encoding="utf-8") == render_reason_codes(), (
        f"docs/reason-codes.md is out of date with the *_REASONS tables; regenerate it with: {REGENERATE}"
    )


def test_reason_codes_page_lists_every_code() -> None:
    from core.curation import PARSE_REASONS, REASONS
    from core.ingest import CATALOG_REASONS, INTERACTION_REASONS, READ_REASONS
    from core.landing_files import IGNORE_REASONS
    from core.masking import MASK_REASONS

    page = render_reason_codes()
    for table in (READ_REASONS, CATALOG_REASONS, INTERACTION_REASONS, PARSE_REASONS, REASONS, MASK_REASONS):
        for code, meaning in table.items():
            assert meaning.strip(), f"reason {code!r} has no meaning"
            assert f"`{code}`" in page
    for code in IGNORE_REASONS:
        assert f"`{code}`" in page


def test_readme_is_short() -> None:
    size = (ROOT / "README.md").stat().st_size
    assert size < README_MAX_BYTES, (
        f"README.md is {size:,} bytes (limit {README_MAX_BYTES:,}): keep it a short tour and move details to docs/"
    )


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_resolve_inside_the_repository(page: Path) -> None:
    problems = []
    for target in _links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if "shared/" in file_part or not dest.is_relative_to(ROOT):
            problems.append(f"{target}: points outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: {dest.relative_to(ROOT)} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not problems, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(problems)
