import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from core.atomic_io import (
    STAGING_PREFIX,
    TMP_PREFIX,
    Owner,
    atomic_directory,
    atomic_write_bytes,
    list_versions,
    new_version_id,
    owner_marker,
    sweep_stale_temp_dirs,
)
from resources.artifacts import ArtifactStore


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


# --------------------------------------------------------------------------------------
# Leftovers of crashed writers


# A writer that enters ArtifactStore.new_version, writes half a version, says "ready" and then either dies
# (SIGKILL-like: os._exit, no cleanup) or waits for a line on stdin and finishes.
WRITER = """
import os, sys
from resources.artifacts import ArtifactStore
with ArtifactStore(root=sys.argv[1]).new_version("asset") as (version, tmp):
    (tmp / "half.bin").write_bytes(b"x" * 1000)
    print("ready", flush=True)
    if sys.argv[2] == "crash":
        os._exit(9)
    sys.stdin.readline()
"""


def _writer(root: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(TMP_PREFIX))


def test_a_crashed_writers_temp_dir_is_removed_by_the_next_version_of_the_asset(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    crashed = _writer(root, "crash")
    assert crashed.stdout.readline().strip() == "ready"
    assert crashed.wait(timeout=120) == 9
    assert _leftovers(root / "asset") != []  # the dead writer's half version
    store = ArtifactStore(root=str(root))
    with store.new_version("asset") as (_version, tmp):
        (tmp / "whole.bin").write_bytes(b"y")
    assert _leftovers(root / "asset") == []
    (version,) = store.versions("asset")
    assert [p.name for p in version.iterdir()] == ["whole.bin"]


def test_a_live_writers_temp_dir_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    live = _writer(root, "wait")
    try:
        assert live.stdout.readline().strip() == "ready"
        removed = sweep_stale_temp_dirs(root / "asset", max_age_s=0)  # even with no age limit at all
        assert removed == []
        store = ArtifactStore(root=str(root))
        with store.new_version("asset") as (_version, tmp):
            (tmp / "other.bin").write_bytes(b"y")
        assert any(name.endswith(".owner") for name in _leftovers(root / "asset"))
        live.stdin.write("go\n")
        live.stdin.flush()
        assert live.wait(timeout=120) == 0
    finally:
        live.kill()
    assert len(store.versions("asset")) == 2 and _leftovers(root / "asset") == []
    assert sorted(p.name for v in store.versions("asset") for p in v.iterdir()) == ["half.bin", "other.bin"]


def _fake_leftover(parent: Path, name: str, owner: Owner | None) -> Path:
    path = parent / f"{TMP_PREFIX}{name}-0badc0de"
    path.mkdir(parents=True)
    (path / "f").write_text("x")
    if owner is not None:
        owner_marker(path).write_text(json.dumps(asdict(owner)))
    return path


def test_other_hosts_and_unowned_leftovers_go_only_after_the_max_age(tmp_path: Path) -> None:
    me = Owner.this_process()
    remote = _fake_leftover(tmp_path, "v1", replace(me, host="another-node", pid=1))
    legacy = _fake_leftover(tmp_path, "v2", None)  # written before owner markers existed
    stray_file = tmp_path / f"{TMP_PREFIX}f.json-12345678"  # a crashed atomic_write_bytes
    stray_file.write_text("{}")
    assert sweep_stale_temp_dirs(tmp_path, max_age_s=3600) == []
    later = time.time() + 2 * 3600
    removed = sweep_stale_temp_dirs(tmp_path, max_age_s=3600, now=later)
    assert {Path(r.path).name: r.reason for r in removed} == {
        remote.name: "older_than_max_age",
        legacy.name: "older_than_max_age",
        stray_file.name: "older_than_max_age",
    }
    assert "another-node" in next(r.detail for r in removed if r.path == str(remote))
    assert list(tmp_path.iterdir()) == []


def test_a_reused_pid_does_not_keep_a_dead_owners_dir(tmp_path: Path) -> None:
    me = Owner.this_process()
    if me.start_ticks is None:
        pytest.skip("no /proc process start times on this system")
    reused = _fake_leftover(tmp_path, "v1", replace(me, start_ticks=me.start_ticks - 1))  # our pid, older process
    (removed,) = sweep_stale_temp_dirs(tmp_path, max_age_s=10**9)
    assert removed.path == str(reused) and removed.reason == "owner_gone" and not reused.exists()
    assert not owner_marker(reused).exists()


def test_staging_dirs_and_orphan_markers(tmp_path: Path) -> None:
    staging = tmp_path / f"{STAGING_PREFIX}some-run"
    staging.mkdir()
    dead = Owner.this_process()
    dead = replace(dead, pid=_dead_pid())
    orphan = owner_marker(tmp_path / f"{TMP_PREFIX}v9-11111111")
    orphan.write_text(json.dumps(asdict(dead)))
    removed = sweep_stale_temp_dirs(tmp_path, max_age_s=0, now=time.time() + 10**7)
    assert [r.reason for r in removed] == ["orphan_owner_marker"]
    assert staging.is_dir() and not orphan.exists()  # a run's staging dir is not a process's temp dir


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return proc.pid
    pytest.skip("the pid of an exited child was reused at once")
