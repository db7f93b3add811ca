"""The live observer of a run (`mnistlab train --live`): what the network is doing, appended to the run
directory's live.jsonl one JSON line at a time, for the page that watches a run (serve/train_api.py).

    {"type": "start", ...}     steps per epoch, the schedule, the 20 panel digits and the chosen digit
    {"type": "step", ...}      every `every` steps: the mean training loss of those steps, images/s, progress,
                               the time left
    {"type": "snapshot", ...}  at most every `interval` seconds (and at the start and each epoch's end): the first
                               convolution's filters, the panel's answers and probabilities, the accuracy on
                               the probe (the first PROBE test images), the chosen digit's feature maps
    {"type": "epoch", ...}     each epoch's metrics row, once its checkpoint is saved
    {"type": "end", ...}       written by whoever saw the process end (the server): state, exit code, message

Observing does not change the run: the step loop gets no host sync from it (the loss is summed on the device
and read once per `every` steps), snapshots run the unwrapped model in eval mode under `torch.no_grad` in fp32
with every random generator forked, and put its training mode back. The same settings and seed give the same
metrics rows with or without it (tested).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.data import load_split
from mnistlab.data.loader import DeviceLoader
from mnistlab.models import unwrap
from mnistlab.presets import Config
from mnistlab.training.engine import Callback, EpochMetrics, probabilities

LIVE_FILE = "live.jsonl"
PROBE = 200  # test images scored at each snapshot: one small fp32 forward pass
PANEL_PER_CLASS = 2  # the panel: the first two test images of each class (20 digits)
MAX_MAPS = 32  # feature maps of the chosen digit sent per snapshot
# A snapshot is about 30 KB of JSON. Spacing them by at least the run's elapsed time / 30 keeps a long run's
# file small (their count grows with the log of its length: about 150 in an hour) and the page as lively early.
SNAPSHOTS_PER_SPAN = 30


def append_event(path: Path, event: dict[str, Any]) -> None:
    """Append one event as one JSON line (a single write to a file opened for appending, so a reader sees
    whole lines or, at worst, a last line still without its newline, which it leaves for later)."""
    line = json.dumps(finite(event), separators=(",", ":"), allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None (JSON has no such numbers; a diverged loss is one)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's weights as they are now (at the start: two runs from the same start agree)."""
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


class LiveObserver(Callback):
    """Engine callback: the live events of a run, appended to `run_dir() / LIVE_FILE` (see the module).

    `every`: steps between step events (None: about 20 per epoch, 5 to 50 steps apart); `interval`: the
    least seconds between snapshots, which bounds their cost (a snapshot is one forward pass of PROBE images);
    later in a run they are also spaced by its elapsed time / SNAPSHOTS_PER_SPAN.
    """

    def __init__(self, run_dir: Callable[[], Path], cfg: Config, data_dir: str | Path | None = None,
                 every: int | None = None, interval: float = 2.0) -> None:
        self.run_dir, self.cfg, self.data_dir = run_dir, cfg, data_dir
        self.every_given, self.interval = every, interval
        self.every = every or 1
        self.model: nn.Module | None = None
        self.epoch, self.step_in_epoch, self.steps, self.global_step = 0, 0, 1, 0
        self.since = 0  # steps since the last step event
        self.loss_sum: torch.Tensor | None = None
        self.last_time = self.last_snapshot = self.started = 0.0

    # ------------------------------------------------------------ hooks
    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, train: DeviceLoader) -> None:
        self.model, self.device = unwrap(model), train.device
        self.steps, self.batch = len(train), train.batch_size
        self.every = self.every_given or min(50, max(5, self.steps // 20))
        self.loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        images, labels = load_split(self.cfg.dataset, "test", self.data_dir)
        images, labels = images[:PROBE], labels[:PROBE]
        self.probe = train.transform(images.to(self.device))
        self.probe_labels = labels.to(self.device)
        self.panel = [i for c in range(10) for i in (labels == c).nonzero().flatten()[:PANEL_PER_CLASS].tolist()]
        conv = first_conv(self.model)
        self.emit({"type": "start", "epochs": self.cfg.epochs, "steps_per_epoch": self.steps,
                   "batch_size": self.batch, "every": self.every, "interval": self.interval,
                   "optimizer": self.cfg.optimizer, "preset": self.cfg.preset, "probe": len(labels),
                   "conv": conv is not None, "initial_weights": fingerprint(self.model),
                   "digit": {"index": 0, "label": int(labels[0])},
                   "panel": [{"index": i, "label": int(labels[i]), "pixels": base64.b64encode(
                       images[i].contiguous().numpy().tobytes()).decode()} for i in self.panel]})
        self.started = self.last_time = time.perf_counter()
        self.snapshot()

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        self.epoch, self.step_in_epoch, self.steps = epoch, 0, steps
        self.global_step = (epoch - 1) * steps

    def on_step(self, loss: torch.Tensor) -> None:
        self.loss_sum.add_(loss.detach())  # on the device: no sync
        self.step_in_epoch += 1
        self.global_step += 1
        self.since += 1
        if self.since >= self.every:
            self.step_event()

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        if self.since:
            self.step_event(snapshot=False)
        self.emit({"type": "epoch", **metrics})
        self.snapshot()
        self.last_time = time.perf_counter()  # the evaluation is not training time

    # ------------------------------------------------------------ events
    def emit(self, event: dict[str, Any]) -> None:
        event["t"] = round(time.perf_counter() - self.started, 3) if self.started else 0.0
        append_event(self.run_dir() / LIVE_FILE, event)

    def step_event(self, snapshot: bool = True) -> None:
        loss = self.loss_sum.item() / self.since  # the one host sync of these `every` steps
        self.loss_sum.zero_()
        now = time.perf_counter()
        ips = self.since * self.batch / max(now - self.last_time, 1e-9)
        total = self.cfg.epochs * self.steps
        left = (total - self.global_step) * self.batch / ips
        self.emit({"type": "step", "epoch": self.epoch, "step": self.step_in_epoch, "steps": self.steps,
                   "global_step": self.global_step, "total_steps": total, "loss": round(loss, 6),
                   "images_per_s": round(ips, 1), "progress": round(self.global_step / total, 4),
                   "eta_s": round(left, 1)})
        self.since, self.last_time = 0, now
        if snapshot and now - self.last_snapshot >= max(self.interval, (now - self.started) / SNAPSHOTS_PER_SPAN):
            self.snapshot()

    def snapshot(self) -> None:
        """The filters, the panel's answers, the probe's accuracy and the chosen digit's feature maps."""
        model = self.model
        conv = first_conv(model)
        maps: dict[str, torch.Tensor] = {}

        def keep(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            maps["x"] = output[0].detach().float().clone()  # before an in-place ReLU changes it

        was_training = model.training
        devices = [self.device] if self.device.type == "cuda" else []
        handle = conv.register_forward_hook(keep) if conv is not None else None
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                model.eval()
                probs = probabilities(model(self.probe).float())
        finally:
            model.train(was_training)
            if handle is not None:
                handle.remove()
        conf, pred = probs.max(1)
        correct = (pred == self.probe_labels).float().mean().item() * 100.0
        panel = torch.stack([pred[self.panel].double(), conf[self.panel].double()], 1).cpu().tolist()
        event: dict[str, Any] = {"type": "snapshot", "epoch": self.epoch, "global_step": self.global_step,
                                 "probe_acc": round(correct, 2),
                                 "panel": [[int(p), round(c, 4)] for p, c in panel]}
        if conv is not None:
            filters = conv.weight.detach().float().mean(1)  # (C, kh, kw), averaged over input channels
            event["filters"] = {"shape": list(filters.shape),
                                "values": [round(v, 4) for v in filters.flatten().cpu().tolist()]}
            fm = maps["x"][:MAX_MAPS]
            event["maps"] = {"shape": list(fm.shape), "u8": u8_base64_each(fm)}
        self.emit(event)
        self.last_snapshot = time.perf_counter()


def u8_base64_each(maps: torch.Tensor) -> str:
    """(C, H, W) feature maps, each scaled to 0..255 over its own range, as base64 of the bytes."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = (flat - lo) / (hi - lo).clamp_min(1e-12)
    return base64.b64encode((scaled * 255).round().to(torch.uint8).cpu().numpy().tobytes()).decode()

