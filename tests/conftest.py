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
