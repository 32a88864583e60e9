from datetime import UTC, datetime, timedelta

from core.warehouse_lineage import lineage_snapshots, shard_snapshots, snapshots_to_expire

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_old_snapshots_expire_except_the_newest_and_those_a_lineage_names() -> None:
    snapshots = [(n, T0 + timedelta(hours=n)) for n in range(6)]
    assert snapshots_to_expire(snapshots, pinned={2}, older_than=T0 + timedelta(hours=4)) == [0, 1, 3]
    # Everything is old: the newest snapshot (the tables as they are) still stays.
    assert snapshots_to_expire(snapshots, pinned=set(), older_than=T0 + timedelta(days=9)) == [0, 1, 2, 3, 4]
    assert snapshots_to_expire([], pinned=set(), older_than=T0) == []


def test_snapshots_from_shard_manifests_and_checkpoint_lineage() -> None:
    manifests = {"2026-01-02": {"warehouse_snapshot": 7}, "2026-01-01": {"warehouse_snapshot": None}}
    assert shard_snapshots(manifests) == {"2026-01-02": 7}
    assert lineage_snapshots({"shards": [], "warehouse_snapshots": {"2026-01-02": 7}}) == {"2026-01-02": 7}
    assert lineage_snapshots({"shards": []}) == {}  # a checkpoint from before snapshots were recorded
