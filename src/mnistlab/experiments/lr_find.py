"""The learning-rate range test: from the Config's seeded initial weights, train with its model and optimizer
while the learning rate grows exponentially from `start_lr` to `end_lr`, one rate per step, and suggest a rate
from the smoothed loss.

    result = lr_find("notebook")     # runs/lr-find-notebook-<timestamp>/lr_find.json, lr_find.png
    result.suggestion                # the rate to train with; result.method says how it was chosen

The loss of each step is smoothed by an exponential moving average (bias-corrected, so the first steps count);
the ramp ends after `steps` steps, or as soon as the smoothed loss exceeds `diverge` times its minimum or a
loss is not finite. Two rates are read off the smoothed curve, and the Config's schedule picks one:

    steepest     where the smoothed loss falls fastest per decade of learning rate: the suggestion for a
                 constant (or step-decayed) rate, which the whole run trains at
    minimum/10   the rate at the smoothed loss's minimum, divided by 10: the suggestion for a one-cycle or
                 cosine schedule, whose rate is a peak reached briefly and then annealed

Measured, one epoch each, 10,000 validation images: the notebook preset (constant Adam rate) reached 97.96% at
its steepest point (7e-4) and 97.51% at minimum/10 (5.7e-3); the fast preset (one-cycle) 97.19% at its
steepest point (1.2e-3) and 98.63% at minimum/10 (3.9e-3).
Only the training split is used (never the validation or test images); the model and optimizer are thrown
away afterwards. The batches are the Config's seeded shuffle, so a seed gives the same curve every time.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnistlab.errors import ConfigError
from mnistlab.experiments.trial import make_spec
from mnistlab.files.runs import new_run_dir, write_json
from mnistlab.presets import Config
from mnistlab.training.device import amp_dtype, pick_device
from mnistlab.training.distributed import DistEnv
from mnistlab.training.engine import Callback, FitPlan, fit
from mnistlab.training.optim import make_optimizer
from mnistlab.training.run import Prepared, build, load_data, step_options, wrap

MIN_DIVISOR = 10.0  # minimum/10: the rate at the smoothed loss's minimum / 10
PEAK_SCHEDULES = ("onecycle", "cosine")  # schedules whose configured rate is a peak: minimum/10


@dataclass
class LrFindResult:
    """The range test's curve and the rate it suggests."""

    run_dir: Path | None
    config: Config
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    rule: str  # "steepest" or "minimum/10"
    min_loss_lr: float  # the rate at the smoothed loss's minimum
    steepest_lr: float  # the rate of the steepest fall of the smoothed loss
    stopped: str  # why the ramp ended
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        """How the suggestion was chosen, in words."""
        schedule = self.config.schedule or "constant"
        if self.rule == "steepest":
            return (f"the steepest fall of the smoothed loss (a {schedule} learning rate trains at this rate "
                    f"throughout); the smoothed loss is lowest at {self.min_loss_lr:.3g}")
        return (f"the smoothed loss's minimum ({self.min_loss_lr:.3g}) divided by {MIN_DIVISOR:g} (the {schedule} "
                f"schedule's peak rate); the steepest fall is at {self.steepest_lr:.3g}")

    def as_dict(self) -> dict[str, Any]:
        return {"suggestion": self.suggestion, "rule": self.rule, "method": self.method,
                "min_loss_lr": self.min_loss_lr,
                "steepest_lr": self.steepest_lr, "stopped": self.stopped, **self.settings,
                "config": self.config.to_dict(), "lrs": self.lrs, "losses": self.losses, "smoothed": self.smoothed}


class _RampOver(Exception):
    """Raised by the reader to end the range test inside the engine's epoch."""


class _RampReader(Callback):
    """Engine callback of the range test: reads every step's loss (one host sync per step), smooths it, and
    ends the ramp after `steps` steps, at a loss that is not finite, or once the smoothed loss exceeds
    `diverge` times its minimum."""

    def __init__(self, start_lr: float, growth: float, steps: int, smoothing: float, diverge: float) -> None:
        self.start_lr, self.growth, self.steps = start_lr, growth, steps
        self.smoothing, self.diverge = smoothing, diverge
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.average, self.i = 0.0, 0
        self.stopped = f"reached the end of the ramp ({steps} steps)"

    def on_step(self, loss: torch.Tensor) -> None:
        i, lr = self.i, self.start_lr * self.growth**self.i
        self.i += 1
        value = loss.item()
        if not math.isfinite(value):
            self.stopped = f"the loss became {value} at lr {lr:.3g} (step {i + 1})"
            raise _RampOver
        self.average = self.smoothing * self.average + (1 - self.smoothing) * value
        self.lrs.append(lr)
        self.losses.append(value)
        self.smoothed.append(self.average / (1 - self.smoothing ** (i + 1)))
        if self.smoothed[-1] > self.diverge * min(self.smoothed):
            self.stopped = f"the smoothed loss exceeded {self.diverge:g}x its minimum at lr {lr:.3g} (step {i + 1})"
            raise _RampOver
        if self.i == self.steps:
            raise _RampOver


def suggest(lrs: list[float], smoothed: list[float], schedule: str | None = None) -> tuple[float, str, float, float]:
    """(suggestion, rule, rate at the minimum, rate of the steepest descent) of a smoothed range-test curve,
    the rule picked by `schedule`; the suggestion is rounded to two significant digits (the test cannot
    place it more finely)."""
    low = min(range(len(smoothed)), key=smoothed.__getitem__)
    logs = [math.log10(lr) for lr in lrs]
    slopes = [(smoothed[i + 1] - smoothed[i]) / (logs[i + 1] - logs[i]) for i in range(low)]
    steep = lrs[min(range(len(slopes)), key=slopes.__getitem__) if slopes else 0]
    rule, rate = ("minimum/10", lrs[low] / MIN_DIVISOR) if schedule in PEAK_SCHEDULES else ("steepest", steep)
    return float(f"{rate:.2g}"), rule, lrs[low], steep


@dataclass(frozen=True)
class LrFindSpec:
    """One range test of `base`: `steps` rates from `start_lr` to `end_lr`, the loss smoothed by `smoothing`,
    ended early when the smoothed loss exceeds `diverge` times its minimum; with `write`, lr_find.json and
    lr_find.png in `out` (default runs/lr-find-<preset>-<timestamp>)."""

    base: Config
    start_lr: float = 1e-7
    end_lr: float = 10.0
    steps: int = 300
    smoothing: float = 0.98
    diverge: float = 4.0
    out: str | Path | None = None
    data_dir: str | Path | None = None
    write: bool = True


def lr_find(preset: str = "notebook", *, config: Config | None = None, **kwargs: Any) -> LrFindResult:
    """Run the range test for `preset` (with overrides) or `config`. Keywords naming an `LrFindSpec` field
    (start_lr, end_lr, steps, smoothing, diverge, out, data_dir, write) set it; the others override the
    preset."""
    return run_lr_find(make_spec(LrFindSpec, "lr-find", preset, config, kwargs))


def run_lr_find(spec: LrFindSpec) -> LrFindResult:
    """The range test of `spec`."""
    cfg, start_lr, end_lr, steps = spec.base, spec.start_lr, spec.end_lr, spec.steps
    smoothing, diverge, out, data_dir, write = spec.smoothing, spec.diverge, spec.out, spec.data_dir, spec.write
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"the range test needs 0 < start_lr < end_lr, got {start_lr:g} and {end_lr:g}")
    if steps < 2:
        raise ConfigError(f"the range test needs at least 2 steps, got {steps}")
    device = pick_device(cfg.device)
    data = load_data(cfg, device, data_dir)
    model = build(cfg, device)  # seeds torch: the same initial weights and augmentation draws for a seed
    optimizer = make_optimizer(cfg, model.parameters(), device)
    for group in optimizer.param_groups:
        group["lr"] = start_lr
    growth = (end_lr / start_lr) ** (1.0 / (steps - 1))
    ramp = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: growth**i)  # step i at start_lr * growth**i
    prepared = Prepared(device, data, model, optimizer, ramp, True, amp_dtype(cfg.amp, device))
    net = wrap(prepared, cfg, DistEnv())  # what train() trains: torch.compile
    reader = _RampReader(start_lr, growth, steps, smoothing, diverge)
    try:  # the engine's own step; the reader ends the ramp from inside the epoch
        fit(net, optimizer, data.train, {}, FitPlan(epochs=sys.maxsize, scheduler=ramp, schedule_per_step=True,
                                                    step=step_options(cfg, prepared.amp), callbacks=[reader]))
    except _RampOver:
        pass
    lrs, losses, smoothed, stopped = reader.lrs, reader.losses, reader.smoothed, reader.stopped
    train = data.train
    if len(lrs) < 2:
        raise ConfigError(f"the range test diverged immediately ({stopped}); lower --start-lr")
    suggestion, rule, low, steep = suggest(lrs, smoothed, cfg.schedule)
    settings = {"start_lr": start_lr, "end_lr": end_lr, "steps": steps, "steps_run": len(lrs),
                "smoothing": smoothing, "diverge": diverge, "batch_size": cfg.batch_size,
                "training_images": train.num_samples}
    result = LrFindResult(None, cfg, lrs, losses, smoothed, suggestion, rule, low, steep, stopped, settings)
    if write:
        result.run_dir = new_run_dir(f"lr-find-{cfg.preset}", out)
        write_json(result.run_dir / "lr_find.json", result.as_dict())
        from mnistlab.plots import lr_find_plot

        lr_find_plot(lrs, losses, smoothed, {"suggestion": suggestion, "minimum": low, "steepest": steep},
                     result.run_dir / "lr_find.png", title=f"learning-rate range test: {cfg.preset}")
    return result
