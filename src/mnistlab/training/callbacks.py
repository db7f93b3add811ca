"""Engine callbacks of a training run: weight averaging, early stopping, the run directory's per-epoch
files and checkpoint, and stopping on SIGINT/SIGTERM."""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from mnistlab.data.loader import DeviceLoader
from mnistlab.errors import Interrupted
from mnistlab.files.checkpoints import model_metadata, save_checkpoint
from mnistlab.files.outdir import Claim
from mnistlab.files.runs import write_metrics
from mnistlab.models import build_model, unwrap
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
    """Engine callback: after every epoch, an atomic checkpoint, then the metrics files, in the run directory.

    The checkpoint comes first, so metrics.csv/metrics.jsonl never claim an epoch the checkpoint does not hold
    (a write that fails leaves both at the previous epoch, and `--resume` goes on from there); at the start
    the metrics files are rewritten from the history being continued. With a `claim` that replaces a
    directory, the first epoch's files put the new run in its place (`Claim.commit`), not before.
    """

    def __init__(self, run_dir: Path, cfg: Config, model: nn.Module, optimizer, scheduler,
                 average: nn.Module | None = None, early_stop: EarlyStopping | None = None,
                 claim: Claim | None = None) -> None:
        self.run_dir, self.cfg, self.claim = run_dir, cfg, claim
        self.model, self.optimizer, self.scheduler, self.average = model, optimizer, scheduler, average
        self.early_stop = early_stop  # runs before this writer, so its state includes this epoch
        self.history: list[dict[str, Any]] = []

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, train: DeviceLoader) -> None:
        if self.history:  # rows an interrupted process wrote past its checkpoint are rolled back
            write_metrics(self.run_dir, self.history)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        history = [*self.history, row]
        save_checkpoint(self.run_dir / "checkpoint.pt", {
            "format": "mnistlab-checkpoint",
            "epoch": row["epoch"],
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": rng_state(),
            "history": history,
            "meta": model_metadata(self.cfg),
            "ema": self.average.state_dict() if self.average is not None else None,
            "early_stop": self.early_stop.state_dict() if self.early_stop is not None else None,
        })
        self.history = history
        write_metrics(self.run_dir, self.history)
        if self.claim is not None:  # a replacement goes in place whole, checkpoint and metrics
            self.run_dir = self.claim.commit()


def run_bytes(cfg: Config, resume: bool = False) -> int:
    """About the most a run directory of `cfg` holds at once: two checkpoints while one replaces the other
    (one when resuming: the old one is there already), each the weights, the optimizer's state (counted as two
    tensors per weight, Adam's moments, the most torch's optimizers keep), the weight average and early
    stopping's best weights; the final model file; 1 MB for config, metrics and TensorBoard."""
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        model = build_model(cfg.model, **cfg.model_args)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    checkpoint = weights * (3 + bool(cfg.ema) + bool(cfg.early_stop))
    return (1 if resume else 2) * checkpoint + weights + 1_000_000


class SignalStop(Callback):
    """Engine callback: SIGINT and SIGTERM stop the run at the next step boundary and raise `Interrupted`,
    whose one line says what is saved and how to go on (the CLI exits 130 or 143).

    Used as a context manager that installs the handlers (main thread only) and restores the previous ones.
    The handler only records the signal; `on_step` reads that attribute, so a step costs no host sync.
    What is durable is the last completed epoch: this callback runs after the run's writer, so a completed
    epoch's checkpoint is on disk before a stop is raised; the partial epoch is dropped (replaying part of an
    epoch exactly would need the loader's position and every RNG mid-epoch). A second signal stops at once.
    Under torchrun the ranks stop together at the end of the epoch in progress, after one all-reduce of the
    flag per epoch (a rank stopping alone would leave the others waiting in the gradients' all-reduce).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, claim: Claim | None, distributed: bool = False, main: bool = True) -> None:
        self.claim, self.distributed, self.main = claim, distributed, main
        self.signum: int | None = None
        self.done = 0  # the last completed epoch
        self.epoch: int | None = None  # the epoch in progress
        self.device = torch.device("cpu")
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *_: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise self.interrupted(signum)
        self.signum = signum

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, train: DeviceLoader) -> None:
        self.device = train.device

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        self.epoch, self.done = epoch, epoch - 1

    def on_step(self, loss: torch.Tensor) -> None:
        if self.signum is not None and not self.distributed:
            raise self.interrupted(self.signum)

    def on_epoch_end(self, metrics: dict[str, Any]) -> None:
        self.done, self.epoch = int(metrics["epoch"]), None
        if self.distributed:
            flag = torch.tensor([self.signum or 0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.signum = self.signum or int(flag.item()) or None
        if self.signum is not None:
            raise self.interrupted(self.signum)

    def interrupted(self, signum: int) -> Interrupted:
        """The exception for `signum`, with the line saying what is saved (empty on ranks other than the main)."""
        if not self.main:
            return Interrupted(signum, "")
        name = signal.Signals(signum).name
        where = f"in epoch {self.epoch}" if self.epoch is not None else f"after epoch {self.done}"
        if self.claim is None:
            return Interrupted(signum, f"interrupted by {name} {where}: nothing is saved (no run directory)")
        path = self.claim.path
        again = f"mnistlab train --resume {shlex.quote(str(path))}"
        if self.claim.replacing:
            saved = (f"the new run had no complete epoch, so none of it is kept; {path} still holds what it held "
                     "before --overwrite")
        elif self.done == 0:
            saved = f"no epoch is complete; {path} holds the run's settings; start it with: {again}"
        else:
            epochs = "epoch 1" if self.done == 1 else f"epochs 1-{self.done}"
            partial = f" (epoch {self.epoch} is not: it was partial)" if self.epoch is not None else ""
            saved = f"{path} holds {epochs} in checkpoint.pt{partial}; continue with: {again}"
        return Interrupted(signum, f"interrupted by {name} {where}: {saved}")


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
