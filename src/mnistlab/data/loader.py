"""The in-memory batcher: a whole split as one uint8 tensor on the training device.

Shuffling, slicing, scaling to [0, 1] and normalisation all happen on the device, so an epoch is a loop of
tensor indexing with no per-sample Python work and no DataLoader workers (the cifar10-airbench way).

Under DistributedDataParallel every rank builds the same seeded permutation of the epoch; global batch `i`
is `perm[i*B:(i+1)*B]` and rank `r` takes its `r::world_size` slice, so across ranks every index is seen
exactly once per epoch and every rank runs the same number of steps (the DistributedSampler equivalent).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch


def scale_pixels(images_u8: torch.Tensor, normalise: tuple[float, float] | None = None) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W): (u8 / 255 - mean) / std, folded into one multiply-add.

    The loader and `LoadedModel.probabilities` (hence `mnistlab evaluate`) both compute their inputs here, so
    a saved model scores the dataset's images bit for bit as it was scored during training.
    """
    mean, std = normalise if normalise else (0.0, 1.0)
    x = images_u8.unsqueeze(1).mul(1.0 / (255.0 * std))  # uint8 * float scalar -> float32, in one pass
    if mean:
        x.add_(-mean / std)
    return x


class DeviceLoader:
    """Batches of (images, labels) from uint8 images (N, 28, 28) and int64 labels (N,) held on `device`.

    `batch_size` is the global batch size; with `world_size > 1` each rank yields its share of every
    global batch. Shuffled loaders draw epoch `e`'s order from a generator seeded with (seed, e), so an
    epoch's order does not depend on how many epochs ran before it (resume needs no loader state).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        normalise: tuple[float, float] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 3:
            raise ValueError("images must be a uint8 tensor of shape (N, H, W)")
        self.device = torch.device(device)
        self.images = images.to(self.device)  # the one host-to-device copy of the split
        self.labels = labels.to(self.device, torch.long)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        self.normalise = normalise

    def __len__(self) -> int:
        """Steps per epoch (the same on every rank)."""
        return -(-len(self.labels) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def unsharded(self) -> DeviceLoader:
        """The same split (the same tensors, not a copy) read whole and in order by one process."""
        view = copy.copy(self)
        view.rank, view.world_size, view.shuffle = 0, 1, False
        return view

    def order(self, epoch: int) -> torch.Tensor:
        """The global sample order of `epoch` (identity when not shuffling)."""
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g).to(self.device)

    def shard(self, epoch: int) -> list[tuple[torch.Tensor, int]]:
        """(this rank's indices, the global batch's size) for each step of `epoch`."""
        steps = self.order(epoch).split(self.batch_size)
        return [(s[self.rank :: self.world_size], len(s)) for s in steps]

    def transform(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W) -> normalised float (N, 1, H, W) on the device."""
        x = scale_pixels(images_u8, self.normalise)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x, y) batch of sample indices `idx` (index_select: ~10x faster than images[idx] here)."""
        return self.transform(self.images.index_select(0, idx)), self.labels.index_select(0, idx)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's (x, y) batches of `epoch`."""
        for idx, _ in self.shard(epoch):
            yield self.batch(idx)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)
