"""mnistlab: the 'MNIST with GPU' PyTorch lab as a real toolkit.

The Python API, imported on first use so that `import mnistlab` stays light and changes nothing in the
caller's process:

    mnistlab.train(...)      training.run.train
    mnistlab.load(path)      inference.predict.load_model
    mnistlab.evaluate(...)   inference.evaluate.evaluate_model
    mnistlab.predict         the module inference.predict
    mnistlab.inspect(...)    lab.inspect.inspect
    mnistlab.compare(...)    experiments.compare.compare
    mnistlab.sweep(...)      experiments.sweep.sweep
    mnistlab.tune(...)       experiments.tune.tune
    mnistlab.lr_find(...)    experiments.lr_find.lr_find
    mnistlab.lab(...)        lab.runner.lab (mnistlab.lab is the package, and calling it runs the lab)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "train": ("mnistlab.training.run", "train"),
    "load": ("mnistlab.inference.predict", "load_model"),
    "evaluate": ("mnistlab.inference.evaluate", "evaluate_model"),
    "inspect": ("mnistlab.lab.inspect", "inspect"),
    "compare": ("mnistlab.experiments.compare", "compare"),
    "sweep": ("mnistlab.experiments.sweep", "sweep"),
    "tune": ("mnistlab.experiments.tune", "tune"),
    "lr_find": ("mnistlab.experiments.lr_find", "lr_find"),
}


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    if name == "predict":  # the module: classify_images, classify_indices, load_model, ...
        return importlib.import_module("mnistlab.inference.predict")
    if name == "lab":  # the package, callable: mnistlab.lab(...) runs the lab (lab.runner.lab)
        return importlib.import_module("mnistlab.lab")
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "predict", "lab"])
