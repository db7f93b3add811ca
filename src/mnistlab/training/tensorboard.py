"""TensorBoard event files in the run directory, written through `torch.utils.tensorboard.SummaryWriter`.

    Scalars  every epoch, at global step = epoch: loss/{train,val,test}, accuracy/{train,val,test},
             optim/lr, speed/images_per_s, speed/epoch_seconds (the metrics.csv row, same numbers)
    HParams  at the end: the run's settings and its final metrics (hparam/test_acc, ...), in the run's own
             directory, so `tensorboard --logdir runs` shows one row per run
    Images   at the end, from the trained weights' fp32 predictions on the whole test split: the confusion
             matrix, the most confident mistakes and a grid of the first test images with predictions

Every process that trains a run directory opens its writer with purge_step=1 and first logs the epochs it
resumes from (the checkpoint's history): TensorBoard then shows each epoch once, as the checkpoint has it,
whatever an interrupted process logged past its last checkpoint and whether or not the directory's earlier
event files exist (a sweep resumes copies of runs, without them).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.data import get_spec
from mnistlab.data.loader import DeviceLoader
from mnistlab.plots import confusion_figure, figure_rgb, grid_figure, mistakes_figure
from mnistlab.presets import Config
from mnistlab.training.engine import Callback, EpochMetrics, confident_mistakes, confusion_matrix, evaluate

MISSING = "tensorboard is not installed: no event files (pip install 'mnistlab[tensorboard]')"
# metrics.csv column -> TensorBoard tag; the tags sharing a prefix are drawn side by side under Scalars
SCALARS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "test_loss": "loss/test",
    "train_acc": "accuracy/train", "val_acc": "accuracy/val", "test_acc": "accuracy/test",
    "lr": "optim/lr", "images_per_s": "speed/images_per_s", "seconds": "speed/epoch_seconds",
}
FINAL = ("test_acc", "test_loss", "val_acc", "val_loss", "train_acc", "train_loss")  # hparam/<name> metrics
MISTAKES = 24  # images in the most-confident-mistakes grid
SAMPLES = 30  # the first test images, shown with their predictions

_told_missing = False


def open_logger(run_dir: Path | Callable[[], Path], cfg: Config, precision: str,
                history: list[EpochMetrics] | None = None) -> TensorBoardLogger | None:
    """The run's TensorBoard callback, its event file starting with `history` (the epochs a resumed run has
    done); None when turned off or when tensorboard is not installed (said once per process on stderr;
    training goes on without it). The event file is made when the first epoch is logged, in `run_dir` (or the
    directory `run_dir()` names then: a run replacing another is in its place only from its first
    checkpoint, and TensorBoard's writer reopens its file by name)."""
    global _told_missing
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing
        if not _told_missing:
            print(MISSING, file=sys.stderr, flush=True)
            _told_missing = True
        return None
    where = run_dir if callable(run_dir) else (lambda: run_dir)
    return TensorBoardLogger(lambda: SummaryWriter(str(where()), purge_step=1), cfg, precision, history)


def hparams_of(cfg: Config, precision: str) -> dict[str, Any]:
    """The run's settings as TensorBoard hparams: numbers and strings (nested values as JSON, None left out)."""
    out: dict[str, Any] = {}
    for key, value in cfg.to_dict().items():
        if key in ("description", "tensorboard", "opt_args") or value is None:
            continue
        out[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    for key, value in cfg.opt_args.items():  # lr on its own, the optimizer's other arguments as opt.<name>
        name = "lr" if key == "lr" else f"opt.{key}"
        out[name] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    out["precision"] = precision
    return out


class TensorBoardLogger(Callback):
    """Engine callback: one point per scalar per epoch; `summarise` adds the end-of-run summaries."""

    def __init__(self, open_writer: Callable[[], Any], cfg: Config, precision: str,
                 history: list[EpochMetrics] | None = None) -> None:
        self.open_writer, self.cfg, self.precision = open_writer, cfg, precision
        self.earlier = list(history or [])  # logged first, when the writer opens
        self.epochs_logged = 0
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        """The SummaryWriter, opened on first use with the earlier epochs logged."""
        if self._writer is None:
            self._writer = self.open_writer()
            for row in self.earlier:
                self.log_epoch(row)
        return self._writer

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        self.log_epoch(metrics)
        self.writer.flush()  # written after the epoch's checkpoint, and visible to a running TensorBoard
        self.epochs_logged += 1

    def log_epoch(self, metrics: EpochMetrics) -> None:
        step = int(metrics["epoch"])
        for column, tag in SCALARS.items():
            if column in metrics:
                self.writer.add_scalar(tag, float(metrics[column]), step)

    def summarise(self, model: nn.Module, history: list[EpochMetrics], test: DeviceLoader) -> None:
        """HParams with the final metrics, and the test split's confusion matrix, most confident mistakes and
        sample grid from `model`'s fp32 predictions (the weights saved as model.safetensors). Nothing is added
        when this process trained no epoch (the run's end was summarised before). Closes the writer."""
        try:
            if self.epochs_logged and history:
                step = int(history[-1]["epoch"])
                self._hparams(history, step)
                self._images(model, test, step)
        finally:
            if self._writer is not None:
                self._writer.close()

    def _hparams(self, history: list[EpochMetrics], step: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        last = history[-1]
        metrics = {f"hparam/{k}": float(last[k]) for k in FINAL if k in last}
        if "val_acc" in last:
            metrics["hparam/best_val_acc"] = max(float(r["val_acc"]) for r in history)
        metrics["hparam/train_seconds"] = sum(float(r.get("seconds", 0.0)) for r in history)
        for summary in hparams(hparams_of(self.cfg, self.precision), metrics):
            self.writer.file_writer.add_summary(summary)  # the run's own directory, not a sub-folder
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def _images(self, model: nn.Module, test: DeviceLoader, step: int) -> None:
        whole = test.unsharded()
        probs = evaluate(model, whole, predictions=True)["probs"]
        confidence, preds = probs.max(1)
        labels, images = whole.labels.cpu(), whole.images.cpu()
        names = get_spec(self.cfg.dataset).classes
        cm = confusion_matrix(labels, preds, len(names))
        accuracy = 100.0 * float(cm.diag().sum()) / max(len(labels), 1)
        title = f"{self.cfg.model} on {self.cfg.dataset} test, epoch {step}: {accuracy:.2f}% of {len(labels):,}"
        self._figure("evaluation/confusion_matrix", confusion_figure(cm, names, title), step)
        order = confident_mistakes(labels, preds, confidence, MISTAKES)
        if len(order):
            self._figure("evaluation/most_confident_mistakes",
                         mistakes_figure(images[order], labels[order], preds[order], confidence[order]), step)
        n = min(SAMPLES, len(labels))
        self._figure("evaluation/test_samples", grid_figure(
            images[:n], labels[:n], preds[:n], confidence[:n], cols=10,
            title=f"test images 0-{n - 1}: prediction (confidence) and true class", class_names=names), step)
        self.writer.flush()

    def _figure(self, tag: str, figure: Any, step: int) -> None:
        self.writer.add_image(tag, torch.from_numpy(figure_rgb(figure)), step, dataformats="HWC")
