"""Engine callback for tuning: report the validation accuracy after every epoch, stop a trial that is pruned."""

from __future__ import annotations

from typing import Any, Protocol

from mnistlab.training.engine import Callback, EpochMetrics


class Reportable(Protocol):
    """What the callback needs of a trial (optuna.Trial has it)."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


class Pruning(Callback):
    """After every epoch, report `metric` to `trial` with the epoch as the step and ask whether to prune.

    A pruned trial stops after that epoch (`stop_training`), its metrics and checkpoint written as usual;
    `pruned_at` is then the epoch, and the caller records the trial as pruned. The last epoch (`epochs`)
    is only reported: pruning a finished trial would save nothing and lose its result.
    """

    def __init__(self, trial: Reportable, epochs: int, metric: str = "val_acc") -> None:
        self.trial, self.epochs, self.metric = trial, epochs, metric
        self.pruned_at: int | None = None

    def report(self, rows: list[dict[str, Any]]) -> None:
        """Report epochs trained before (a resumed run's history), without pruning."""
        for row in rows:
            self.trial.report(float(row[self.metric]), int(row["epoch"]))

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        epoch = int(metrics["epoch"])
        self.trial.report(float(metrics[self.metric]), epoch)  # type: ignore[literal-required]
        if epoch < self.epochs and self.trial.should_prune():
            self.pruned_at = epoch
            self.stop_training = True
