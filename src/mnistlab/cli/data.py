"""`mnistlab data fetch | verify | show`: get the datasets, check them, look at them."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mnistlab.cli.common import add_data_options, positive_float, positive_int
from mnistlab.data import dataset_dir, fetch, get_spec, load_split, verify


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="fetch, verify and look at the datasets",
        description="Fetch, verify and look at the datasets (checksummed IDX files).",
    )
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    f = actions.add_parser(
        "fetch",
        help="get the four IDX files and verify them",
        description="Get the dataset's four IDX files, trying the files already there, --from, "
        "the official mirrors, then offline fallbacks; every file is MD5-verified.",
    )
    add_data_options(f)
    f.add_argument(
        "--from",
        dest="source",
        nargs="+",
        metavar="PATH",
        help="folder(s) holding the raw or .gz files, or the files themselves",
    )
    f.add_argument(
        "--force", action="store_true", help="delete files that fail verification and fetch them again"
    )
    f.add_argument(
        "--timeout", type=positive_float, default=5.0, help="seconds per mirror request (default 5)"
    )
    f.set_defaults(func=run_fetch)

    v = actions.add_parser(
        "verify",
        help="check every file's MD5",
        description="Check the MD5 of every file of the dataset against the published one.",
    )
    add_data_options(v)
    v.set_defaults(func=run_verify)

    s = actions.add_parser(
        "show",
        help="write a labelled grid of random samples",
        description="Write a PNG grid of random samples, each captioned with its label.",
    )
    add_data_options(s)
    s.add_argument("--split", choices=["train", "test"], default="train", help="default: train")
    s.add_argument("--count", type=positive_int, default=40, help="number of samples (default 40)")
    s.add_argument("--seed", type=int, default=0, help="which samples (default 0)")
    s.add_argument("--out", type=Path, default=Path("grid.png"), help="PNG to write (default grid.png)")
    s.set_defaults(func=run_show)


def run_fetch(args: argparse.Namespace) -> int:
    folder = fetch(
        args.dataset or "mnist", args.data_dir, source=args.source, timeout=args.timeout, force=args.force
    )
    print(f"{args.dataset or 'mnist'}: ready in {folder}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    name = args.dataset or "mnist"
    folder = dataset_dir(name, args.data_dir)
    for fname, md5 in verify(name, args.data_dir).items():
        print(f"ok  {md5}  {folder / fname}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from mnistlab.plots import sample_grid  # matplotlib only when drawing

    name = args.dataset or "mnist"
    images, labels = load_split(name, args.split, args.data_dir)
    count = min(args.count, len(images))
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[:count]
    out = sample_grid(
        images[idx],
        labels[idx],
        args.out,
        class_names=get_spec(name).classes,
        title=f"{name} {args.split}: {count} random samples (seed {args.seed})",
    )
    print(f"wrote {out}")
    return 0
