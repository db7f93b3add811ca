"""The on-device batcher: shuffling, sharding across ranks, normalisation."""

from __future__ import annotations

import torch

from mnistlab.data.loader import DeviceLoader


def _loader(n=103, batch=10, **kw) -> DeviceLoader:
    images = torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 1).expand(n, 28, 28)
    return DeviceLoader(images.contiguous(), torch.arange(n), batch, **kw)


def test_every_index_once_per_epoch_across_ranks():
    for world in (1, 2, 3, 4):
        loaders = [_loader(shuffle=True, seed=7, rank=r, world_size=world) for r in range(world)]
        for epoch in (1, 2):
            seen = torch.cat([idx for ld in loaders for idx, _ in ld.shard(epoch)])
            assert sorted(seen.tolist()) == list(range(103))
            # every rank runs the same number of steps, and the global batch sizes add up
            assert len({len(ld.shard(epoch)) for ld in loaders}) == 1
            assert sum(g for _, g in loaders[0].shard(epoch)) == 103


def test_same_seed_same_order_and_epochs_differ():
    a, b, c = _loader(shuffle=True, seed=1), _loader(shuffle=True, seed=1), _loader(shuffle=True, seed=2)
    assert torch.equal(a.order(3), b.order(3))
    assert not torch.equal(a.order(3), c.order(3))
    assert not torch.equal(a.order(1), a.order(2))


def test_rank_takes_strided_share_of_each_global_batch():
    full = _loader(shuffle=True, seed=3)
    r1 = _loader(shuffle=True, seed=3, rank=1, world_size=2)
    for (g, _), (s, _) in zip(full.shard(5), r1.shard(5), strict=True):
        assert torch.equal(g[1::2], s)


def test_labels_follow_images_and_normalisation():
    ld = _loader(n=20, batch=8, normalise=(0.5, 0.25))
    x, y = next(iter(ld))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32
    expected = (y.float() / 255 - 0.5) / 0.25
    assert torch.allclose(x[:, 0, 0, 0], expected, atol=1e-6)
    assert len(ld) == 3 and sum(len(yb) for _, yb in ld) == 20
