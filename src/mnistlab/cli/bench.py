"""`mnistlab bench`: the notebook's pipeline vs mnistlab side by side, and the `fast` preset's time to 99%."""

from __future__ import annotations

import argparse

from mnistlab.cli.common import add_data_options, add_device_option, positive_int
from mnistlab.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark mnistlab against the notebook's pipeline",
                       description="Interleave the notebook's pipeline and mnistlab's `notebook` preset epoch by "
                       "epoch (each in its own process), then time the `fast` preset over 5 seeds; writes "
                       "bench.json and bench.md.")
    p.add_argument("--quick", action="store_true", help="a small subset, 1 epoch, 2 seeds: checks the harness")
    p.add_argument("--epochs", type=positive_int, help="epochs per contender (default 1; 5 for the full table)")
    p.add_argument("--seeds", type=positive_int, help="seeds of the `fast` preset (default 5)")
    p.add_argument("--out", default="bench-results", help="output directory (default bench-results)")
    add_device_option(p, default="auto")
    p.add_argument("--serve", action="store_true", help="also load-test `mnistlab serve` with the `fast` model this "
                   "run trains (8 clients, 15 s; 3 s with --quick)")
    add_data_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnistlab.bench import harness as bench

    kw = dict(bench.QUICK) if args.quick else {}
    if args.epochs:
        kw["epochs"] = args.epochs
    if args.seeds:
        kw["seeds"] = tuple(range(args.seeds))
    if args.dataset not in (None, "mnist"):
        raise ConfigError("bench measures MNIST only")
    opts = bench.BenchOptions(**kw, data_dir=args.data_dir, device=args.device)
    result = bench.run_benchmark(opts, args.out, serve=args.serve)
    print(bench.markdown(result), end="")
    print(f"written: {args.out}/bench.json, {args.out}/bench.md")
    return 0
