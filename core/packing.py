"""Best-fit-decreasing bin packing: the one packer behind SFT rows, preference rows and evaluation batches."""

from __future__ import annotations

import bisect


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of item indices: longest item first, each into the fullest bin that still fits it.

    Deterministic: ties break on item index and bin creation order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin id)
    for item in order:
        size = lengths[item]
        if size > capacity:
            raise ValueError(f"item {item} of length {size} exceeds bin capacity {capacity}")
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            remaining, bin_id = free.pop(slot)
        else:
            remaining, bin_id = capacity, len(bins)
            bins.append([])
        bins[bin_id].append(item)
        if remaining - size > 0:
            bisect.insort(free, (remaining - size, bin_id))
    return bins
