"""The artifact store on an object store (a local S3-compatible server): the local store's guarantees hold.

Immutable versions, a version appears by one marker written last, readers never see a partial version, crashed
uploads are swept, and the champion registry's compare-and-swap works with conditional writes.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from support.s3 import client

from core.champion import ChampionChanged, current_champion, new_record, promote
from core.object_store import MARKER, CorruptVersion, UnpublishedVersion, VersionStore
from resources.artifacts import ArtifactStore


@pytest.fixture
def bucket(s3_env: str) -> str:
    name = f"artifacts-{uuid.uuid4().hex[:8]}"
    client(s3_env).create_bucket(Bucket=name)
    return name


def _store(bucket: str, cache: Path) -> ArtifactStore:
    return ArtifactStore(root=f"s3://{bucket}/platform/artifacts", cache_dir=str(cache))


def _keys(endpoint: str, bucket: str) -> list[str]:
    return [o["Key"] for o in client(endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_a_published_version_reads_back_identically_on_another_machine(
    bucket: str, s3_env: str, tmp_path: Path
) -> None:
    writer = _store(bucket, tmp_path / "cache-writer")
    with writer.new_version("tokenized_shards", "2026-01-01") as (version, tmp):
        (tmp / "manifest.json").write_text('{"rows": 2}')
        (tmp / "part-0.parquet").write_bytes(b"\x00" * 100_000)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.txt").write_text("nested")
    assert (tmp_path / "cache-writer" / "tokenized_shards" / "2026-01-01" / version / "manifest.json").is_file()
    keys = _keys(s3_env, bucket)
    assert f"platform/artifacts/tokenized_shards/2026-01-01/{version}/{MARKER}" in keys

    reader = _store(bucket, tmp_path / "cache-reader")
    assert reader.partitions("tokenized_shards") == ["2026-01-01"]
    assert reader.version_ids("tokenized_shards", "2026-01-01") == [version]
    assert reader.read_text("tokenized_shards", version, "manifest.json", "2026-01-01") == '{"rows": 2}'
    local = reader.latest("tokenized_shards", "2026-01-01")
    assert local == tmp_path / "cache-reader" / "tokenized_shards" / "2026-01-01" / version
    assert (local / "part-0.parquet").read_bytes() == b"\x00" * 100_000
    assert (local / "sub" / "x.txt").read_text() == "nested"
    assert reader.fetch("tokenized_shards", version, "2026-01-01") == local  # fetched once, then the local copy


def test_a_crashed_upload_is_never_read_and_is_swept_once_old(
    bucket: str, s3_env: str, tmp_path: Path, monkeypatch
) -> None:
    store = _store(bucket, tmp_path / "cache")
    with store.new_version("base_model") as (good, tmp):
        (tmp / "config.json").write_text("{}")
    remote = store.remote
    assert remote is not None
    real_upload = VersionStore.upload

    def dies_before_the_marker(self, local_dir, key):
        import obstore

        for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            obstore.put(self._store, f"{key}/{path.relative_to(local_dir).as_posix()}", path.read_bytes())
        raise ConnectionError("the writer lost its connection before publishing")

    monkeypatch.setattr(VersionStore, "upload", dies_before_the_marker)
    with pytest.raises(ConnectionError), store.new_version("base_model") as (crashed, tmp):
        (tmp / "config.json").write_text('{"half": true}')
    monkeypatch.setattr(VersionStore, "upload", real_upload)

    # The files are there, the version is not: no marker, no local copy, not listed, not fetched.
    assert any(crashed in k for k in _keys(s3_env, bucket))
    assert store.version_ids("base_model") == [good]
    assert store.latest("base_model") == store.version_path("base_model", good)
    with pytest.raises(UnpublishedVersion):
        remote.fetch(f"base_model/{crashed}", tmp_path / "elsewhere")

    assert store.clean_stale_temp_dirs("base_model") == []  # young: it might still be uploading
    swept = ArtifactStore(root=store.root, cache_dir=store.cache_dir, temp_dir_max_age_hours=0.0)
    leftovers = swept.clean_stale_temp_dirs("base_model")
    assert [(x.reason, x.path.rsplit("/", 1)[-1]) for x in leftovers] == [("unpublished_upload", crashed)]
    assert not any(crashed in k for k in _keys(s3_env, bucket))
    assert swept.version_ids("base_model") == [good]


def test_a_published_version_is_immutable_and_a_changed_object_is_refused(
    bucket: str, s3_env: str, tmp_path: Path
) -> None:
    store = _store(bucket, tmp_path / "cache")
    staging = store.staging_dir("trained_checkpoint", "run-1")
    (staging / "model.safetensors").write_bytes(b"weights")
    version, local = store.publish("trained_checkpoint", staging)
    assert (local / "model.safetensors").read_bytes() == b"weights" and not staging.exists()
    remote = store.remote
    assert remote is not None
    with pytest.raises(FileExistsError, match="immutable"):
        remote.upload(local, f"trained_checkpoint/{version}")

    key = f"platform/artifacts/trained_checkpoint/{version}/model.safetensors"
    client(s3_env).put_object(Bucket=bucket, Key=key, Body=b"tampered")
    elsewhere = tmp_path / "other-cache" / version
    with pytest.raises(CorruptVersion, match="changed after publishing"):
        remote.fetch(f"trained_checkpoint/{version}", elsewhere)
    assert not elsewhere.exists()  # a failed fetch leaves no partial copy


def test_the_champion_registry_on_the_object_store_swaps_once(bucket: str, tmp_path: Path) -> None:
    registry = f"s3://{bucket}/platform/artifacts/champion"

    def record(version: str, previous: str | None):
        metrics = {"validation_loss": 1.0, "hit@5": 0.1}
        return new_record(checkpoint=f"/x/{version}", eval_version=version, metrics=metrics, previous=previous)

    assert current_champion(registry) is None
    assert promote(registry, record("a", None)).endswith("/champion/a.json")
    promote(registry, record("b", "a"))
    with pytest.raises(ChampionChanged):  # a candidate compared with "a", which "b" already replaced
        promote(registry, record("c", "a"))
    with pytest.raises(FileExistsError, match="immutable"):
        promote(registry, record("b", "b"))
    assert current_champion(registry).version == "b"  # type: ignore[union-attr]


def test_artifacts_url_is_a_setting(monkeypatch, tmp_path: Path) -> None:
    from core.settings import load_settings
    from dagster_project.resources import build_artifacts

    monkeypatch.setenv("PLATFORM_HOME", str(tmp_path))
    monkeypatch.setenv("ARTIFACTS_URL", "s3://team-bucket/platform")
    store = build_artifacts(load_settings())
    assert store.root == "s3://team-bucket/platform"
    assert store.cache_dir == str(tmp_path.resolve() / "artifact-cache")
    monkeypatch.setenv("ARTIFACTS_URL", "/mnt/artifacts")
    with pytest.raises(ValueError, match="must be an s3://bucket/prefix URL"):
        load_settings()


def test_a_finished_runs_staging_prefix_on_the_store_is_swept_once_idle(
    bucket: str, s3_env: str, tmp_path: Path
) -> None:
    """Trainer pods publish checkpoints under the run's staging prefix; they go once every run of it finished."""
    store = _store(bucket, tmp_path / "cache")
    remote = store.remote
    assert remote is not None
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"w")
    for lineage in ("done", "running"):
        remote.upload(tmp_path / "ckpt", f"trained_checkpoint/.tmp-run-{lineage}/checkpoints/step-00000004")

    def finished(key: str) -> bool:
        return key == "done"

    assert store.clean_stale_staging_dirs("trained_checkpoint", finished) == []  # idle less than 72 h
    young = ArtifactStore(root=store.root, cache_dir=store.cache_dir, staging_retention_hours=0.0)
    assert young.clean_stale_staging_dirs("trained_checkpoint", finished, keep=frozenset({"done"})) == []
    [swept] = young.clean_stale_staging_dirs("trained_checkpoint", finished)
    assert swept.reason == "run_finished" and swept.path.endswith("/trained_checkpoint/.tmp-run-done")
    keys = _keys(s3_env, bucket)
    assert not any(".tmp-run-done/" in k for k in keys) and any(".tmp-run-running/" in k for k in keys)
