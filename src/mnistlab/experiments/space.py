"""The search space of `mnistlab tune`: `--space` specs parsed and checked against the preset, then sampled.

    lr=1e-4..1e-2:log     a float range, sampled on a log scale (`:log` needs a positive low end)
    epochs=2..10          an integer range (both ends whole numbers)
    batch_size=32,64,128  a list of values (numbers, words, true/false)
    optimizer=adam,sgd

Names: lr, epochs, batch_size, optimizer, label_smoothing, ema, double_softmax, or opt.KEY for an optimizer
argument (opt.momentum=0.8..0.99). The data, the split and the seed stay fixed: they define what is measured.
Every end of a range and every listed value is resolved against the preset when parsed, so a bad value is
reported before any trial runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mnistlab.errors import ConfigError
from mnistlab.presets import Config, fits, parse_value, resolve
from mnistlab.training.optim import make_optimizer

# What each tunable setting holds; opt.KEY (an optimizer argument) takes numbers or listed values.
TUNABLE: dict[str, type] = {"lr": float, "epochs": int, "batch_size": int, "optimizer": str,
                            "label_smoothing": float, "ema": float, "double_softmax": bool}


@dataclass(frozen=True)
class Dimension:
    """One tuned setting: a float or int range (`low`..`high`, optionally log-scaled) or listed `choices`."""

    name: str
    kind: str  # "float", "int" or "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    @property
    def spec(self) -> str:
        """The canonical `--space` text of this dimension."""
        if self.kind == "choice":
            return f"{self.name}={','.join(map(str, self.choices))}"
        return f"{self.name}={self.low:g}..{self.high:g}" + (":log" if self.log else "")

    def suggest(self, trial: Any) -> Any:
        """This dimension's value for an optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def values(self) -> list:
        """Every value, for a grid: the listed ones, or each integer of an int range."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1))
        raise ConfigError(f"--space {self.spec}: the grid sampler needs listed values, "
                          f"e.g. {self.name}={self.low:g},{self.high:g}")


@dataclass(frozen=True)
class Space:
    """The tuned dimensions around a preset and the user's fixed overrides."""

    preset: str
    overrides: dict[str, Any]
    dims: tuple[Dimension, ...]

    @property
    def specs(self) -> list[str]:
        return [d.spec for d in self.dims]

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {d.name: d.suggest(trial) for d in self.dims}

    def config(self, params: dict[str, Any]) -> Config:
        """The preset with the fixed overrides and then `params` applied."""
        over = dict(self.overrides)
        opt_args = dict(over.pop("opt_args", None) or {})
        for name, value in params.items():
            if name.startswith("opt."):
                opt_args[name[4:]] = value
            else:
                over[name] = value
        return resolve(self.preset, **over, opt_args=opt_args)

    @property
    def base(self) -> Config:
        return self.config({})

    def grid(self) -> dict[str, list]:
        return {d.name: d.values() for d in self.dims}

    def grid_size(self) -> int:
        return len(list(itertools.product(*self.grid().values())))


def parse_space(specs: Sequence[str], preset: str = "notebook", **overrides: Any) -> Space:
    """`--space` specs -> a Space; a ConfigError naming the spec and the problem otherwise."""
    if not specs:
        raise ConfigError("give at least one --space NAME=LOW..HIGH[:log] or NAME=A,B,C to tune")
    dims: list[Dimension] = []
    for spec in specs:
        dim = parse_dimension(spec)
        if any(d.name == dim.name for d in dims):
            raise ConfigError(f"--space {spec}: {dim.name} is already in the space")
        dims.append(dim)
    space = Space(preset, {k: v for k, v in overrides.items() if v is not None}, tuple(dims))
    space.config({})  # the preset and the fixed overrides alone
    ends = [[(d.name, int(v) if d.kind == "int" else v) for v in (d.choices or (d.low, d.high))] for d in dims]
    for dim, values in zip(dims, ends, strict=True):
        for name, value in values:
            try:
                space.config({name: value})
            except ConfigError as e:
                raise ConfigError(f"--space {dim.spec}: {e}") from None
    corners = itertools.product(*ends) if math.prod(map(len, ends)) <= 1000 else [()]
    for corner in corners:  # together, with the optimizer built (opt.momentum fits optimizer=sgd, not adam)
        try:
            _check(space, dict(corner))
        except ConfigError as e:
            together = " with ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in corner)
            raise ConfigError(f"--space {together}: {e}") from None
    return space


def _check(space: Space, params: dict[str, Any]) -> None:
    """Resolve `params` and build the optimizer with them (on a one-element tensor): a ConfigError if bad."""
    cfg = space.config(params)
    make_optimizer(cfg, [torch.zeros(1, requires_grad=True)], torch.device("cpu"))


def parse_dimension(spec: str) -> Dimension:
    """One `--space` spec -> a Dimension, checked for its setting's type."""
    name, sep, text = spec.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not text.strip():
        raise ConfigError(f"--space {spec!r}: expected NAME=LOW..HIGH[:log] or NAME=A,B,C")
    kind = TUNABLE.get(name)
    if kind is None and not (name.startswith("opt.") and len(name) > 4):
        raise ConfigError(f"--space {spec}: {name!r} is not a tunable setting; choose from "
                          f"{', '.join(TUNABLE)}, or opt.KEY for an optimizer argument")
    if ".." in text:
        if kind in (str, bool):
            raise ConfigError(f"--space {spec}: {name} takes listed values, e.g. {name}=A,B")
        return _range(spec, name, text, kind)
    items = [t.strip() for t in text.split(",")]
    if "" in items:
        raise ConfigError(f"--space {spec}: empty value in the list")
    choices = tuple(parse_value(t) for t in items)
    if len(set(choices)) != len(choices):
        raise ConfigError(f"--space {spec}: a value is listed twice")
    wrong = [t for t, c in zip(items, choices, strict=True) if not fits(c, kind or Any)]
    if wrong:
        raise ConfigError(f"--space {spec}: {wrong[0]!r} is not {_WORDS[kind]}")
    return Dimension(name, "choice", choices=tuple(float(c) if kind is float else c for c in choices))


_WORDS = {int: "a whole number", float: "a number", str: "a name", bool: "true or false", None: "a value"}


def _range(spec: str, name: str, text: str, kind: type | None) -> Dimension:
    body, _, flag = text.partition(":")
    if flag not in ("", "log"):
        raise ConfigError(f"--space {spec}: unknown flag {flag!r} (only :log)")
    low, high = (parse_value(t) for t in body.split("..", 1))
    if not (fits(low, float) and fits(high, float)):
        raise ConfigError(f"--space {spec}: a range needs two numbers, LOW..HIGH")
    is_int = kind is int or (kind is None and isinstance(low, int) and isinstance(high, int))
    if is_int and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"--space {spec}: {name} takes whole numbers")
    if not low < high:
        raise ConfigError(f"--space {spec}: the low end must be below the high end")
    if flag == "log" and low <= 0:
        raise ConfigError(f"--space {spec}: a log range needs a positive low end")
    return Dimension(name, "int" if is_int else "float", float(low), float(high), flag == "log")
