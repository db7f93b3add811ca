"""`mnistlab lr-find`: the learning-rate range test for a preset; lr_find.png, lr_find.json, a suggested rate."""

from __future__ import annotations

import argparse

from mnistlab.cli.common import add_training_options, overrides_from, positive_float, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test: the loss against an exponential lr ramp",
                       description="Train the preset from its seeded initial weights while the learning rate "
                                   "grows exponentially, one rate per step, until the ramp ends or the smoothed "
                                   "loss diverges; writes lr_find.png and lr_find.json and suggests a rate: the "
                                   "steepest fall of the smoothed loss for a constant rate, its minimum / 10 for "
                                   "a one-cycle or cosine peak. Uses the training images only.")
    add_training_options(p, sweepable=True)
    p.add_argument("--batch-size", type=positive_int, help="global batch size (default: the preset's)")
    p.add_argument("--steps", type=positive_int, default=300, help="length of the ramp in steps (default 300)")
    p.add_argument("--start-lr", type=positive_float, default=1e-7, help="first rate (default 1e-7)")
    p.add_argument("--end-lr", type=positive_float, default=10.0, help="last rate (default 10)")
    p.add_argument("--out", help="directory (default runs/lr-find-<preset>-<timestamp>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnistlab.experiments.lr_find import lr_find

    result = lr_find(args.preset, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps, out=args.out,
                     data_dir=args.data_dir, **overrides_from(args))
    print(f"suggested learning rate {result.suggestion:.3g}: {result.method}")
    print(f"{result.settings['steps_run']} steps, {result.stopped}; the preset's rate is {result.config.lr:.3g}")
    print(f"written: {result.run_dir / 'lr_find.png'}, {result.run_dir / 'lr_find.json'}")
    return 0
