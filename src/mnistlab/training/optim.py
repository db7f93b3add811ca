"""The optimizer (any torch.optim class, by name, fused where it can be) and the learning-rate schedule."""

from __future__ import annotations

import torch

from mnistlab.errors import ConfigError
from mnistlab.presets import Config, optimizer_class


def make_optimizer(cfg: Config, params, device: torch.device) -> torch.optim.Optimizer:
    """`cfg.optimizer` (any torch.optim class) with `cfg.opt_args`, using the fused kernel when it has one."""
    cls = optimizer_class(cfg.optimizer)
    args = dict(cfg.opt_args)
    params = list(params)
    if "fused" not in args and "foreach" not in args:
        try:
            return cls(params, **args, fused=True)
        except (TypeError, RuntimeError, ValueError):
            pass  # no fused kernel for this optimizer or device
    try:
        return cls(params, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad arguments for optimizer {cls.__name__}: {e}") from None


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """(scheduler or None, True if it steps every batch else every epoch)."""
    args = dict(cfg.schedule_args)
    if cfg.schedule is None:
        return None, False
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.pop("step_size", 1), **args), False
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        args.setdefault("max_lr", cfg.lr)
        # OneCycleLR divides by (warm-up steps - 1): keep at least 2 warm-up steps on very short runs.
        args["pct_start"] = min(max(args.get("pct_start", 0.3), 2.0 / total), 0.9)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, total_steps=total, **args), True
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, **args), True
    raise ConfigError(f"unknown schedule {cfg.schedule!r}")
