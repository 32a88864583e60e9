"""core.fingerprints.sources_fingerprint: the key of results computed by a piece of code (eval cache, benchmark
inputs), which must change exactly when that code or the named library versions do."""

from __future__ import annotations

import os
from pathlib import Path

from core.fingerprints import sources_fingerprint


def _tree(root: Path) -> None:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("A = 1\n")
    (root / "pkg" / "sub" / "b.py").write_text("B = 2\n")
    (root / "pkg" / "notes.txt").write_text("not code\n")
    (root / "tool.py").write_text("T = 3\n")


def test_an_edit_to_any_source_under_a_folder_or_a_named_file_changes_it(tmp_path: Path) -> None:
    _tree(tmp_path)
    before = sources_fingerprint(["pkg", "tool.py"], root=tmp_path)
    (tmp_path / "pkg" / "sub" / "b.py").write_text("B = 3\n")
    after_nested = sources_fingerprint(["pkg", "tool.py"], root=tmp_path)
    (tmp_path / "tool.py").write_text("T = 4\n")
    after_file = sources_fingerprint(["pkg", "tool.py"], root=tmp_path)
    assert len({before, after_nested, after_file}) == 3


def test_a_new_module_or_other_library_versions_change_it(tmp_path: Path) -> None:
    _tree(tmp_path)
    before = sources_fingerprint(["pkg"], root=tmp_path, extra="torch 2.13.0")
    assert sources_fingerprint(["pkg"], root=tmp_path, extra="torch 2.14.1") != before
    (tmp_path / "pkg" / "c.py").write_text("")
    assert sources_fingerprint(["pkg"], root=tmp_path, extra="torch 2.13.0") != before


def test_it_reads_contents_only_and_ignores_other_files(tmp_path: Path) -> None:
    _tree(tmp_path)
    before = sources_fingerprint(["pkg"], root=tmp_path)
    os.utime(tmp_path / "pkg" / "a.py", (0, 0))
    (tmp_path / "pkg" / "notes.txt").write_text("edited\n")
    assert sources_fingerprint(["pkg"], root=tmp_path) == before


def test_the_default_root_is_this_repository() -> None:
    assert sources_fingerprint(["core/fingerprints.py"]) == sources_fingerprint(
        ["core/fingerprints.py"], root=Path(__file__).resolve().parents[2]
    )
