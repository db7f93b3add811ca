"""`mnistlab train`: train a preset, evaluating after every epoch, into a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistlab.cli.common import add_training_options, overrides_from, positive_int
from mnistlab.errors import ConfigError
from mnistlab.files.outdir import claim_dir, scoped
from mnistlab.presets import Config, load_config, resolve
from mnistlab.training.run import train


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a preset and write a run directory",
                       description="Train a preset (any setting overridable) and write a run directory.")
    add_training_options(p, lr_find=True)
    p.add_argument("--out", help="run directory (default runs/<preset>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last completed epoch")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds, once the new run's first epoch is saved (until then it is kept)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--live", action="store_true",
                   help="append what the network is doing (loss, filters, predictions) to RUN_DIR/live.jsonl as it "
                        "trains, for the page that watches it (mnistlab serve --runs); it changes no number")
    p.add_argument("--ensemble", type=positive_int, metavar="K",
                   help="train K models (seeds seed..seed+K-1) and average their predictions")
    p.add_argument("--config", metavar="FILE",
                   help="re-run a configuration: a run directory's config.json, or a TOML file of settings; "
                        "options given here override it")
    p.set_defaults(func=run, preset=None)  # None: --preset not given (the file's preset, else notebook)


@scoped  # a directory claimed here (for --lr find) stays locked until the command ends
def run(args: argparse.Namespace) -> int:
    if args.overwrite and (args.resume or args.ensemble):
        raise ConfigError(f"--overwrite replaces a run directory with a new run; it cannot be combined with "
                          f"{'--resume' if args.resume else '--ensemble'}")
    over = overrides_from(args)
    find = over.get("lr") == "find"
    if find:
        del over["lr"]
    config = None
    if args.config:
        for flag, given, why in (("--preset", args.preset, "the file names the preset (set preset in it)"),
                                 ("--resume", args.resume, "--config starts a new run, --resume continues one"),
                                 ("--ensemble", args.ensemble, "train the members with --preset and options")):
            if given:
                raise ConfigError(f"--config and {flag} cannot be combined: {why}")
        config = resolve(base=load_config(args.config), **over)
    args.preset = args.preset or "notebook"
    if find:
        if args.resume:
            raise ConfigError("--lr find starts a new run; --resume continues one at its own learning rate")
        args.out, lr, note = find_lr(args, config or resolve(args.preset, **over))
        if config is not None:
            config = resolve(base=config, lr=lr, description=f"{config.description} {note}".strip())
        else:
            over.update(lr=lr, description=f"{resolve(args.preset, **over).description} {note}".strip())
    if args.ensemble:
        if args.live:
            raise ConfigError("--live watches one run; it cannot be combined with --ensemble")
        if args.resume:
            raise ConfigError("--ensemble and --resume cannot be combined; resume each member's run directory")
        from mnistlab.inference.ensemble import train_ensemble

        ens = train_ensemble(args.preset, args.ensemble, out=args.out, data_dir=args.data_dir, quiet=args.quiet,
                             **over)
        if not args.quiet:
            accs = ", ".join(f"{a:.2f}" for a in ens.scores["member_test_accs"])
            print(f"ensemble of {args.ensemble}: test accuracy {ens.test_acc:.2f}% (members {accs})  "
                  f"run: {ens.run_dir}")
        return 0
    result = train(args.preset, out=args.out, resume=args.resume, overwrite=args.overwrite, data_dir=args.data_dir,
                   quiet=args.quiet, config=config, live=args.live, **({} if config else over))
    if result.run_dir is not None and not args.quiet and result.history:
        which = f" (epoch {result.model_epoch}'s weights)" if result.best_epoch else ""
        print(f"test accuracy {result.test_acc:.2f}%{which}  run: {result.run_dir}")
    return 0


def find_lr(args: argparse.Namespace, cfg: Config) -> tuple[Path, float, str]:
    """Run the range test for `cfg` into the run directory-to-be, claimed for the whole command (training then
    claims it again); (that directory, the rate, a provenance note)."""
    from mnistlab.experiments.lr_find import lr_find

    claim = claim_dir(args.out, f"{cfg.preset}-ensemble" if args.ensemble else cfg.preset,
                      kind="ensemble" if args.ensemble else "run", overwrite=args.overwrite)
    out = claim.path
    result = lr_find(config=cfg, out=claim.work, data_dir=args.data_dir)
    if not args.quiet:
        print(f"lr-find: training with lr {result.suggestion:.3g}, {result.method} (lr_find.png, lr_find.json in "
              f"{out})", flush=True)
    return out, result.suggestion, f"Learning rate {result.suggestion:.3g} from lr-find (lr_find.json)."
