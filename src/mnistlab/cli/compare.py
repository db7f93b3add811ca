"""`mnistlab compare`: Exercise 3, several optimizers from the same initial weights and data order."""

from __future__ import annotations

import argparse

from mnistlab.cli.common import add_training_options, overrides_from
from mnistlab.experiments.compare import OPTIMIZER_DEFAULTS, compare
from mnistlab.presets import parse_opt


def add_parser(sub: argparse._SubParsersAction) -> None:
    defaults = "; ".join(f"{k}: " + ", ".join(f"{a}={v}" for a, v in d.items()) for k, d in OPTIMIZER_DEFAULTS.items())
    p = sub.add_parser("compare", help="train once per optimizer from the same start; table, plot, verdict",
                       description="Train the preset once per optimizer (any torch.optim class) from the same "
                                   "initial weights and data order; writes each run, compare.csv/md/json, "
                                   f"compare.png and a verdict. Defaults where the preset's lr is wrong: {defaults}.")
    add_training_options(p, optimizer=False)
    p.add_argument("--optimizers", default="adam,sgd",
                   help="comma-separated LABEL or LABEL=CLASS (e.g. adam,sgd,plain=sgd); default adam,sgd")
    p.add_argument("--opt", dest="label_opts", action="append", metavar="LABEL:KEY=VALUE",
                   help="an argument of one optimizer (repeatable), e.g. --opt sgd:lr=0.05 --opt sgd:momentum=0.9")
    p.add_argument("--no-defaults", action="store_true",
                   help="use the preset's lr for every optimizer instead of the per-optimizer defaults")
    p.add_argument("--out", help="directory (default runs/compare-<preset>-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts = parse_opt(args.label_opts, scoped=True)
    result = compare(args.preset, args.optimizers, opts, out=args.out, data_dir=args.data_dir, quiet=args.quiet,
                     use_defaults=not args.no_defaults, **overrides_from(args))
    print((result.run_dir / "compare.md").read_text(), end="")
    print(f"written: {result.run_dir}")
    return 0
