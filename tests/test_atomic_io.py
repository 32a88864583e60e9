from pathlib import Path

import pytest

from core.atomic_io import atomic_directory, atomic_write_bytes, list_versions, new_version_id


def test_version_appears_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "asset" / new_version_id()
    with atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("hello")
        assert not final.exists()
        assert list_versions(tmp_path / "asset") == []  # readers never see the temp dir
    assert (final / "a.txt").read_text() == "hello"
    assert list_versions(tmp_path / "asset") == [final]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "asset" / "v1"
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("boom")
    assert not final.exists()
    assert list((tmp_path / "asset").iterdir()) == []


def test_versions_are_immutable(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    with atomic_directory(final) as tmp:
        (tmp / "f").write_text("1")
    with pytest.raises(FileExistsError, match="immutable"), atomic_directory(final):
        pass
    assert (final / "f").read_text() == "1"


def test_version_ids_sort_by_time() -> None:
    from datetime import UTC, datetime

    early = new_version_id(datetime(2026, 1, 1, tzinfo=UTC))
    late = new_version_id(datetime(2026, 1, 2, tzinfo=UTC))
    assert early < late


def test_atomic_write_bytes_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]
