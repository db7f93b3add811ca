"""Progress reporting for the engine: a rich progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from typing import Any

from mnistlab.training.engine import Callback


def format_epoch(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"train_loss {row['train_loss']:.4f}",
             f"train_acc {row['train_acc']:.2f}%"]
    for split in ("val", "test"):
        if f"{split}_acc" in row:
            parts += [f"{split}_loss {row[f'{split}_loss']:.4f}", f"{split}_acc {row[f'{split}_acc']:.2f}%"]
    parts += [f"{row['seconds']:.1f}s", f"{row['images_per_s']:,.0f} img/s"]
    return "  ".join(parts)


class Progress(Callback):
    """Engine callback: a bar per epoch when stdout is a terminal, one line per epoch always."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self._bar = None
        self._task = None
        if sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
            )

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task("train", total=steps, epoch=epoch, epochs=self.epochs)

    def on_step(self, loss) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.remove_task(self._task)
            self._bar.stop()
        print(format_epoch(row, self.epochs), flush=True)
