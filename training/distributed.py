"""Process group, model wrapping (DDP or FSDP2) and full state dicts, in one place.

Works in three modes with the same calling code:
- plain `python -m training.sft` (no torchrun env): one process, no process group;
- torchrun on CPU: gloo; torchrun on GPU: NCCL, one device per local rank.
The collectives here are no-ops without a process group, so the loop never
branches on "am I distributed".
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from training.lifeline import die_with_parent


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized: bool  # a process group exists

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over ranks (float64, so token counts stay exact)."""
        if not self.initialized:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.initialized:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.initialized:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def resolve_device(preference: str) -> str:
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch sees no CUDA device; use device='cpu' or 'auto'")
    return preference


def init_distributed(device_preference: str = "auto") -> DistContext:
    """Join the torchrun process group if launched by torchrun, else run as a single process."""
    kind = resolve_device(device_preference)
    launched = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a rank started by torchrun's agent (set for its workers only)
        # torchrun starts every rank in a session of its own, out of reach of a process-group kill: a rank must
        # not outlive its agent (killed after the launcher's grace period, or by the OOM killer).
        die_with_parent(signal.SIGTERM)
    if launched and not dist.is_initialized():
        if kind == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return DistContext(rank, world_size, local_rank, device, launched)


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group so that its destructor runs with the GIL released.

    Gloo's destructor joins its worker threads, and a worker that is still freeing a finished
    collective's tensors needs the GIL to do so. When the last reference to the group goes with
    a DDP reducer, the destructor runs under the GIL and that join never returns: a rank hangs
    after its work is done. Holding the group object across destroy, collecting whatever still
    refers to it (a reducer in a reference cycle), and letting this reference go last makes the
    release go through the group's own binding, which drops the GIL first. Callers release their
    models before calling this.
    """
    if not (ctx.initialized and dist.is_initialized()):
        return
    group = dist.group.WORLD
    dist.destroy_process_group()
    gc.collect()
    del group


def wrap_model(
    model: torch.nn.Module, ctx: DistContext, strategy: str, param_dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """DDP (replicated) or FSDP2 (each decoder layer, then the root, sharded with fully_shard).

    `param_dtype` (FSDP2 only) all-gathers parameters in that dtype for compute while
    keeping fp32 masters and reducing gradients in fp32 (the FSDP2 form of bf16 autocast).
    """
    if not ctx.initialized:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # An explicit mesh on our device: fully_shard's default mesh would pick CUDA whenever one
    # is visible, even for a run configured for CPU.
    kwargs: dict[str, Any] = {"mesh": init_device_mesh(ctx.device.type, (ctx.world_size,))}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    layers = getattr(getattr(causal_lm(model), "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"FSDP2 wrapping expects a decoder with model.layers; {type(model).__name__} has none")
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside the DDP and peft wrappers, for what only it has: its forward's signature,
    its decoder layers. State dicts and forwards go through the wrappers (their keys hold the adapter's weights)."""
    inner = unwrap(model)
    peft = sys.modules.get("peft")  # not imported: no adapter, and full fine-tuning never pays for the import
    if peft is not None and isinstance(inner, peft.PeftModel):
        return inner.get_base_model()
    return inner


@contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on non-final accumulation micro-steps (DDP no_sync / FSDP2 flag)."""
    if enabled:
        yield
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with nullcontext():
            yield


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU weights keyed like the HF model (collective under FSDP2: call on every rank).

    Tied parameters (e.g. embeddings = lm_head) come back as one shared tensor, as in the
    unwrapped model, so safetensors/save_pretrained store them once whatever the wrapper.
    """
    module = unwrap(model)
    state = get_model_state_dict(module, options=_FULL)
    first_name: dict[int, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        primary = first_name.setdefault(id(param), name)
        if primary != name and primary in state and name in state:
            state[name] = state[primary]
    return state


def load_full_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    set_model_state_dict(unwrap(model), state, options=StateDictOptions(full_state_dict=True, strict=True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return get_optimizer_state_dict(unwrap(model), optimizer, options=_FULL)


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    set_optimizer_state_dict(unwrap(model), optimizer, state, options=StateDictOptions(full_state_dict=True))
