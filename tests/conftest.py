"""Fixtures shared by every test group (unit/, integration/, e2e/); helpers they import live in support/."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def restore_torch_globals() -> Iterator[None]:
    """Training sets process-wide torch state (thread count, deterministic algorithms); undo it so that the
    next test in this worker starts from the interpreter's defaults."""
    threads = torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


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
