"""mnistlab: the 'MNIST with GPU' PyTorch lab as a real toolkit.

The Python API, imported on first use so that `import mnistlab` stays light and changes nothing in the
caller's process:

    mnistlab.train(...)      training.run.train         mnistlab.load(path)     use.predict.load_model
    mnistlab.evaluate(...)   use.evaluate.evaluate_model mnistlab.inspect(...)  exercises.inspect.inspect
    mnistlab.compare(...)    experiments.compare         mnistlab.sweep(...)    experiments.sweep
    mnistlab.lab(...)        exercises.lab.lab        mnistlab.predict       the module use.predict
    mnistlab.tune(...)       experiments.tune            mnistlab.lr_find(...)  experiments.lr_find
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "train": ("mnistlab.training.run", "train"),
    "load": ("mnistlab.use.predict", "load_model"),
    "evaluate": ("mnistlab.use.evaluate", "evaluate_model"),
    "inspect": ("mnistlab.exercises.inspect", "inspect"),
    "compare": ("mnistlab.experiments.compare", "compare"),
    "sweep": ("mnistlab.experiments.sweep", "sweep"),
    "lab": ("mnistlab.exercises.lab", "lab"),
    "tune": ("mnistlab.experiments.tune", "tune"),
    "lr_find": ("mnistlab.experiments.lr_find", "lr_find"),
}


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    if name == "predict":  # the module: classify_images, classify_indices, load_model, ...
        return importlib.import_module("mnistlab.use.predict")
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "predict"])
