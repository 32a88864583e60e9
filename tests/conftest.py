"""Fixtures shared by every test group (unit/, integration/, e2e/); helpers they import live in support/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from core.local_postgres import LocalPostgres
    from resources.warehouse import Warehouse


@pytest.fixture
def restore_torch_globals() -> Iterator[None]:
    """Training sets process-wide torch state (thread count, deterministic algorithms); undo it so that the
    next test in this worker starts from the interpreter's defaults."""
    threads = torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_dagster_context_left_open() -> Iterator[None]:
    """Fail the test that leaves a Dagster instance entered. An instance's `__enter__` makes its defs-state storage
    current (a ContextVar); a `build_*_context(instance=...)` used without `with` enters it and never leaves. When
    the garbage collector later closes that context, during some other test, it restores whatever storage was
    current back then, often one of a deleted instance, and that test fails to build Definitions. Catching the
    test that opens the context, not the one the collector happens to hit, keeps failures where their cause is."""
    import sys

    base = sys.modules.get("dagster._core.storage.defs_state.base")
    before = base.DefsStateStorage.get() if base else None
    yield
    base = sys.modules.get("dagster._core.storage.defs_state.base")
    after = base.DefsStateStorage.get() if base else None
    if after is not before:
        base._current_storage.set(before)
        pytest.fail(
            "this test left a Dagster instance entered (its defs-state storage is still current): open "
            "dg.build_sensor_context / build_schedule_context / build_asset_context with `with ... as context:` "
            "so that they are closed when the test is done"
        )


# Test files whose tests share one session-scoped `dagster dev` (tests/e2e/conftest.py): a second worker running
# any of them would start a second platform, minutes of CPU on a 2-core machine.
SHARED_DEV_SESSION = ("tests/e2e/test_dagster_dev_e2e.py", "tests/e2e/test_ui_browser.py")


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Under `-n N`, send each test file to one worker (its module fixtures, often a tiny model or a trained
    checkpoint, are then built once) and the files of the shared `dagster dev` session to the same worker.

    pytest-xdist's own `xdist_group` cannot be used: it renames node ids, which pytest 9.2 no longer allows."""
    from xdist.scheduler import LoadScopeScheduling

    # Files in collection order, not xdist's default of most tests first: tests/e2e/ comes first and holds the
    # longest single tests, which would otherwise start last and leave one worker idle while they run.
    config.option.loadscopereorder = False

    class ByFileSharingTheDevSession(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "dagster dev session" if path in SHARED_DEV_SESSION else path

    return ByFileSharingTheDevSession(config, log)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One throwaway PostgreSQL per test worker (Debian's binaries on 127.0.0.1), for the DuckLake tests."""
    import shutil
    import tempfile

    from core.local_postgres import LocalPostgres, PostgresUnavailable, free_port

    # Not under pytest's tmp_path: as root the server runs as `postgres`, which cannot enter /tmp/pytest-of-root.
    root = Path(tempfile.mkdtemp(prefix="platform-test-postgres-"))
    try:
        server = LocalPostgres(root, free_port(), fsync=False).start()
    except PostgresUnavailable as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"DuckLake tests need a local PostgreSQL: {exc}")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def lake_warehouse(postgres_server: LocalPostgres, tmp_path: Path) -> Iterator[Warehouse]:
    """A Warehouse on a new, empty DuckLake: its own catalog database and data directory."""
    from support.lake import new_lake_warehouse

    yield from new_lake_warehouse(postgres_server, tmp_path / "lake")


@pytest.fixture(params=["duckdb", "ducklake"])
def any_warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Warehouse:
    """The same test on both warehouse backends."""
    if request.param == "ducklake":
        return request.getfixturevalue("lake_warehouse")
    from resources.warehouse import Warehouse

    return Warehouse(path=str(tmp_path / "w.duckdb"))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3-compatible server (moto) per test worker; tests make their own buckets."""
    from support.s3 import moto_server

    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The AWS_* settings pointing at the local server; returns its endpoint."""
    from support.s3 import ACCESS_KEY, REGION, SECRET_KEY

    for name, value in {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    return s3_endpoint
