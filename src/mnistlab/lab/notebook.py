"""The lab notebook: a plain-PyTorch notebook of the four exercises, whose source is the jupytext "percent"
script `lab_notebook/mnist_lab.py`. `notebook_json()` is the `.ipynb` made from it (committed, without outputs,
as notebooks/mnist_lab.ipynb); `execute()` runs it through a real Jupyter kernel (papermill + ipykernel) and
saves it with its outputs, plus an HTML copy. `mnistlab notebook` and `mnistlab lab` both call `execute()`.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistlab.errors import ConfigError, MnistlabError

SOURCE = Path(__file__).parent / "lab_notebook" / "mnist_lab.py"
COMMITTED = "notebooks/mnist_lab.ipynb"  # where the repository keeps the generated notebook
EXTRA = "pip install 'mnistlab[lab]'"
CSV_NAME = "exercise1_accuracy.csv"  # question 7's table, written by the notebook into its out_dir

# What `--quick` (and `mnistlab lab --quick`) pass: the first 1,500 training images, the last 500 of them held
# out, 1-3 epochs per exercise; the test set stays all 10,000 images.
QUICK = {"train_subset": 1500, "val_size": 500, "epochs": 2, "more_epochs": 3, "other_lrs": [2e-3],
         "other_lr_epochs": 2, "sgd_epochs": 2, "n_samples": 5}


class NotebookError(MnistlabError):
    """A cell of the executed notebook raised: the message names the cell and the error."""


def require(*modules: str) -> None:
    """ConfigError naming the `lab` extra when one of `modules` is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"the lab notebook needs {', '.join(missing)}: {EXTRA}")


def notebook_json() -> str:
    """The notebook (nbformat 4, no outputs) that the source script makes, as the committed file holds it."""
    require("jupytext", "nbformat")
    import jupytext

    nb = jupytext.read(SOURCE)
    for i, cell in enumerate(nb.cells):  # ids by position, so the same source always makes the same file
        cell.id = f"cell-{i:02d}"
    return jupytext.writes(nb, fmt="ipynb")


def write_notebook(out: str | Path) -> Path:
    from mnistlab.files.runs import atomic_write

    return atomic_write(out, notebook_json())


@dataclass
class Executed:
    """An executed notebook: its files, its parameters, the wall time, and Exercise 1's table it saved."""

    ipynb: Path
    html: Path
    outputs: Path
    parameters: dict[str, Any]
    seconds: float
    exercise1: list[dict[str, float]] = field(default_factory=list)

    @property
    def test_acc(self) -> float | None:
        """Exercise 1's final test accuracy (%), as the notebook saved it."""
        return self.exercise1[-1]["test_acc"] if self.exercise1 else None


def parameters_for(*, quick: bool = False, device: str | None = None, data_dir: str | Path | None = None,
                   amp: str = "auto", outputs: Path | None = None, **overrides: Any) -> dict[str, Any]:
    """The values papermill injects into the notebook's `parameters` cell. `amp="auto"` trains in bf16 where
    the device computes it natively (as `mnistlab train` does), else fp32."""
    import torch

    from mnistlab.data import data_dir as default_data_dir
    from mnistlab.training.device import amp_dtype, pick_device

    dev = pick_device(device or "auto")
    params: dict[str, Any] = dict(QUICK) if quick else {}
    params.update(device_name=str(dev), data_dir=str(default_data_dir(data_dir)),
                  bf16=amp_dtype(amp, dev) == torch.bfloat16)
    if outputs is not None:
        params["out_dir"] = str(outputs)
    params.update(overrides)
    return params


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


# What the notebook's fit() prints after each epoch: "adam epoch 3: train_acc 98.10%, ...".
EPOCH_LINE = re.compile(r"^[\w .=-]+ epoch \d+: ")


class EpochLines:
    """A file-like sink for the notebook's standard output that hands `say` the lines a person waits for
    while it trains: one per epoch, as `mnistlab train` prints them (the rest stays in the notebook)."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.pending = say, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if EPOCH_LINE.match(line):
                self.say(line)
        return len(text)

    def flush(self) -> None:
        pass


def execute(out: str | Path, *, parameters: dict[str, Any] | None = None, kernel: str = "python3",
            progress: bool = False, timeout: float | None = None, source: str | Path | None = None,
            cwd: str | Path | None = None, echo: Callable[[str], None] | None = None) -> Executed:
    """Run the notebook through a Jupyter kernel into `out` (.ipynb) and `out` with .html; the notebook's own
    files (CSV, figures, saved model) go to parameters["out_dir"], by default `<out stem>_outputs` beside it.
    `source`: another notebook to run instead of the lab's (a handed-in one), in `cwd` (default: the outputs
    folder), with `parameters` injected only when given (papermill puts them after its `parameters` cell).
    `echo` is handed each epoch's line as the notebook prints it (`EpochLines`); `progress` shows papermill's
    bar over the cells.

    The executed notebook is written to a temporary name and moved into place, so `out` is never half written.
    A cell that raises gives NotebookError naming the cell and the error; the partly executed notebook is kept
    at `out` (with papermill's error banner at its top) and its HTML copy beside it.
    """
    require("papermill", "ipykernel", "nbconvert", "jupytext")
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out = Path(out)
    if out.suffix != ".ipynb":
        raise ConfigError(f"the executed notebook's file must end in .ipynb, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    params = {"progress_bars": False, **(parameters or {})}  # no bar frozen into the saved outputs
    outputs = Path(params.setdefault("out_dir", str(out.with_name(f"{out.stem}_outputs")))).resolve()
    params["out_dir"] = str(outputs)
    outputs.mkdir(parents=True, exist_ok=True)
    if source is not None and not parameters:
        params = {}  # a handed-in notebook without quick settings runs as written
    text = Path(source).read_text(encoding="utf-8") if source is not None else notebook_json()
    source = out.with_name(f".{out.stem}.source.ipynb")
    partial = out.with_name(f".{out.stem}.partial.ipynb")
    source.write_text(text)
    failure: NotebookError | None = None
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(str(source), str(partial), parameters=params, kernel_name=kernel,
                                   cwd=str(cwd or outputs), progress_bar=progress, log_output=False,
                                   stdout_file=EpochLines(echo) if echo is not None else None,
                                   execution_timeout=timeout, extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except PapermillExecutionError as e:
        failure = NotebookError(f"the notebook failed in cell {e.cell_index} (execution count {e.exec_count}): "
                                f"{e.ename}: {_first_line(e.evalue)}; the partly executed notebook: {out}")
    except Exception as e:  # no kernel, a kernel that died, ...
        if not partial.exists():
            raise NotebookError(f"could not run the notebook with kernel {kernel!r}: {type(e).__name__}: "
                                f"{_first_line(e)}") from None
        failure = NotebookError(f"the notebook stopped: {type(e).__name__}: {_first_line(e)}; "
                                f"the partly executed notebook: {out}")
    finally:
        source.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    os.replace(partial, out)
    html = write_html(out)
    if failure is not None:
        raise failure
    return Executed(out, html, outputs, params, round(seconds, 1), read_exercise1(outputs / CSV_NAME))


def write_html(ipynb: Path) -> Path:
    """An HTML copy of the executed notebook beside it (figures embedded), written atomically."""
    import nbformat
    from nbconvert import HTMLExporter

    from mnistlab.files.runs import atomic_write

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(ipynb, as_version=4))
    return atomic_write(ipynb.with_suffix(".html"), body)


def read_exercise1(path: Path) -> list[dict[str, float]]:
    """Exercise 1's table (question 7) as the notebook saved it: one row per epoch."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
