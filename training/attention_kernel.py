"""The C attention kernel for packed rows on CPU (training/kernels/packed_attention.c): build, cache, call.

Why C and not ATen's flash kernel: see the kernel's header (2x the forward and backward
speed at our head sizes on one core). It is compiled on first use with the host compiler
and `-march=native`, one library per head_dim (its loops are unrolled for it), and cached
under `$POSTTRAIN_KERNEL_CACHE` (default `~/.cache/posttrain/kernels`). The cache key holds
the source, the flags, the compiler's version and the CPU's model and flags, so a changed
kernel, compiler or machine builds afresh. The build is atomic (temporary file + rename):
several ranks may build at once.

Where the kernel cannot run (no C compiler, a failed build, not fp32, a strided head
dimension) the caller falls back to the flash kernel; `POSTTRAIN_CPU_ATTENTION=flash` forces
that. Calls release the GIL (ctypes), so with several torch threads the conversations are
split across that many Python threads, each running the kernel on its share.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "packed_attention.c"
ENV_SWITCH = "POSTTRAIN_CPU_ATTENTION"  # "flash": ATen's kernel; anything else: ours where it can run
_P = ctypes.c_void_p


def _compiler() -> str | None:
    return next((c for c in (os.environ.get("CC", ""), "cc", "gcc", "clang") if c and shutil.which(c)), None)


def _flags(head_dim: int) -> list[str]:
    flags = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-mprefer-vector-width=512")  # gcc's default for AVX-512 cores is 256-bit vectors
    return [*flags, f"-DHEAD_DIM={head_dim}", "-shared", "-fPIC"]


def _cpu_signature() -> str:
    """Model and instruction-set flags of this CPU: a library built with -march=native runs only on its like."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _cache_dir() -> Path:
    configured = os.environ.get("POSTTRAIN_KERNEL_CACHE")
    if configured:
        return Path(configured)
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "posttrain" / "kernels"
    try:
        home_cache.mkdir(parents=True, exist_ok=True)
        return home_cache
    except OSError:  # a read-only home (some containers)
        return Path(tempfile.gettempdir()) / "posttrain-kernels"


def build(head_dim: int) -> Path:
    """Path of the compiled library for `head_dim`, compiling it if this machine has none yet."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc, clang or $CC) to build the CPU attention kernel")
    flags = _flags(head_dim)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *flags, version, _cpu_signature()]).encode()).hexdigest()
    cache = _cache_dir()
    target = cache / f"packed_attention_d{head_dim}_{key[:16]}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{target.name}.{os.getpid()}.tmp"
    done = subprocess.run(
        [compiler, *flags, str(SOURCE), "-o", str(partial)], capture_output=True, text=True, check=False, timeout=300
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"building {SOURCE.name} with {compiler} failed:\n{done.stderr[-2000:]}")
    os.replace(partial, target)
    return target


class AttentionKernel:
    """One head_dim's compiled kernel; tensors in the layouts documented in the C source."""

    def __init__(self, library: Path, head_dim: int) -> None:
        self.head_dim = head_dim
        lib = ctypes.CDLL(str(library))
        self._forward = lib.packed_attention_forward
        self._forward.argtypes = [_P] * 6 + [ctypes.c_int64] * 3 + [_P, ctypes.c_float]
        self._forward.restype = ctypes.c_int
        self._backward = lib.packed_attention_backward
        self._backward.argtypes = [_P] * 10 + [ctypes.c_int64] * 3 + [_P, ctypes.c_float]
        self._backward.restype = ctypes.c_int

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        segments: torch.Tensor,
        scale: float,
    ) -> None:
        """Fill out [B, T, Hq, D] and lse [B, Hq, T] from query [B, Hq, T, D], key/value [B, Hkv, T, D]."""
        tensors = (query, key, value, out, lse)
        strides = _strides(*tensors)

        def run(part: torch.Tensor) -> int:
            pointers = [_P(t.data_ptr()) for t in (*tensors, part)]
            return self._forward(*pointers, part.shape[0], query.shape[1], key.shape[1], _P(strides.data_ptr()), scale)

        _check(_run_split(run, segments), "forward")

    def backward(
        self,
        grad_out: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        segments: torch.Tensor,
        scale: float,
    ) -> None:
        """Fill grads (query, key, value; every position written) from grad_out [B, T, Hq, D]."""
        tensors = (query, key, value, out, lse, grad_out, *grads)
        strides = _strides(*tensors)

        def run(part: torch.Tensor) -> int:
            pointers = [_P(t.data_ptr()) for t in (*tensors, part)]
            return self._backward(*pointers, part.shape[0], query.shape[1], key.shape[1], _P(strides.data_ptr()), scale)

        _check(_run_split(run, segments), "backward")


def _strides(*tensors: torch.Tensor) -> torch.Tensor:
    """The first three element strides of each tensor: the C signature's (b, h, t) or (b, t, h), in its dim order."""
    return torch.tensor([stride for t in tensors for stride in t.stride()[:3]], dtype=torch.int64)


def _check(codes: list[int], which: str) -> None:
    if any(codes):
        raise MemoryError(f"the CPU attention kernel's {which} could not allocate its scratch buffers")


def _run_split(run: Callable[[torch.Tensor], int], segments: torch.Tensor) -> list[int]:
    """Run on all segments, split across torch's thread count (the kernel itself is single-threaded)."""
    threads = torch.get_num_threads()
    if threads <= 1 or segments.shape[0] <= 1:
        return [run(segments)]
    return list(_pool(threads).map(run, _balanced_parts(segments, threads)))


def _balanced_parts(segments: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """Segments dealt to `parts` groups of about equal work (length^2), longest first."""
    lengths = segments[:, 2]
    loads = [0] * parts
    groups: list[list[int]] = [[] for _ in range(parts)]
    for index in torch.argsort(lengths, descending=True).tolist():
        target = loads.index(min(loads))
        groups[target].append(index)
        loads[target] += int(lengths[index]) ** 2
    return [segments[g].contiguous() for g in groups if g]


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="posttrain-attention")


@functools.cache
def kernel_for(head_dim: int) -> AttentionKernel | None:
    """The kernel for this head size, or None (and one warning saying why) where it cannot be built."""
    if os.environ.get(ENV_SWITCH, "").lower() == "flash":
        return None
    try:
        return AttentionKernel(build(head_dim), head_dim)
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        log.warning("CPU attention falls back to ATen's flash kernel: %s", error)
        return None


def usable(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> AttentionKernel | None:
    """The kernel if these inputs suit it: CPU, fp32, a contiguous head dimension."""
    if query.device.type != "cpu" or query.dtype != torch.float32:
        return None
    if any(t.stride(-1) != 1 or t.dtype != torch.float32 for t in (query, key, value)):
        return None
    return kernel_for(query.shape[-1])
