"""The lab: its exercises, in the order `mnistlab lab` runs them, and what it hands back.

`inspect` (Exercise 1, questions 1-5, from the code), `analysis` (learning curves, questions 6 and 7),
`runner` (`mnistlab lab`: every exercise in order), `notebook` (writes and executes the lab notebook, whose
plain-PyTorch source is `lab_notebook/mnist_lab.py`), `insight` (the report's filters, feature maps and
explained mistakes) and `report/` (report.md, report.html).

`mnistlab.lab` is this package and also the function that runs the lab: `mnistlab.lab("my-lab", quick=True)`
calls `mnistlab.lab.runner.lab` (importing nothing heavy until called).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableLab(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from mnistlab.lab.runner import lab

        return lab(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableLab
