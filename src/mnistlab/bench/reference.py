"""The reference pipeline: the lab notebook's own training, re-created without torchvision, as the benchmark's
other contender.

A Dataset doing per sample what torchvision's MNIST + ToTensor do (uint8 array -> PIL image mode "L" -> float
tensor in [0, 1]), a DataLoader (batch 32, shuffle, 2 workers), the notebook's model (softmax in forward, then
CrossEntropyLoss), Adam lr 1e-3 with its default implementation, and the notebook's plain loop. It is a
benchmark contender only: mnistlab itself trains through `train()` and `engine.fit`.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import torch
from PIL import Image

from mnistlab.data import load_split
from mnistlab.models import DigitsClassifier


class ReferenceMNIST(torch.utils.data.Dataset):
    """Per sample what torchvision's MNIST(transform=ToTensor()) does: uint8 -> PIL "L" -> float [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i].numpy(), mode="L")
        arr = torch.from_numpy(np.array(img, np.uint8, copy=True))  # ToTensor: HWC -> CHW, / 255
        return arr.view(img.size[1], img.size[0], 1).permute(2, 0, 1).contiguous().float().div(255), int(
            self.labels[i])


class ReferencePipeline:
    """The notebook's training loop, one epoch per call (softmax inside the model, per-step .item()), on the
    first `subset` training and `test_subset` test images (all of them by default)."""

    def __init__(self, device: torch.device, data_dir: str | None = None, subset: int | None = None,
                 test_subset: int | None = None) -> None:
        train = load_split("mnist", "train", data_dir)
        test = load_split("mnist", "test", data_dir)
        train = [t[:subset] for t in train] if subset else train
        test = [t[:test_subset] for t in test] if test_subset else test
        # Workers start the way they would in the notebook's process (fork on Linux), not like this spawned one.
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        dl = torch.utils.data.DataLoader
        self.train = dl(ReferenceMNIST(*train), batch_size=32, shuffle=True, num_workers=2, multiprocessing_context=ctx)
        self.test = dl(ReferenceMNIST(*test), batch_size=32, shuffle=False, num_workers=2, multiprocessing_context=ctx)
        self.n, self.device = len(train[1]), device
        torch.manual_seed(0)
        self.net = DigitsClassifier().to(device)
        self.model = lambda x: self.net(x).softmax(dim=1)  # the notebook's forward() ends in softmax
        self.criterion = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.001)

    def epoch(self) -> float:
        self.net.train()
        running_loss, correct = 0.0, 0
        t0 = time.perf_counter()
        for images, labels in self.train:
            images, labels = images.to(self.device), labels.to(self.device)
            logits = self.model(images)
            loss = self.criterion(logits, labels)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            running_loss += loss.detach().item()
            correct += (torch.max(logits, 1)[1] == labels).sum().item()
        return time.perf_counter() - t0

    @torch.no_grad()
    def test_acc(self) -> float:
        self.net.eval()
        correct = total = 0
        for images, labels in self.test:
            pred = self.model(images.to(self.device)).argmax(1)
            correct += (pred == labels.to(self.device)).sum().item()
            total += len(labels)
        return 100.0 * correct / total
