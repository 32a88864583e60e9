"""Matmul FLOP/s probes: the peak that MFU is measured against, in the trainer and the benchmarks.

One timing loop for both, so the trainer's MFU estimate and the benchmark's MFU use the
same method. Untimed products come first: on CPU the first milliseconds of matmuls in a
process run measurably slower (caches, frequency scaling, lazy init), and a probe that
timed them would move a reported MFU by as much.
"""

from __future__ import annotations

import time

import torch


def matmul_flops(
    m: int,
    k: int,
    n: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seconds: float = 1.0,
    warmup: int = 2,
) -> float:
    """Sustained FLOP/s of (m x k) @ (k x n) products over about `seconds`, after `warmup` untimed ones."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(warmup):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if cuda and reps % 10:  # a sync per product would time the launch, not the kernel
            continue
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * m * k * n * reps / elapsed


def measure_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Sustained matmul FLOP/s of a short probe (~0.15 s): a lower bound on the device's real peak."""
    n = 4096 if device.type == "cuda" else 1024
    return matmul_flops(n, n, n, device, dtype, seconds=0.15, warmup=3)
