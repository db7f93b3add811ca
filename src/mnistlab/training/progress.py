"""Progress reporting for the engine: a rich progress bar on a terminal, a tqdm bar in a Jupyter notebook (it
redraws in place in a cell's output, with or without widgets), plain lines otherwise."""

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


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (ipykernel), where stdout is no terminal but a cell's output is."""
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class Progress(Callback):
    """Engine callback: a bar per epoch on a terminal or in a notebook, one line per epoch always."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self._bar = None
        self._task = None
        self._tqdm = None
        if not sys.stdout.isatty() and in_jupyter():
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._tqdm = tqdm
        elif sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
            )

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        if self._tqdm is not None:
            self._bar = self._tqdm(total=steps, desc=f"epoch {epoch}/{self.epochs}", leave=False, mininterval=0.5)
        elif self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task("train", total=steps, epoch=epoch, epochs=self.epochs)

    def on_step(self, loss) -> None:
        if self._tqdm is not None:
            self._bar.update()
        elif self._bar is not None:
            self._bar.advance(self._task)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        if self._tqdm is not None:
            self._bar.close()
        elif self._bar is not None:
            self._bar.remove_task(self._task)
            self._bar.stop()
        print(format_epoch(row, self.epochs), flush=True)
