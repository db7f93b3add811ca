"""`mnistlab sweep`: Exercise 2, a grid over learning rate, epochs and batch size."""

from __future__ import annotations

import argparse

from mnistlab.cli.common import add_training_options, overrides_from, positive_float, positive_int


def _list(kind):
    def parse(text: str) -> list:
        try:
            return [kind(t) for t in text.split(",") if t.strip()]
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{e} in {text!r}" if "," in text else str(e)) from None

    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="grid over lr x epochs x batch size; sweep.csv, sweep.png, the best",
                       description="Train every combination of --lr, --epochs and --batch-size around a preset "
                                   "and choose the setting with the highest validation accuracy (--val N, default "
                                   "10,000 training images held out); test accuracy is reported beside it. With a "
                                   "schedule that does not depend on the number of epochs, one run of the longest "
                                   "setting serves the shorter ones.")
    add_training_options(p, sweepable=True)
    p.add_argument("--lr", type=_list(positive_float), help="learning rates, e.g. 5e-4,1e-3,2e-3")
    p.add_argument("--epochs", type=_list(positive_int), help="epoch counts, e.g. 5,8")
    p.add_argument("--batch-size", type=_list(positive_int), help="batch sizes, e.g. 32,64")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="configurations trained in parallel processes (CPU threads divided between them)")
    p.add_argument("--no-reuse", action="store_true", help="train every epoch setting separately")
    p.add_argument("--reuse-run", action="append", default=[], metavar="RUN_DIR",
                   help="an existing run of one of the settings to reuse or resume (repeatable)")
    p.add_argument("--out", help="directory (default runs/sweep-<preset>-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnistlab.experiments.sweep import sweep
    from mnistlab.tables import pct

    over = {k: v for k, v in overrides_from(args).items() if k not in ("lr", "epochs", "batch_size")}
    result = sweep(args.preset, args.lr, args.epochs, args.batch_size, jobs=args.jobs, out=args.out,
                   data_dir=args.data_dir, quiet=args.quiet, reuse=not args.no_reuse, runs=args.reuse_run, **over)
    for row in result.rows:
        model = f" (model of epoch {row['model_epoch']})" if row["model_epoch"] != row["epochs"] else ""
        print(f"{row['label']:>22}  {row['epochs']:>3} epochs{model}  val {pct(row['val_acc'])}  test "
              f"{pct(row['test_acc'])}  best val epoch {row['best_epoch']}  {row['seconds']:.0f}s  {row['source']}")
    print("\n".join(result.summary))
    print(f"written: {result.run_dir}")
    return 0
