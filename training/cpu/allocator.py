"""glibc malloc settings for CPU training processes: keep freed step buffers for the next step.

A CPU training step allocates and frees the same large tensors every step: activations,
the LM head's logits, their gradients, a few MiB each. glibc serves a block at or above
its mmap threshold with a fresh mmap() and unmaps it on free; the threshold adapts
upwards to the largest block freed, but a block of that size or larger is mmapped again,
and freed memory at the top of the heap goes back to the OS past the trim threshold. Each
such block is then page-faulted in again on first touch, one fault per 4 KiB page, inside
the step's matmuls. With the mmap threshold at glibc's 32 MiB maximum and a 1 GiB trim
threshold, those blocks come from the heap and stay there between steps: the faults stop
once the heap has grown to fit every size (benchmarks/results/RESULTS.md has the numbers).

The cost is that the process keeps its peak heap: its RSS does not shrink between steps,
which a training process does not need. The settings are process-wide and are applied in
the trainer processes only (`python -m training.sft`, the benchmark's workers), never in
the Dagster process.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit on 64-bit (larger values are refused)
TRIM_THRESHOLD = 1 << 30  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Apply the settings above; False (and nothing changed) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; musl and macOS have no such mallopt
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("not glibc: malloc settings left as they are")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not applied:
        log.warning("glibc refused the malloc settings; large step buffers will be page-faulted in every step")
    return applied
