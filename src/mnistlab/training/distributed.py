"""torchrun support: process-group set-up for DistributedDataParallel, chosen from the environment.

`torchrun --nproc-per-node N -m mnistlab train ...` sets WORLD_SIZE/RANK/LOCAL_RANK; without them a run is
a single process and none of this does anything. Backend: nccl for CUDA, gloo for the CPU.

The process group is joined once per process and left at exit (a destroyed group cannot be re-joined
under torchrun, and commands such as compare train several times in one process).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.training.engine import Callback


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


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which taskset and containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def setup(device: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (once per process); a single-process DistEnv otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and not device.startswith(("cpu", "mps"))
        if use_cuda:
            if local_world > (n := torch.cuda.device_count()):
                raise ConfigError(f"{local_world} ranks on this node but {n} CUDA GPU(s): one rank per GPU "
                                  f"(torchrun --nproc-per-node {n}), or --device cpu")
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo")
        atexit.register(teardown)
    backend = dist.get_backend()
    if backend == "gloo":  # share the CPU's cores between the local ranks instead of oversubscribing them
        torch.set_num_threads(max(1, usable_cpus() // local_world))
    return DistEnv(rank, world, local_rank, local_world, backend)


def rank_device(env: DistEnv, device: torch.device) -> torch.device:
    """Each rank's own GPU under nccl; the chosen device otherwise."""
    return torch.device("cuda", env.local_rank) if env.backend == "nccl" else device


def per_rank_batch(global_batch: int, env: DistEnv) -> int:
    """`global_batch` / world size, or a ConfigError when it does not divide."""
    world = env.world_size
    if global_batch % world:
        raise ConfigError(
            f"--batch-size {global_batch} is the global batch and must be divisible by the world size "
            f"{world} (e.g. --batch-size {max(world, global_batch // world * world)})"
        )
    return global_batch // world


def _comm_device(env: DistEnv) -> torch.device:
    return torch.device("cuda", env.local_rank) if env.backend == "nccl" else torch.device("cpu")


def agree(env: DistEnv, error: BaseException | None) -> None:
    """A collective every rank reaches before the first DDP one: if any rank failed, every rank stops.

    Without it a rank that fails alone (its node lacks the data, say) leaves the others waiting in DDP's
    first collective until the timeout. Errors of ranks other than 0 name their rank.
    """
    if not env.active:
        if error is not None:
            raise error
        return
    flags = torch.zeros(env.world_size, dtype=torch.int32, device=_comm_device(env))
    flags[env.rank] = int(error is not None)
    dist.all_reduce(flags)
    failed = flags.nonzero().flatten().tolist()
    if error is not None:
        if env.rank and isinstance(error, MnistlabError):
            raise type(error)(f"rank {env.rank}: {error}") from None
        raise error
    if failed:
        ranks = ", ".join(map(str, failed))
        prefix = f"rank {env.rank}: " if env.rank else ""
        raise MnistlabError(f"{prefix}stopping because rank {ranks} failed (its error is above)")


def same_everywhere(env: DistEnv, values: Sequence[float]) -> bool:
    """True when every rank passed the same numbers (a collective; always True in a single process)."""
    if not env.active:
        return True
    lo = torch.tensor(list(values), dtype=torch.float64, device=_comm_device(env))
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


class RankSeed(Callback):
    """Engine callback under DDP: seed torch's RNGs at every epoch start from (seed, epoch, rank).

    Ranks draw different dropout masks and augmentations for their different shards, and an epoch's draws
    do not depend on the epochs run before it, so resuming needs no saved per-rank RNG state (the same
    idea as the loader's per-epoch permutation).
    """

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank = seed, rank

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        torch.manual_seed(((self.seed * 1_000_003 + epoch) * 65_537 + self.rank) % 2**63)



def barrier(env: DistEnv) -> None:
    if env.active and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Leave the process group (registered to run at exit by `setup`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
