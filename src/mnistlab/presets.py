"""Named recipes: model + optimizer + its arguments + batch size + epochs + LR schedule + input normalisation.

A `Config` is everything a training run needs; `resolve(preset, **overrides)` returns the preset's Config
with the user's overrides applied, and that resolved Config is what a run directory records.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from mnistlab.errors import ConfigError

MNIST_MEAN_STD = (0.1307, 0.3081)


@dataclass
class Config:
    """A fully resolved training run."""

    preset: str = "notebook"
    model: str = "notebook"
    model_args: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "Adam"
    opt_args: dict[str, Any] = field(default_factory=lambda: {"lr": 1e-3})
    batch_size: int = 32
    test_batch_size: int = 1000
    epochs: int = 5
    schedule: str | None = None  # None | "step" (per epoch) | "onecycle" | "cosine" (per step)
    schedule_args: dict[str, Any] = field(default_factory=dict)
    normalise: tuple[float, float] | None = None  # (mean, std) applied after scaling pixels to [0, 1]
    label_smoothing: float = 0.0
    augment: dict[str, Any] | None = None  # on-device random affine: {"translate": px, "rotate": deg, ...}
    ema: float = 0.0  # weight averaging: decay of a moving average of the weights, evaluated and saved (0 = off)
    double_softmax: bool = False  # the notebook's quirk: softmax before CrossEntropyLoss
    dataset: str = "mnist"
    subset: int | None = None  # train on the first N training images
    val: int = 0  # hold out the last N training images as a validation split
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # "auto" | "bf16" | "fp16" | "off"
    compile: bool = False
    cuda_graphs: bool = False  # torch.compile mode "reduce-overhead": the model's steps replayed as CUDA graphs
    channels_last: bool = False
    tensorboard: bool = True  # event files in the run directory (when the tensorboard package is installed)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if d.get("normalise") is not None:
            d["normalise"] = tuple(d["normalise"])
        return cls(**d)

    @property
    def lr(self) -> float:
        return float(self.opt_args.get("lr", 0.0))


PRESETS: dict[str, Config] = {
    "notebook": Config(
        preset="notebook",
        description="The lab notebook as written: NnDigitsClassifier, Adam lr 1e-3, batch 32, 5 epochs, "
        "pixels in [0,1].",
    ),
    "pytorch-example": Config(
        preset="pytorch-example",
        model="pytorch-example",
        optimizer="Adadelta",
        opt_args={"lr": 1.0},
        batch_size=64,
        epochs=14,
        schedule="step",
        schedule_args={"gamma": 0.7},
        normalise=MNIST_MEAN_STD,
        description="pytorch/examples mnist/main.py: Adadelta lr 1.0, StepLR gamma 0.7, batch 64, 14 epochs.",
    ),
    "fast": Config(
        preset="fast",
        model="fast",
        model_args={"c1": 12, "c2": 24, "hidden": 128, "flatten": "hwc"},
        optimizer="Adam",
        opt_args={"lr": 1.3e-2, "betas": (0.7, 0.9)},
        batch_size=256,
        epochs=1,
        schedule="onecycle",
        schedule_args={"pct_start": 0.25, "cycle_momentum": False},
        normalise=MNIST_MEAN_STD,
        label_smoothing=0.1,
        channels_last=True,
        description="99% fast: a stride-2 5x5 conv (12 ch), a 3x3 conv (24 ch) + max-pool, dense 600-128-10; "
        "Adam lr 1.3e-2 betas (0.7, 0.9) (beta1 fixed: no momentum cycling), one-cycle, label smoothing 0.1, "
        "batch 256, channels_last, 1 epoch.",
    ),
    "best": Config(
        preset="best",
        model="best",
        model_args={"widths": (32, 48, 96), "extra": 1},
        optimizer="SGD",
        opt_args={"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        batch_size=128,
        epochs=8,
        schedule="onecycle",
        schedule_args={"pct_start": 0.2},
        normalise=MNIST_MEAN_STD,
        label_smoothing=0.1,
        augment={"translate": 2.5, "rotate": 10.0, "scale": 0.1},
        channels_last=True,
        description="Highest accuracy in 15 CPU minutes: batch-norm CNN, on-device random affine augmentation, "
        "label smoothing 0.1, SGD nesterov one-cycle, 8 epochs.",
    ),
}


def register_preset(config: Config) -> Config:
    PRESETS[config.preset] = config
    return config


def resolve(preset: str = "notebook", **overrides: Any) -> Config:
    """The preset's Config with `overrides` applied (None values are ignored; opt_args are merged)."""
    try:
        base = PRESETS[preset]
    except KeyError:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}") from None
    cfg = dataclasses.replace(base, model_args=dict(base.model_args), opt_args=dict(base.opt_args),
                              schedule_args=dict(base.schedule_args))
    names = {f.name for f in dataclasses.fields(Config)}
    opt_args = overrides.pop("opt_args", None) or {}
    lr = overrides.pop("lr", None)
    optimizer = overrides.pop("optimizer", None)
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None:
            setattr(cfg, key, value)
    if optimizer is not None:
        cls = optimizer_class(optimizer)
        if cls.__name__ != cfg.optimizer:  # a different optimizer keeps only the preset's lr
            cfg.opt_args = {"lr": cfg.opt_args["lr"]} if "lr" in cfg.opt_args else {}
        cfg.optimizer = cls.__name__
    cfg.opt_args.update(opt_args)
    if lr is not None:
        cfg.opt_args["lr"] = float(lr)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Reject values that cannot work, with a message naming the setting."""
    for key in ("batch_size", "test_batch_size", "epochs"):
        if int(getattr(cfg, key)) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.subset is not None and cfg.subset < 1:
        raise ConfigError(f"subset must be at least 1, got {cfg.subset}")
    if cfg.val < 0:
        raise ConfigError(f"val must be 0 or more, got {cfg.val}")
    if not 0.0 <= float(cfg.ema) < 1.0:
        raise ConfigError(f"ema must be a decay in [0, 1), got {cfg.ema}")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"amp must be auto, bf16, fp16 or off, got {cfg.amp!r}")
    if cfg.schedule not in (None, "step", "onecycle", "cosine"):
        raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose from step, onecycle, cosine")
    if cfg.lr <= 0 and "lr" in cfg.opt_args:
        raise ConfigError(f"learning rate must be positive, got {cfg.lr}")
    optimizer_class(cfg.optimizer)


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """Any torch.optim optimizer by name, case-insensitively ("adam", "SGD", "adamw", ...)."""
    classes = {
        n.lower(): c
        for n, c in vars(torch.optim).items()
        if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer
    }
    try:
        return classes[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown optimizer {name!r}; choose from {', '.join(sorted(classes))}") from None


def parse_value(text: str) -> Any:
    """A command-line value: int, float, bool, None, a tuple "0.9,0.999", or the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if "," in text:
        return tuple(parse_value(t) for t in text.split(",") if t.strip())
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_opt(items: list[str] | None) -> dict[str, Any]:
    """`--opt KEY=VALUE` items -> {KEY: value}."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--opt expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out
