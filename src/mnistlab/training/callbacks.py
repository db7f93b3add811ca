"""Engine callbacks of a training run: weight averaging, and the run directory's per-epoch files and checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from mnistlab.data.loader import DeviceLoader
from mnistlab.files.checkpoints import model_metadata, save_checkpoint
from mnistlab.files.runs import write_metrics
from mnistlab.models import unwrap
from mnistlab.presets import Config
from mnistlab.training.engine import Callback


class WeightAverage(Callback):
    """Engine callback: after every optimizer step, fold the weights into an exponential moving average with
    decay `cfg.ema` (torch.optim.swa_utils); the average is what gets evaluated and saved.

    Batch-norm statistics are not averaged but recomputed for the averaged weights before each evaluation,
    with one forward pass over the training images: the running statistics of the many models along the
    trajectory do not describe their average (averaging them gave 97.06% instead of 99.74% in `best`).
    """

    def __init__(self, model: nn.Module, decay: float, train: DeviceLoader) -> None:
        self.model, self.train = model, train
        self.has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=not self.has_bn)

    def on_step(self) -> None:
        self.average.update_parameters(self.model)

    def for_eval(self) -> nn.Module:
        """The average, with batch-norm statistics of its own."""
        if self.has_bn:
            update_bn((x for x, _ in self.train.epoch(0)), self.average)
        return self.average


class RunWriter(Callback):
    """Engine callback: after every epoch, metrics files and an atomic checkpoint in the run directory."""

    def __init__(self, run_dir: Path, cfg: Config, model: nn.Module, optimizer, scheduler,
                 average: nn.Module | None = None) -> None:
        self.run_dir, self.cfg = run_dir, cfg
        self.model, self.optimizer, self.scheduler, self.average = model, optimizer, scheduler, average
        self.history: list[dict[str, Any]] = []

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        write_metrics(self.run_dir, self.history)
        save_checkpoint(self.run_dir / "checkpoint.pt", {
            "format": "mnistlab-checkpoint",
            "epoch": row["epoch"],
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": rng_state(),
            "history": self.history,
            "meta": model_metadata(self.cfg),
            "ema": self.average.state_dict() if self.average is not None else None,
        })


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
