"""Our C kernels for CPU training (sources in training/kernels/): build, cache, call.

Two hot spots of a CPU training step run in C: causal attention over the conversations of
packed rows (packed_attention.c) and the cross-entropy over the vocabulary (cross_entropy.c);
each source's header says why ATen's kernels fall short there. They are compiled on first use
with the host compiler and `-march=native` and cached under `$POSTTRAIN_KERNEL_CACHE`
(default `~/.cache/posttrain/kernels`). The cache key holds the sources, the flags, the
compiler's version and the CPU's model and flags, so a changed kernel, compiler or machine
builds afresh. The build is atomic (temporary file + rename): several ranks may build at once.

Where a kernel cannot run (no C compiler, a failed build, not fp32, a strided last dimension)
the callers use ATen's kernels instead, after one warning saying why;
`POSTTRAIN_CPU_KERNELS=off` forces that. Calls release the GIL (ctypes), so with several
torch threads the work is split across that many Python threads, each running the kernel on
its share.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

KERNELS = Path(__file__).parents[1] / "kernels"  # package data of `training` (pyproject.toml)
ENV_SWITCH = "POSTTRAIN_CPU_KERNELS"  # "off": ATen's kernels only
_P = ctypes.c_void_p


def _compiler() -> str | None:
    return next((c for c in (os.environ.get("CC", ""), "cc", "gcc", "clang") if c and shutil.which(c)), None)


def _flags(defines: dict[str, int]) -> list[str]:
    flags = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-mprefer-vector-width=512")  # gcc's default for AVX-512 cores is 256-bit vectors
    return [*flags, *(f"-D{name}={value}" for name, value in sorted(defines.items())), "-shared", "-fPIC"]


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


def build(source: str, **defines: int) -> Path:
    """Path of the compiled library of kernels/<source>.c with these -D defines, compiling it if not cached."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc, clang or $CC) to build the CPU kernels")
    flags = _flags(defines)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    texts = [p.read_text() for p in sorted(KERNELS.glob("*.[ch]"))]
    key = hashlib.sha256("\0".join([*texts, *flags, version, _cpu_signature()]).encode()).hexdigest()
    suffix = "".join(f"_{name.lower()}{value}" for name, value in sorted(defines.items()))
    cache = _cache_dir()
    target = cache / f"{source}{suffix}_{key[:16]}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{target.name}.{os.getpid()}.tmp"
    done = subprocess.run(
        [compiler, *flags, str(KERNELS / f"{source}.c"), "-o", str(partial)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"building {source}.c with {compiler} failed:\n{done.stderr[-2000:]}")
    os.replace(partial, target)
    return target


@functools.cache
def load(source: str, **defines: int) -> ctypes.CDLL | None:
    """The built library, or None (and one warning saying why) where it cannot be built or is switched off."""
    if os.environ.get(ENV_SWITCH, "").lower() == "off":
        return None
    try:
        return ctypes.CDLL(str(build(source, **defines)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        log.warning("CPU kernel %s unavailable, ATen's kernel is used instead: %s", source, error)
        return None


def _cpu_fp32(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.stride(-1) == 1 for t in tensors)


class AttentionKernel:
    """One head_dim's compiled kernel; tensors in the layouts documented in the C source."""

    def __init__(self, lib: ctypes.CDLL) -> None:
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

        _check(_run_parts(run, _segment_parts(segments)), "forward")

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

        _check(_run_parts(run, _segment_parts(segments)), "backward")


def _strides(*tensors: torch.Tensor) -> torch.Tensor:
    """The first three element strides of each tensor: the C signature's (b, h, t) or (b, t, h), in its dim order."""
    return torch.tensor([stride for t in tensors for stride in t.stride()[:3]], dtype=torch.int64)


def _check(codes: list[int], which: str) -> None:
    if any(codes):
        raise MemoryError(f"the CPU attention kernel's {which} could not allocate its scratch buffers")


class CrossEntropyKernel:
    """Sum of token cross-entropies over [rows, vocabulary] fp32 logits, and its gradient (cross_entropy.c)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._forward = lib.cross_entropy_forward
        self._forward.argtypes = [_P, ctypes.c_int64, _P, ctypes.c_int64, ctypes.c_int64, _P, _P]
        self._forward.restype = ctypes.c_int64
        self._backward = lib.cross_entropy_backward
        self._backward.argtypes = [_P, ctypes.c_int64, _P, _P, ctypes.c_int64, ctypes.c_int64, ctypes.c_float, _P]
        self._backward.argtypes += [ctypes.c_int64]
        self._backward.restype = None

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        """(loss sum, per-row log-sum-exp); labels < 0 are ignored, labels >= vocabulary raise IndexError."""
        rows, vocab = logits.shape
        lse = torch.empty(rows, dtype=torch.float32)

        def run(span: tuple[int, int]) -> tuple[int, float]:
            start, stop = span
            total = ctypes.c_double(0.0)
            bad = self._forward(
                _P(logits[start].data_ptr()) if stop > start else None, logits.stride(0),
                _P(labels[start:].data_ptr()), stop - start, vocab,
                _P(lse[start:].data_ptr()), ctypes.byref(total),
            )  # fmt: skip
            return (start + bad if bad else 0), total.value

        results = _run_parts(run, _row_spans(rows))
        bad = next((row for row, _ in results if row), 0)
        if bad:
            raise IndexError(f"label {int(labels[bad - 1])} of row {bad - 1} is outside the vocabulary of {vocab}")
        return sum(total for _, total in results), lse

    def backward(self, logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, scale: float) -> torch.Tensor:
        rows, vocab = logits.shape
        grad = torch.empty(rows, vocab, dtype=torch.float32)

        def run(span: tuple[int, int]) -> None:
            start, stop = span
            if stop > start:
                self._backward(
                    _P(logits[start].data_ptr()), logits.stride(0), _P(labels[start:].data_ptr()),
                    _P(lse[start:].data_ptr()), stop - start, vocab, scale, _P(grad[start].data_ptr()), vocab,
                )  # fmt: skip

        _run_parts(run, _row_spans(rows))
        return grad


def _row_spans(rows: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges, one per torch thread."""
    threads = max(1, min(torch.get_num_threads(), rows))
    bounds = [rows * i // threads for i in range(threads + 1)]
    return list(itertools.pairwise(bounds))


def _run_parts(run: Callable[[T], R], parts: list[T]) -> list[R]:
    """run(part) for every part: one part inline, several on a pool of as many Python threads."""
    if len(parts) == 1:
        return [run(parts[0])]
    return list(_pool(len(parts)).map(run, parts))


def _segment_parts(segments: torch.Tensor) -> list[torch.Tensor]:
    threads = torch.get_num_threads()
    return [segments] if threads <= 1 or segments.shape[0] <= 1 else _balanced_parts(segments, threads)


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
def _attention(head_dim: int) -> AttentionKernel | None:
    lib = load("packed_attention", HEAD_DIM=head_dim)
    return AttentionKernel(lib) if lib is not None else None


def attention_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> AttentionKernel | None:
    """The attention kernel if these inputs suit it (CPU, fp32, contiguous head dimension), else None."""
    return _attention(query.shape[-1]) if _cpu_fp32(query, key, value) else None


@functools.cache
def _cross_entropy() -> CrossEntropyKernel | None:
    lib = load("cross_entropy")
    return CrossEntropyKernel(lib) if lib is not None else None


def cross_entropy_kernel(logits: torch.Tensor, labels: torch.Tensor) -> CrossEntropyKernel | None:
    """The cross-entropy kernel if these inputs suit it (CPU, fp32 2-D logits, int64 labels), else None."""
    if logits.dim() != 2 or labels.dtype != torch.int64 or not labels.is_contiguous() or not _cpu_fp32(logits):
        return None
    return _cross_entropy()


def kernels_in_use(attention_head_dim: int | None) -> list[str]:
    """Names of our kernels a CPU run uses (what summary.json reports): the loss always runs in fp32;
    attention only where the run's attention is packed_sdpa in fp32 (pass its head size, else None)."""
    available = {"cross_entropy": _cross_entropy()}
    if attention_head_dim is not None:
        available = {"attention": _attention(attention_head_dim), **available}
    return [name for name, kernel in available.items() if kernel is not None]
