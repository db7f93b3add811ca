"""`mnistlab check`: one handed-in lab notebook checked against its own evidence, without running it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnistlab.grading.checks import check_notebook


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a handed-in lab notebook: ran, in order, answers against evidence",
                       description="Reads the .ipynb (nothing is executed): whether every code cell ran, in order, "
                                   "which cells hold errors, and each of the lab's questions against the code and "
                                   "the printed outputs; with weights (--weights, or a .pt/.pth/.safetensors beside "
                                   "the notebook), their accuracy on the 10,000 MNIST test images. Exit 0: no "
                                   "finding; 1: findings; 2: the notebook cannot be read.")
    p.add_argument("notebook", metavar="NOTEBOOK", help="the handed-in .ipynb")
    p.add_argument("--weights", metavar="FILE", help="a weight file (.pt, .pth, .safetensors) to score")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--data-dir", metavar="DIR", help="the data root holding mnist/ (default: mnistlab's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnistlab.errors import ConfigError
    from mnistlab.grading.weights import TestSet

    if args.weights and not Path(args.weights).is_file():
        raise ConfigError(f"{args.weights}: no such weight file")
    test_set = TestSet.load(args.data_dir) if args.data_dir else None
    report = check_notebook(Path(args.notebook), args.weights, test_set)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from mnistlab.grading.reports import print_table

        print_table(report)
    return 0 if report["status"] == "ok" else 1
