"""Named recipes: model + optimizer + its arguments + batch size + epochs + LR schedule + input normalisation.

A `Config` is everything a training run needs; `resolve(preset, **overrides)` returns the preset's Config
with the user's overrides applied, and that resolved Config is what a run directory records.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnistlab.errors import ConfigError

MNIST_MEAN_STD = (0.1307, 0.3081)
DEFAULT_VAL = 10_000  # validation images held out where an experiment chooses on validation and none is named
# config.json keys that were renamed: the old name -> the Config field that holds it now (check_settings).
RENAMED: dict[str, str] = {}


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
    test_subset: int | None = None  # score on the first N test images (None: all of them)
    val: int = 0  # hold out the last N training images as a validation split
    early_stop: int | None = None  # stop when validation accuracy has not improved for this many epochs
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


def resolve(preset: str = "notebook", *, base: Config | None = None, **overrides: Any) -> Config:
    """The preset's Config (or `base`, e.g. from `load_config`) with `overrides` applied (None values are
    ignored; opt_args are merged)."""
    if base is None:
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
        cfg.opt_args = optimizer_args(cfg, optimizer)
        cfg.optimizer = optimizer_class(optimizer).__name__
    cfg.opt_args.update(opt_args)
    if lr is not None:
        cfg.opt_args["lr"] = float(lr)
    validate(cfg)
    return cfg


def optimizer_args(cfg: Config, optimizer: str) -> dict[str, Any]:
    """The arguments `cfg` gives `optimizer`: its own for its own optimizer; for another, only its learning
    rate (momentum, betas and the like belong to the optimizer they were chosen for)."""
    if optimizer_class(optimizer).__name__ == cfg.optimizer:
        return dict(cfg.opt_args)
    return {"lr": cfg.opt_args["lr"]} if "lr" in cfg.opt_args else {}


def validate(cfg: Config) -> None:
    """Reject values that cannot work, with a message naming the setting."""
    for key in ("batch_size", "test_batch_size", "epochs"):
        if int(getattr(cfg, key)) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    for key in ("subset", "test_subset"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.val < 0:
        raise ConfigError(f"val must be 0 or more, got {cfg.val}")
    if cfg.subset is not None and cfg.val >= cfg.subset:
        raise ConfigError(f"--val {cfg.val} leaves none of the {cfg.subset} --subset images to train on")
    if cfg.early_stop is not None:
        if int(cfg.early_stop) < 1:
            raise ConfigError(f"early_stop (patience in epochs) must be at least 1, got {cfg.early_stop}")
        if cfg.val < 1:
            raise ConfigError("--early-stop watches validation accuracy: hold out a validation split with --val N")
    if not 0.0 <= float(cfg.ema) < 1.0:
        raise ConfigError(f"ema must be a decay in [0, 1), got {cfg.ema}")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"amp must be auto, bf16, fp16 or off, got {cfg.amp!r}")
    if cfg.schedule not in (None, "step", "onecycle", "cosine"):
        raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose from step, onecycle, cosine")
    if cfg.lr <= 0 and "lr" in cfg.opt_args:
        raise ConfigError(f"learning rate must be positive, got {cfg.lr}")
    optimizer_class(cfg.optimizer)


def load_config(path: str | Path) -> Config:
    """A Config from a JSON file (a run directory's config.json) or a TOML file (.toml) of Config settings.

    A file that gives every setting (config.json) is that Config; a partial one is applied to its `preset`
    ("notebook" when it names none) as `resolve` applies overrides (opt_args merged, a new optimizer keeping
    only the preset's lr). Unknown settings, values of the wrong type and unreadable files raise ConfigError.
    """
    path = Path(path)
    data = read_settings(path, f"--config {path}")
    if set(typing.get_type_hints(Config)) <= set(data):
        return stored_config(data, f"--config {path}")[0]
    preset = data.pop("preset", "notebook")
    if preset not in PRESETS:
        raise ConfigError(f"--config {path}: unknown preset {preset!r}; a file naming no built-in preset must "
                          "give every setting")
    return resolve(preset, **data)


def read_run_config(run_dir: str | Path) -> tuple[Config, list[str]]:
    """The Config a run directory recorded in its config.json, and the settings it lacks: the one reader of a
    run's config (resume, sweep, compare and tune's reuse, the run writer's checks).

    Read and checked as `read_settings` does, then validated as a preset is (`validate`). A setting the file
    lacks was added to mnistlab after the run was written; it takes Config's default, which keeps the old
    behaviour, and is listed in the second value. A missing or unreadable file is a ConfigError naming it.
    """
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir}: not found (a run directory holds config.json)")
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no config.json (not a run directory?)")
    return stored_config(read_settings(path, str(path)), str(path))


def stored_config(data: dict[str, Any], where: str) -> tuple[Config, list[str]]:
    """A Config from stored settings (a config.json's, a tune study's best): checked (`check_settings`),
    settings left out at Config's defaults (listed in the second value), validated."""
    data = check_settings(data, where)
    filled = [f.name for f in dataclasses.fields(Config) if f.name not in data]
    cfg = Config(**data)
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg, filled


def read_settings(path: Path, where: str) -> dict[str, Any]:
    """A JSON or TOML (.toml) file of Config settings, parsed and checked (`check_settings`); an unreadable
    or malformed file is a ConfigError naming `where`."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{where}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot read it ({e.strerror if isinstance(e, OSError) else e})") from None
    toml = path.suffix.lower() == ".toml"
    try:
        data = toml_parser().loads(text) if toml else json.loads(text)
    except ValueError as e:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        raise ConfigError(f"{where}: not valid {'TOML' if toml else 'JSON'} ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of Config settings, got {type(data).__name__}")
    return check_settings(data, where)


def check_settings(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Stored or written settings (a config.json, a TOML file) checked as Config fields.

    Renamed keys become their new names (`RENAMED`); an unknown key is a ConfigError listing the known ones,
    a value that cannot be its field's type one naming the type. Lists stand for tuples (`normalise`)."""
    hints = typing.get_type_hints(Config)
    data = {RENAMED.get(k, k): v for k, v in data.items()}
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; the settings are "
                          f"{', '.join(hints)}")
    for key, value in data.items():
        if not fits(value, hints[key]):
            expected = getattr(hints[key], "__name__", None) or str(hints[key]).replace("typing.", "")
            raise ConfigError(f"{where}: {key} = {value!r} is not of type {expected}")
    if data.get("normalise") is not None:
        data["normalise"] = tuple(data["normalise"])
    return data


def toml_parser():
    """tomllib (Python 3.11+), else the same parser packaged as tomli."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # the same parser, as a package
        import tomli as tomllib
    return tomllib


def fits(value: Any, hint: Any) -> bool:
    """Whether a JSON/TOML/command-line value can be a setting annotated `hint` (lists stand for tuples; an
    int is a float; a bool is neither): the one type check of settings, for Config fields and `--space`."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        origin = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return True
        if origin is bool and isinstance(value, bool):
            return True
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if origin in (str, dict) and isinstance(value, origin):
            return True
        if origin is tuple and isinstance(value, (list, tuple)):
            return True
        if option is Any:
            return True
    return False


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


def parse_opt(items: Sequence[str] | None, *, scoped: bool = False) -> dict[str, Any]:
    """`--opt KEY=VALUE` items -> {KEY: value}; with `scoped` (compare: one optimizer's arguments)
    `--opt LABEL:KEY=VALUE` items -> {LABEL: {KEY: value}}, labels lower-cased."""
    out: dict[str, Any] = {}
    for item in items or []:
        scope, colon, rest = item.partition(":") if scoped else ("", ":", item)
        key, sep, value = rest.partition("=")
        if not colon or not sep or not key.strip() or (scoped and not scope.strip()):
            form = "LABEL:KEY=VALUE (LABEL one of --optimizers)" if scoped else "KEY=VALUE"
            raise ConfigError(f"--opt expects {form}, got {item!r}")
        target = out.setdefault(scope.strip().lower(), {}) if scoped else out
        target[key.strip()] = parse_value(value)
    return out
