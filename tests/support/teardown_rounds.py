"""Run by torchrun (2 ranks) from tests/integration/test_distributed_teardown.py.

Each round joins a fresh gloo group, takes a DDP step, sums a number over ranks the way the
trainer's end-of-run totals do, and leaves the DDP model reachable only through a reference
cycle (as a model held by a recipe can be), then calls `training.distributed.shutdown`. A
teardown that lets the reducer drop the group's last reference under the GIL deadlocks within
a few rounds; the test's timeout turns that into a failure.
"""

from __future__ import annotations

import gc
import os
import sys

import torch
import torch.distributed as dist

from training.distributed import DistContext, shutdown


def one_round(store: str, rank: int, world_size: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    ctx = DistContext(rank, world_size, rank, torch.device("cpu"), initialized=True)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 8))
    model(torch.randn(4, 8)).sum().backward()
    holder: dict[str, object] = {"model": model}
    holder["self"] = holder  # only the cycle collector frees the model now
    del model, holder
    ctx.all_reduce_sum([float(rank)])
    shutdown(ctx)
    gc.collect()


def main() -> int:
    rounds, folder = int(sys.argv[1]), sys.argv[2]
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    for i in range(rounds):
        one_round(os.path.join(folder, f"store-{i}"), rank, world_size)
    print(f"rank {rank}: {rounds} rounds", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
