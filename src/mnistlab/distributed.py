"""torchrun support: process-group set-up for DistributedDataParallel, chosen from the environment.

`torchrun --nproc-per-node N -m mnistlab train ...` sets WORLD_SIZE/RANK/LOCAL_RANK; without them a run is
a single process and none of this does anything. Backend: nccl for CUDA, gloo for the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mnistlab.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (idempotent); a single-process DistEnv otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    use_cuda = torch.cuda.is_available() and not device.startswith(("cpu", "mps"))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    else:  # share the CPU's cores between the local ranks instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistEnv(rank, world, local_rank, local_world, backend)


def rank_device(env: DistEnv, device: torch.device) -> torch.device:
    """Each rank's own GPU under nccl; the chosen device otherwise."""
    return torch.device("cuda", env.local_rank) if env.backend == "nccl" else device


def per_rank_batch(global_batch: int, env: DistEnv) -> int:
    if global_batch % env.world_size:
        raise ConfigError(
            f"--batch-size {global_batch} is the global batch and must be divisible by the world size "
            f"{env.world_size}"
        )
    return global_batch // env.world_size


def barrier(env: DistEnv) -> None:
    if env.active and dist.is_initialized():
        dist.barrier()


def teardown(env: DistEnv) -> None:
    if env.active and dist.is_initialized():
        dist.destroy_process_group()
