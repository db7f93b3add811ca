"""`mnistlab lab`: the whole lab on real MNIST, with report.md, report.html and the executed lab notebook."""

from __future__ import annotations

import argparse

from mnistlab.cli.common import add_data_options, add_device_option, add_tensorboard_option, positive_int
from mnistlab.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="run every exercise of the lab; report, HTML and the executed notebook",
                       description="Exercise 1 (inspect, train 5 epochs, accuracy per epoch, learning-curve "
                                   "analysis), 2 (sweep), 3 (SGD vs Adam), 4 (save/reload/classify) and the "
                                   "notebook's quirks; the plain-PyTorch lab notebook executed with the same "
                                   "settings (lab_notebook.ipynb and .html), cross-checked; report.md and "
                                   "report.html.")
    p.add_argument("--quick", action="store_true", help="a small subset and few epochs (a first look, CI)")
    p.add_argument("--out", help="directory (default runs/lab-<timestamp>)")
    add_device_option(p)
    p.add_argument("--jobs", type=positive_int, default=1, help="parallel processes for the sweep")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--no-notebook", dest="notebook", action="store_false",
                   help="skip executing the lab notebook (it needs the lab extra: papermill, ipykernel, ...)")
    add_tensorboard_option(p)
    add_data_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnistlab.lab.runner import lab

    if args.dataset not in (None, "mnist"):
        raise ConfigError("the lab is about MNIST; --dataset must be mnist")
    result = lab(args.out, quick=args.quick, data_dir=args.data_dir, device=args.device, jobs=args.jobs,
                 quiet=args.quiet, tensorboard=args.tensorboard is not False, notebook=args.notebook)
    print(f"lab done in {result.seconds['total']:.0f} s: {result.run_dir}")
    return 0
