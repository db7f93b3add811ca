"""Engine callbacks of a training run: weight averaging, early stopping, and the run directory's per-epoch
files and checkpoint."""

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
from mnistlab.stats import best_epoch
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

    def on_step(self, loss: torch.Tensor) -> None:
        self.average.update_parameters(self.model)

    def for_eval(self) -> nn.Module:
        """The average, with batch-norm statistics of its own."""
        if self.has_bn:
            update_bn((x for x, _ in self.train.epoch(0)), self.average)
        return self.average


class EarlyStopping(Callback):
    """Engine callback: end the run once validation accuracy has not improved for `patience` epochs.

    After every epoch that improves on the best validation accuracy so far (strictly: a tie is no improvement,
    so the earliest of equal epochs is kept), a CPU copy of the evaluated weights (`evaluated`: the model, or
    the weight average under --ema) is kept; `restore()` puts the best epoch's weights back. The state,
    best weights included, travels in the checkpoint, so a resumed run neither forgets its best epoch nor
    trains past the epoch where it stopped.
    """

    def __init__(self, patience: int, evaluated: nn.Module) -> None:
        self.patience, self.evaluated = int(patience), evaluated
        self.best_epoch = 0
        self.best_acc = float("-inf")
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        if "val_acc" not in row:
            raise ValueError("early stopping needs a validation split (val_acc in the epoch's metrics)")
        if best_epoch([self.best_acc, row["val_acc"]]) == 2:  # better than every earlier epoch
            self.best_acc, self.best_epoch = row["val_acc"], int(row["epoch"])
            self.best_state = {k: v.detach().to("cpu", copy=True)
                               for k, v in unwrap(self.evaluated).state_dict().items()}
        elif row["epoch"] - self.best_epoch >= self.patience:
            self.stopped_epoch = int(row["epoch"])
            self.stop_training = True

    def restore(self) -> int:
        """Load the best epoch's weights into the evaluated module; returns that epoch."""
        if self.best_state is None:
            raise ValueError("no epoch has been evaluated yet")
        unwrap(self.evaluated).load_state_dict(self.best_state)
        return self.best_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"patience": self.patience, "best_epoch": self.best_epoch, "best_acc": self.best_acc,
                "stopped_epoch": self.stopped_epoch, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_epoch, self.best_acc = int(state["best_epoch"]), float(state["best_acc"])
        self.best_state, self.stopped_epoch = state["best_state"], state["stopped_epoch"]
        self.stop_training = self.stopped_epoch is not None


class RunWriter(Callback):
    """Engine callback: after every epoch, metrics files and an atomic checkpoint in the run directory."""

    def __init__(self, run_dir: Path, cfg: Config, model: nn.Module, optimizer, scheduler,
                 average: nn.Module | None = None, early_stop: EarlyStopping | None = None) -> None:
        self.run_dir, self.cfg = run_dir, cfg
        self.model, self.optimizer, self.scheduler, self.average = model, optimizer, scheduler, average
        self.early_stop = early_stop  # runs before this writer, so its state includes this epoch
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
            "early_stop": self.early_stop.state_dict() if self.early_stop is not None else None,
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
