"""The training engine: the one train/evaluate loop that every command (train, compare, sweep, lab, bench,
torchrun) goes through.

Speed comes from doing less per step: batches come from the on-device `DeviceLoader`, loss and accuracy are
summed on the device and read once per epoch (no `.item()` in the step loop), optimizers use their fused or
foreach kernels, and matmuls/convolutions run under autocast where the hardware computes it natively.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mnistlab.data.loader import DeviceLoader
from mnistlab.training.device import autocast, cpu_training_mode


class EpochMetrics(TypedDict, total=False):
    """One row of a run's metrics (metrics.csv / metrics.jsonl), written after every epoch.

    train_* come from the training forward passes of the epoch (under autocast when it is on); val_* and
    test_* are the model evaluated in fp32 after the epoch, exactly what `mnistlab evaluate` reports.
    """

    epoch: int
    train_loss: float
    train_acc: float  # percent
    val_loss: float
    val_acc: float
    val_n: int  # images evaluated, over all ranks
    test_loss: float
    test_acc: float
    test_n: int
    seconds: float  # training wall time of the epoch
    eval_seconds: float
    images_per_s: float
    lr: float  # the learning rate at the start of the epoch


@dataclass(frozen=True)
class StepOptions:
    """How one training step runs: autocast dtype, loss variant, on-device augmentation, CUDA graphs."""

    amp: torch.dtype | None = None
    label_smoothing: float = 0.0
    double_softmax: bool = False  # the notebook's softmax before CrossEntropyLoss
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    cuda_graphs: bool = False  # the model was compiled with mode "reduce-overhead"


# ---------------------------------------------------------------- the loop
class Callback:
    """What fit() calls around the loop; subclasses override the hooks they need (the rest do nothing).

    Per-step needs of a trainer go here, not into a copy of the step: `on_step` gets the step's loss (reading
    it is a host sync, so only a callback that needs it should), a per-step learning-rate schedule is fit's
    `scheduler` with `schedule_per_step`, and an exception raised in a hook ends the run where it is (the
    range test's divergence). A callback that sets `stop_training` in on_epoch_end ends the run after that
    epoch.
    """

    stop_training: bool = False

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, train: DeviceLoader) -> None:
        """Before the first epoch of this fit: what is trained (`model` as the loop calls it), how, on what."""

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        pass

    def on_step(self, loss: torch.Tensor) -> None:
        """After every optimizer step; `loss` is the step's mean loss, on the device."""

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        pass


def loss_fn(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0, double_softmax: bool = False,
            reduction: str = "sum"):
    """Cross-entropy (summed unless `reduction="mean"`); `double_softmax` reproduces the notebook (softmax,
    then CrossEntropyLoss)."""
    if double_softmax:
        logits = logits.float().softmax(dim=1)
    return F.cross_entropy(logits, y, reduction=reduction, label_smoothing=label_smoothing)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def probabilities(out: torch.Tensor) -> torch.Tensor:
    """Class probabilities from a model's fp32 outputs: the softmax of logits; outputs that already are
    probabilities (the notebook's own forward(), an ensemble) pass through."""
    if out.numel() and out.min() >= 0 and torch.allclose(out.sum(1), torch.ones(len(out), device=out.device),
                                                         atol=1e-4):
        return out
    return out.softmax(1)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, double_softmax: bool = False,
             predictions: bool = False) -> dict[str, Any]:
    """The one evaluation: `model` in eval mode and fp32 over every sample of `loader`, summed across ranks
    under DDP: "loss", "acc" (percent) and "n". Whatever precision trained it, this is the number its saved
    weights give. With `predictions` (a non-shuffled, single-rank loader, counted on this rank alone: no
    collective) also "probs": the (N, classes) float32 class probabilities (`probabilities`) on the CPU, in
    the loader's order.

    On the CPU it runs in the CPU training mode, as the evaluation after each epoch does: the same
    floating-point mode, so a saved model scores as it did in training. (Its speed there depends on the
    process's allocator setting: `process.prepare_cpu_process`.)"""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=loader.device, dtype=torch.float64)  # loss, correct, count
    outputs = []
    with cpu_training_mode(loader.device):
        for x, y in loader.epoch(0):
            logits = model(x).float()
            sums[0] += loss_fn(logits, y, double_softmax=double_softmax)
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += len(y)
            if predictions:  # kept on the device: one transfer and one softmax for the split, no per-batch sync
                outputs.append(logits)
    # Predicting, one rank scores a whole split (TensorBoard's summary runs on the main rank only).
    loss, correct, n = (sums if predictions else _all_reduce(sums)).tolist()
    model.train(was_training)
    out: dict[str, Any] = {"loss": loss / max(n, 1), "acc": 100.0 * correct / max(n, 1), "n": int(n)}
    if predictions:
        out["probs"] = probabilities(torch.cat(outputs)).cpu() if outputs else torch.zeros(0, 10)
    return out


# What a model gets wrong, from its predictions on a split (`evaluate(..., predictions=True)`):
# `evaluate_model` (a saved model) and the TensorBoard summaries (the model just trained) share them.
def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """(classes, classes) int64 counts: row = true class, column = predicted class."""
    return torch.bincount(labels * classes + preds, minlength=classes * classes).reshape(classes, classes)


def confident_mistakes(labels: torch.Tensor, preds: torch.Tensor, confidence: torch.Tensor,
                       k: int | None = None) -> torch.Tensor:
    """Indices of the wrong predictions, most confident first (the first `k` of them when given)."""
    wrong = (preds != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True, stable=True)]
    return order if k is None else order[:k]


@dataclass
class FitPlan:
    """How `fit` trains, besides what (model, optimizer) and on what (the loaders): epochs `start_epoch+1 ..
    epochs`; the learning-rate `scheduler`, stepped after every batch with `schedule_per_step`, else after
    every epoch; how each step runs (`step`); the `callbacks`, in the order they are called; the `history` of
    the epochs before `start_epoch` when resuming; and `eval_model`, called after each epoch for the module to
    evaluate instead of the model (a weight average that a callback updates)."""

    epochs: int
    start_epoch: int = 0
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    schedule_per_step: bool = False
    step: StepOptions = field(default_factory=StepOptions)
    callbacks: Sequence[Callback] = ()
    history: list[EpochMetrics] = field(default_factory=list)
    eval_model: Callable[[], nn.Module] | None = None


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train: DeviceLoader, evals: dict[str, DeviceLoader],
        plan: FitPlan) -> list[EpochMetrics]:
    """Train `model` with `optimizer` on `train` as `plan` says, evaluating on each of `evals` after every
    epoch. Returns the history, one EpochMetrics per epoch, the plan's earlier epochs first."""
    history = list(plan.history)
    scheduler, step, callbacks = plan.scheduler, plan.step, plan.callbacks
    with cpu_training_mode(train.device):
        model.train()
        for cb in callbacks:
            cb.on_train_start(model, optimizer, train)
        for epoch in range(plan.start_epoch + 1, plan.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            trained = train_epoch(model, optimizer, train, epoch, scheduler if plan.schedule_per_step else None,
                                  step, callbacks)
            if scheduler is not None and not plan.schedule_per_step:
                scheduler.step()
            row = EpochMetrics(epoch=epoch, train_loss=trained["train_loss"], train_acc=trained["train_acc"])
            t0 = time.perf_counter()
            judged = model if plan.eval_model is None else plan.eval_model()
            for name, loader in evals.items():
                m = evaluate(judged, loader, step.double_softmax)
                row[f"{name}_loss"], row[f"{name}_acc"], row[f"{name}_n"] = m["loss"], m["acc"], m["n"]
            row.update(seconds=trained["seconds"], eval_seconds=time.perf_counter() - t0,
                       images_per_s=trained["images_per_s"], lr=lr)
            history.append(row)
            for cb in callbacks:
                cb.on_epoch_end(row)
            if any(getattr(cb, "stop_training", False) for cb in callbacks):
                break
    return history


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: DeviceLoader,
    epoch: int,
    step_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    step: StepOptions,
    callbacks: Sequence[Callback],
) -> EpochMetrics:
    """One pass over this rank's shard of the training set; `step_scheduler` is stepped after every batch.

    Returns epoch, train_loss, train_acc (over all ranks), seconds and images_per_s.
    """
    device = train.device
    scale = float(train.world_size)  # per-rank sum * world / global batch = the global mean under DDP
    steps = train.shard(epoch)
    for cb in callbacks:
        cb.on_epoch_start(epoch, len(steps))
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    _sync(device)
    t0 = time.perf_counter()
    for idx, global_n in steps:
        if step.cuda_graphs:  # the last step's outputs are dead: a new iteration of the recorded graphs
            torch.compiler.cudagraph_mark_step_begin()
        x, y = train.batch(idx)
        if step.augment is not None:
            x = step.augment(x)
        with autocast(device, step.amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y, step.label_smoothing, step.double_softmax, reduction="mean")
        optimizer.zero_grad(set_to_none=True)
        factor = scale * len(y) / global_n  # 1 except for uneven last batches under DDP
        (loss * factor if factor != 1.0 else loss).backward()
        optimizer.step()
        if step_scheduler is not None:
            step_scheduler.step()
        with torch.no_grad():  # metrics stay on the device: no host sync in the step loop
            loss_sum.add_(loss.detach(), alpha=len(y))
            correct.add_((logits.argmax(1) == y).sum())
        n += len(y)
        for cb in callbacks:
            cb.on_step(loss)
    sums = torch.stack([loss_sum, correct.double(), torch.tensor(float(n), device=device, dtype=torch.float64)])
    loss_sum, correct, n = _all_reduce(sums).tolist()  # the epoch's one host sync
    seconds = time.perf_counter() - t0
    return EpochMetrics(epoch=epoch, train_loss=loss_sum / n, train_acc=100.0 * correct / n, seconds=seconds,
                        images_per_s=n / seconds)
