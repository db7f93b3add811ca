"""How the `fast` preset was chosen: train_mnist_fast's recipe, then one change at a time, 5 seeds each.

    python benchmarks/fast_ablation.py [--seeds 5] [--first-seed 0]

Prints one Markdown row per variant: mean / min test accuracy and mean training wall time (the engine's
training loop only, as `mnistlab bench` reports it). Every variant is the `fast` preset with overrides.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.models import register
from mnistlab.training.process import prepare_cpu_process
from mnistlab.training.run import train


@register("train-mnist-fast")
class TrainMnistFastNet(nn.Module):
    """train_mnist_fast's published net: 5x5 conv (24) + pool, 3x3 conv (32) + pool, dense 800-256-10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 24, 5), nn.Conv2d(24, 32, 3)
        self.fc1, self.fc2 = nn.Linear(800, 256), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


TMF = {"model": "train-mnist-fast", "model_args": {}}
C32 = {"c1": 16, "c2": 32, "hidden": 128, "flatten": "chw"}
LR1 = {"opt_args": {"lr": 1e-2, "betas": (0.7, 0.9)}}


VARIANTS = [
    ("train_mnist_fast's net and recipe, 1 epoch", {**TMF, "label_smoothing": 0.0, **LR1}),
    ("+ label smoothing 0.1", {**TMF, **LR1}),
    ("stride-2 5x5 stem (24 ch) instead of conv + pool, dense 256",
     {"model_args": {**C32, "c1": 24, "hidden": 256}, **LR1}),
    ("+ dense 128", {"model_args": {**C32, "c1": 24}, **LR1}),
    ("+ 16-channel stem", {"model_args": C32, **LR1}),
    ("+ dense layer reads channels_last features in their memory order (HWC)",
     {"model_args": {**C32, "flatten": "hwc"}, **LR1}),
    ("+ 24 channels in the second conv, lr 1.3e-2", {"model_args": {**C32, "c2": 24, "flatten": "hwc"}}),
    ("+ 12-channel stem: the `fast` preset", {}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    args = ap.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    # Seed-major order: every variant runs once per round, so drift in the machine's speed hits all of them.
    runs = {name: [] for name, _ in VARIANTS}
    for s in seeds:
        for name, overrides in VARIANTS:
            r = train("fast", seed=s, quiet=True, write_run=False, **overrides)
            runs[name].append((r.test_acc, sum(h["seconds"] for h in r.history)))
    print(f"| variant (seeds {seeds.start}-{seeds.stop - 1}) | mean test acc (%) | min (%) | mean train wall (s) |")
    print("| --- | ---: | ---: | ---: |")
    for name, rows in runs.items():
        accs, secs = [a for a, _ in rows], [t for _, t in rows]
        print(f"| {name} | {sum(accs) / len(accs):.2f} | {min(accs):.2f} | {sum(secs) / len(secs):.2f} |")


if __name__ == "__main__":
    prepare_cpu_process()  # the process `mnistlab train` trains in (it may restart once)
    main()
