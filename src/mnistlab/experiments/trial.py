"""What experiments share about one training run: when two configurations compute the same epochs."""

from __future__ import annotations

import json
from typing import Any

from mnistlab.presets import Config

# Settings that do not change what a run computes epoch by epoch.
NEUTRAL_KEYS = {"epochs", "description", "preset", "device", "compile", "cuda_graphs", "channels_last",
                "tensorboard"}


def config_json(cfg: Config) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.to_dict()))


def same_run(a: Config, b: Config) -> bool:
    """True when `a` and `b` compute the same epochs (same model, data order, optimizer, ...) up to their length."""
    da, db = config_json(a), config_json(b)
    return all(da.get(k) == db.get(k) for k in set(da) | set(db) if k not in NEUTRAL_KEYS)
