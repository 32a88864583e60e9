"""torch.compile of the decoder layers (regional compilation), and when to use it.

On CPU the elementwise work between the matmuls (RMSNorm, rotary embedding, SiLU x up,
residual adds and their backward) runs as one memory-bound aten op each; inductor fuses
them into a few generated C++ loops. Each decoder layer is compiled on its own, so all
layers share one compiled graph and compile time does not grow with depth. On CPU, packed_sdpa
is one opaque custom operator inside that graph (our C kernel, or ATen's flash kernel per
conversation), so a layer compiles to one graph, forward and backward, without a break.

"auto" turns it on where it has been verified: single-process or DDP training on CPU with
a C++ compiler present (inductor generates C++). It stays off for FSDP2, activation
checkpointing and GPUs, where it has not been verified; "on" forces it.
"""

from __future__ import annotations

import os
import shutil

import torch

from training.config import TrainConfig
from training.distributed import DistContext, causal_lm


def cpp_compiler_available() -> bool:
    return any(shutil.which(name) for name in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if name)


def should_compile(cfg: TrainConfig, ctx: DistContext) -> tuple[bool, str]:
    """(compile?, why) for the run's config and device."""
    if cfg.compile == "off":
        return False, "compile: off in the config"
    if cfg.compile == "on":
        return True, "compile: on in the config"
    if ctx.device.type != "cpu":
        return False, "compile auto: off on GPU (not yet measured there; set compile: on to try)"
    if cfg.distributed == "fsdp2" and ctx.world_size > 1:
        return False, "compile auto: off with FSDP2"
    if cfg.activation_checkpointing:
        return False, "compile auto: off with activation checkpointing"
    if not cpp_compiler_available():
        return False, "compile auto: off, no C++ compiler (g++/c++/clang++ or $CXX) for inductor's CPU kernels"
    return True, "compile auto: on (CPU, C++ compiler found)"


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """Compile every decoder layer and the final norm in place (parameter names and state_dict keys stay as they
    are); returns the number of layers compiled."""
    inner = causal_lm(model)
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else inner
    layers = getattr(decoder, "layers", None)
    if layers is None:
        decoder.compile()
        return 1
    for layer in layers:
        layer.compile()
    final_norm = getattr(decoder, "norm", None)
    if isinstance(final_norm, torch.nn.Module):  # else the last RMSNorm runs as ~10 eager elementwise ops
        final_norm.compile()
    return len(layers)


def maybe_compile(model: torch.nn.Module, cfg: TrainConfig, ctx: DistContext) -> tuple[bool, str]:
    """Decide (should_compile) and, if so, compile the decoder layers; returns (compiled, why)."""
    compile_on, why = should_compile(cfg, ctx)
    if compile_on:
        compile_decoder_layers(model)
    return compile_on, why
