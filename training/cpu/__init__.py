"""CPU performance of a training step: our C kernels, regional torch.compile, process settings.

Everything here makes a CPU step faster without changing what it computes: with the kernels
switched off (`POSTTRAIN_CPU_KERNELS=off`) or unavailable, the same step runs through ATen;
with `compile: off`, eagerly. The recipe (training/sft.py) calls in at two places: the
process settings before anything is built, and the compile decision once the model is
wrapped; attention and loss call the kernels.

Modules: kernels (build, cache and call the C kernels of training/kernels/), attention
(packed_sdpa's CPU operator), compilation (whether and how to torch.compile the decoder
layers), allocator (glibc malloc settings), runtime (the process-wide settings).
"""

from training.cpu.allocator import keep_freed_memory
from training.cpu.attention import packed_attention_cpu
from training.cpu.compilation import compile_decoder_layers, maybe_compile, should_compile
from training.cpu.kernels import (
    AttentionKernel,
    CrossEntropyKernel,
    attention_kernel,
    cross_entropy_kernel,
    kernels_in_use,
)
from training.cpu.runtime import tune_process

__all__ = [
    "AttentionKernel",
    "CrossEntropyKernel",
    "attention_kernel",
    "compile_decoder_layers",
    "cross_entropy_kernel",
    "keep_freed_memory",
    "kernels_in_use",
    "maybe_compile",
    "packed_attention_cpu",
    "should_compile",
    "tune_process",
]
