"""`mnistlab grade` on a class of N handed-in notebooks, weights included, timed end to end.

    python benchmarks/grade_class.py [--students 100] [--jobs 2] [--notebook EXECUTED.ipynb] [--work DIR]

The class is N copies of one executed lab notebook, each in its own folder with the weights it saved (the
notebook's `<stem>_outputs/`), so every student's weights are scored on the 10,000 test images as a real class's
would be. Without --notebook, mnistlab's lab notebook is executed once first with its quick settings (not timed).
Prints one Markdown row: students, jobs, wall seconds of `mnistlab grade SUBMISSIONS --out DIR --jobs N`, seconds
per notebook, and the CPU. Run it on an idle machine: the figure goes in BENCHMARKS.md with that machine named.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnistlab.files.runs import cpu_model


def executed_notebook(work: Path) -> Path:
    """mnistlab's lab notebook executed with quick settings on the CPU into `work` (its weights beside it)."""
    from mnistlab.lab.notebook import execute, parameters_for

    done = execute(work / "source" / "mnist_lab.ipynb", parameters=parameters_for(quick=True, device="cpu"))
    return done.ipynb


def build_class(notebook: Path, students: int, root: Path) -> Path:
    """`students` folders, each holding the notebook and its outputs folder (with the saved weights)."""
    outputs = notebook.with_name(f"{notebook.stem}_outputs")
    for i in range(students):
        folder = root / f"student{i:04d}"
        folder.mkdir(parents=True)
        shutil.copy(notebook, folder / notebook.name)
        if outputs.is_dir():
            shutil.copytree(outputs, folder / outputs.name)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", type=int, default=100)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--notebook", type=Path, help="an executed lab notebook (its _outputs folder beside it)")
    p.add_argument("--work", type=Path, help="where the class and the grades go (default: a temporary folder)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="grade-bench-"))
    notebook = args.notebook or executed_notebook(work)
    klass = build_class(notebook, args.students, work / "class")
    command = [sys.executable, "-m", "mnistlab", "grade", str(klass), "--out", str(work / "grades"),
               "--jobs", str(args.jobs), "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    print("| students | jobs | seconds | per notebook | CPU |\n|---|---|---|---|---|")
    print(f"| {args.students} | {args.jobs} | {seconds:.1f} | {seconds / args.students:.2f} | {cpu_model()} |")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
