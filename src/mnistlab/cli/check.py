"""`mnistlab check`: one handed-in lab notebook checked against its own evidence, without running it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnistlab.grading.checks import examine


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
    add_grading_options(p)
    p.set_defaults(func=run)


def add_grading_options(p: argparse.ArgumentParser) -> None:
    """--data-dir, --execute and its limits, shared by check and grade."""
    p.add_argument("--data-dir", metavar="DIR", help="the data root holding mnist/ (default: mnistlab's)")
    p.add_argument("--execute", action="store_true",
                   help="also run the notebook, as untrusted code, in a bubblewrap sandbox (no network, only its "
                        "own folder, MNIST and the Python environment visible) and compare it with the hand-in")
    p.add_argument("--timeout", type=float, default=15 * 60, metavar="S",
                   help="with --execute: seconds a notebook may run before it is killed (default 900)")
    p.add_argument("--memory", type=float, default=4, metavar="GIB",
                   help="with --execute: memory a notebook may use, in GiB (default 4)")
    p.add_argument("--processes", type=int, default=256, metavar="N",
                   help="with --execute: processes a notebook may run at once (default 256)")
    p.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="with --execute: run notebooks without the sandbox where bubblewrap cannot run (the limits "
                        "stay); only for notebooks you trust")


def run_options(args: argparse.Namespace, keep: str | None = None):
    """`sandbox.RunOptions` from the options, or None without --execute; ConfigError where no sandbox can run
    and --unsafe-no-sandbox was not given."""
    if not args.execute:
        return None
    from mnistlab.errors import ConfigError
    from mnistlab.grading.sandbox import Limits, RunOptions, unavailable

    if args.timeout <= 0 or args.memory <= 0 or args.processes <= 0:
        raise ConfigError("--timeout, --memory and --processes must be positive")
    sandbox = not args.unsafe_no_sandbox
    if sandbox and (why := unavailable()) is not None:
        raise ConfigError(f"--execute refuses to run notebooks without a sandbox: {why}; --unsafe-no-sandbox "
                          "overrides this, for notebooks you trust")
    limits = Limits(memory=int(args.memory * 2**30), processes=args.processes, timeout=args.timeout)
    return RunOptions(limits, sandbox, str(args.data_dir) if args.data_dir else None, keep)


def run(args: argparse.Namespace) -> int:
    from mnistlab.errors import ConfigError
    from mnistlab.grading.weights import TestSet

    if args.weights and not Path(args.weights).is_file():
        raise ConfigError(f"{args.weights}: no such weight file")
    options = run_options(args)
    checked = examine(Path(args.notebook), args.weights, TestSet.load(args.data_dir))
    report = checked.report
    if options is not None:
        from mnistlab.grading.sandbox import rerun

        path = Path(args.notebook)
        report["execution"] = ex = rerun(path, None, checked, options, path.stem)  # the notebook alone
        if ex["status"] != "ran" or ex.get("settings") or ex.get("band") is False:
            report["status"] = "findings"
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from mnistlab.grading.reports import print_table

        print_table(report)
        if "execution" in report:
            from mnistlab.grading.reports import execution_lines

            print("executed again: " + "; ".join(execution_lines(report["execution"])))
    return 0 if report["status"] == "ok" else 1
