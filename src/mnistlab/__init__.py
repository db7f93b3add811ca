"""mnistlab: the 'MNIST with GPU' PyTorch lab as a real toolkit."""

__version__ = "0.1.0"

import sys
import types

# The Python API, imported on first use so that `import mnistlab` stays light:
#   mnistlab.train(...), compare(...), sweep(...), inspect(...), load(path), lab(...); mnistlab.predict is a module.
# `inspect` and `lab` are also submodules; once imported they are callable modules (see callable_module).
_API = {
    "train": ("mnistlab.training", "train"),
    "compare": ("mnistlab.experiments", "compare"),
    "sweep": ("mnistlab.experiments", "sweep"),
    "inspect": ("mnistlab.inspect", "inspect"),
    "load": ("mnistlab.predict", "load_model"),
    "lab": ("mnistlab.lab", "lab"),
}


def __getattr__(name: str):
    import importlib

    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    if name == "predict":  # the module: classify_images, classify_indices, load_model, ...
        return importlib.import_module("mnistlab.predict")
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")


def callable_module(module_name: str, func_name: str) -> None:
    """Make submodule `module_name` callable as its function `func_name`, so that `mnistlab.inspect(...)`
    works whether or not `mnistlab.inspect` (the module) has been imported yet."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, func_name)(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule
