"""`mnistlab tune`: Exercise 2 as a search on Optuna (samplers, pruning, workers sharing one study)."""

from __future__ import annotations

import argparse

from mnistlab.cli.common import add_training_options, overrides_from, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search settings on Optuna, chosen on a validation split; --report",
                       description="Sample --space around a preset with Optuna, prune bad trials early and "
                                   "choose by validation accuracy (--val, default 10,000 images). Every trial "
                                   "is a run directory under --out. Run the same command on several machines "
                                   "with a postgresql:// --storage to share one study.")
    add_training_options(p)
    p.add_argument("--space", action="append", default=[], metavar="NAME=RANGE",
                   help="a tuned setting (repeatable): lr=1e-4..1e-2:log, epochs=2..10, batch_size=32,64,128, "
                        "optimizer=adam,sgd, opt.momentum=0.8..0.99")
    p.add_argument("--trials", type=positive_int, help="finished trials the study ends with (default 30; the "
                                                       "grid's size for --sampler grid)")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random", "grid", "cmaes"], help="default tpe")
    p.add_argument("--pruner", default="asha", choices=["asha", "median", "none"],
                   help="stop bad trials after an epoch (default asha: successive halving)")
    p.add_argument("--study", help="study name (default: the preset)")
    p.add_argument("--storage", help="journal file (default <out>/journal.log), sqlite:///FILE or "
                                     "postgresql://USER@HOST/DB (pip install 'mnistlab[tune]')")
    p.add_argument("--out", help="directory of the study's trials and report (default runs/tune-<study>)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="worker processes on this machine (CPU threads divided between them)")
    p.add_argument("--heartbeat", type=positive_int, default=60, metavar="SECONDS",
                   help="a trial not heard from for twice this long (its worker died) is failed and retried")
    p.add_argument("--report", action="store_true",
                   help="only write the report of the study: study.csv, best.json, plots")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mnistlab.experiments.study import storage_url
    from mnistlab.experiments.tune import tune
    from mnistlab.experiments.tune_report import report

    if args.report:
        study = args.study or args.preset
        out = Path(args.out) if args.out else Path("runs") / f"tune-{study}"
        print("\n".join(report(study, storage_url(args.storage, out), out)))
        return 0
    result = tune(args.preset, args.space, trials=args.trials, sampler=args.sampler, pruner=args.pruner,
                  study=args.study, storage=args.storage, out=args.out, jobs=args.jobs, heartbeat=args.heartbeat,
                  data_dir=args.data_dir, quiet=args.quiet, **overrides_from(args))
    print("\n".join(result.summary))
    return 0
