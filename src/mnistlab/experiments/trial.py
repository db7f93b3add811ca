"""What experiments share about one training run: the validation split they choose on, when two
configurations compute the same epochs, which existing runs may be reused, and the one trial runner that
sweep and tune train every configuration with."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from mnistlab.errors import ConfigError
from mnistlab.files.runs import atomic_write, read_json, write_json
from mnistlab.presets import DEFAULT_VAL, Config, read_run_config, resolve
from mnistlab.training.engine import Callback
from mnistlab.training.run import TrainResult, train

S = TypeVar("S")

# Settings that do not change what a run computes epoch by epoch.
NEUTRAL_KEYS = {"epochs", "description", "preset", "device", "compile", "cuda_graphs", "channels_last",
                "tensorboard"}
# What a run directory needs to be continued from its last completed epoch.
RUN_FILES = ("config.json", "env.json", "metrics.csv", "metrics.jsonl", "checkpoint.pt")


def make_spec(cls: type[S], who: str, preset: str, config: Config | None, kwargs: dict[str, Any], *,
              validation: bool = False, **fields: Any) -> S:
    """The typed spec `cls` of an experiment from a keyword call: keywords naming one of its fields set it,
    the others are Config overrides of `preset` (or of `config`, a ready Config) that make its `base`; with
    `validation`, the base holds out a validation split (`held_out`; a ready config keeps its own)."""
    names = {f.name for f in dataclasses.fields(cls)}
    fields |= {k: kwargs.pop(k) for k in list(kwargs) if k in names and k != "base"}
    if config is not None:
        base = resolve(base=config, **kwargs)
    else:
        base = resolve(preset, **(held_out(who, kwargs) if validation else kwargs))
    if validation:
        check_held_out(who, base.val)
    return cls(base=base, **fields)


def held_out(who: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` (None values dropped) with the validation split `who` chooses on: `DEFAULT_VAL` images
    unless `val` is given; fewer than one is a ConfigError."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    overrides.setdefault("val", DEFAULT_VAL)
    check_held_out(who, overrides["val"])
    return overrides


def check_held_out(who: str, val: int) -> None:
    if val < 1:
        raise ConfigError(f"{who} chooses by validation accuracy: hold out a validation split (--val N, default "
                          f"{DEFAULT_VAL:,}), got val {val}")


def reuse_problem(run_dir: Path, cfg: Config | None = None) -> str | None:
    """Why the existing run `run_dir` cannot stand in for a run of `cfg` (None: it can), for every experiment
    that reuses runs: it must record its training precision (older runs' val/test figures may be autocast's,
    not fp32) and, when `cfg` is given, compute the same epochs (`same_run`)."""
    env = read_json(run_dir / "env.json") if (run_dir / "env.json").exists() else {}
    if "amp_dtype" not in env:
        return "made by an older mnistlab (no training precision in env.json)"
    if cfg is not None and not same_run(read_run_config(run_dir)[0], cfg):
        return "not the same settings"
    return None


def config_json(cfg: Config) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.to_dict()))


def same_run(a: Config, b: Config) -> bool:
    """True when `a` and `b` compute the same epochs (same model, data order, optimizer, ...) up to their length."""
    da, db = config_json(a), config_json(b)
    return all(da.get(k) == db.get(k) for k in set(da) | set(db) if k not in NEUTRAL_KEYS)


def run_trial(config: Config, run_dir: str | Path, *, source: str | Path | None = None,
              callbacks: Sequence[Callback] = (), data_dir: str | Path | None = None,
              quiet: bool = False) -> TrainResult:
    """Train `config` into `run_dir` for `config.epochs` epochs, calling `callbacks` after every epoch.

    When `run_dir` holds a checkpoint of the same run (or `source` does: its files are copied into `run_dir`
    first), training continues from its last completed epoch instead of starting again; a checkpoint of a
    different run is an error. The recorded config becomes `config` (its description, for instance).
    """
    run_dir = Path(run_dir)
    if source is not None and Path(source) != run_dir:
        for name in RUN_FILES:
            if (Path(source) / name).exists():
                atomic_write(run_dir / name, (Path(source) / name).read_bytes())
    if not (run_dir / "checkpoint.pt").exists():  # files of a trial that never saved an epoch are replaced
        return train(config=config, out=run_dir, overwrite=True, data_dir=data_dir, quiet=quiet,
                     callbacks=tuple(callbacks))
    recorded = read_run_config(run_dir)[0]
    if not same_run(recorded, config):
        raise ConfigError(f"{run_dir} holds a checkpoint of a different run; choose another directory")
    write_json(run_dir / "config.json", dataclasses.replace(config, epochs=recorded.epochs).to_dict())
    return train(resume=run_dir, epochs=config.epochs, data_dir=data_dir, quiet=quiet, callbacks=tuple(callbacks))
