"""Options shared by the subcommands that train (train, compare, sweep, lab, bench)."""

from __future__ import annotations

import argparse
from typing import Any

from mnistlab.presets import PRESETS, parse_opt


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def lr_or_find(text: str) -> float | str:
    """A positive learning rate, or "find" (run the range test first and use its suggestion)."""
    return "find" if text.strip().lower() == "find" else positive_float(text)


def add_device_option(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--device", default=default, help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=None, choices=["mnist", "fashion-mnist"], help="default: mnist")
    p.add_argument("--data-dir", default=None,
                   help="data root holding one folder per dataset (default: $MNISTLAB_DATA, else ~/.cache/mnistlab)")


def add_training_options(p: argparse.ArgumentParser, *, sweepable: bool = False, lr_find: bool = False,
                         optimizer: bool = True) -> None:
    """--preset and every override of it. With `sweepable`, --lr/--epochs/--batch-size are left to the caller;
    with `lr_find`, --lr also takes "find"; without `optimizer`, --optimizer and --opt are (compare names its
    optimizers and their arguments its own way)."""
    p.add_argument("--preset", default="notebook", help=f"recipe to start from: {', '.join(PRESETS)}")
    if not sweepable:
        p.add_argument("--epochs", type=positive_int, help="number of epochs")
        p.add_argument("--lr", type=lr_or_find if lr_find else positive_float,
                       help="learning rate" + (", or find: run lr-find first and train with its suggestion"
                                               if lr_find else ""))
        p.add_argument("--batch-size", type=positive_int, help="global batch size")
    if optimizer:
        p.add_argument("--optimizer", help="any torch.optim class, case-insensitive (adam, sgd, adamw, ...)")
        p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="optimizer argument (repeatable)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    add_device_option(p)
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"],
                   help="training precision (default auto: bf16 where the hardware computes it natively); "
                        "evaluation is always fp32")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--cuda-graphs", action="store_true", default=None,
                   help="compile and replay the model's steps as CUDA graphs (mode reduce-overhead; CUDA only)")
    p.add_argument("--channels-last", action="store_true", default=None, help="channels_last memory format")
    p.add_argument("--double-softmax", action="store_true", default=None,
                   help="reproduce the notebook's softmax-before-CrossEntropyLoss quirk")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="weight averaging: evaluate and save a moving average of the weights (e.g. 0.999)")
    p.add_argument("--subset", type=positive_int, help="train on the first N training images")
    p.add_argument("--test-subset", type=positive_int, metavar="N",
                   help="score every epoch on the first N test images only (a quick look; default: all 10,000)")
    p.add_argument("--val", type=int, help="hold out N training images as a validation split")
    p.add_argument("--early-stop", type=positive_int, metavar="PATIENCE",
                   help="stop when validation accuracy has not improved for PATIENCE epochs; keep the best epoch")
    add_tensorboard_option(p)
    add_data_options(p)


def add_tensorboard_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None,
                   help="write no TensorBoard event files into the run directory")


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The Config overrides the user gave (unset options are None and leave the preset alone)."""
    over: dict[str, Any] = {}
    for key in ("epochs", "lr", "batch_size", "optimizer", "seed", "device", "amp", "compile", "cuda_graphs",
                "channels_last", "double_softmax", "ema", "subset", "test_subset", "val", "early_stop", "dataset",
                "tensorboard"):
        value = getattr(args, key, None)
        if value is not None:
            over[key] = value
    if getattr(args, "opt", None):
        over["opt_args"] = parse_opt(args.opt)
    return over

