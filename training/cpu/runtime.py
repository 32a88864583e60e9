"""The process-wide CPU settings a trainer process applies once, before it builds anything."""

from __future__ import annotations

import torch

from training.cpu import allocator


def tune_process(cpu_threads: int, device: torch.device) -> None:
    """Intra-op threads (0: torch's default), and on CPU the allocator settings of training/cpu/allocator.py.

    Threads first: the C kernels split their work over torch's thread count at call time.
    """
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    if device.type == "cpu":
        allocator.keep_freed_memory()
