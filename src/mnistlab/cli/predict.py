"""`mnistlab predict`: classify dataset samples (Exercise 4) or your own digit images with a saved model."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mnistlab.cli.common import add_data_options, positive_int
from mnistlab.inference.predict import (
    classify_indices,
    classify_tensors,
    dataset_samples,
    load_images,
    load_model,
    show_inputs,
)


def indices(text: str) -> list[int]:
    """"0,5,9" or "0-4,9" -> [0, 5, 9] / [0, 1, 2, 3, 4, 9]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected indices like 0,5,9 or 0-9, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"expected indices like 0,5,9 or 0-9, got {text!r}")
    return out


def add_model_options(p: argparse.ArgumentParser, many: bool = False) -> None:
    """--model and --trust-pickle, shared by predict, evaluate and export; `many`: --model may be repeated."""
    p.add_argument("--model", metavar="M", action="append" if many else "store",
                   help="a run directory or a model file (.safetensors, .pt, .ckpt, .pkl, .ts, .onnx); default: "
                        "the latest run under ./runs" + ("; repeat it to evaluate an ensemble" if many else ""))
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a pickled whole model: this runs code from the file; only for files "
                        "you trust")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify dataset samples or your own images with a saved model",
                       description="Classify samples of the dataset (--index) or image files (--image; "
                                   "preprocessed like MNIST: grayscale, inverted if dark-on-light, cropped, "
                                   "fitted to 20x20, centred by mass in 28x28).")
    add_model_options(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--index", type=indices, metavar="I,J,K", help="dataset indices, e.g. 0,5,9 or 0-9")
    what.add_argument("--image", nargs="+", metavar="FILE", help="image files (PNG, JPEG, GIF, BMP, ...)")
    p.add_argument("--split", choices=["train", "test"], default="test", help="split for --index")
    p.add_argument("--top-k", type=positive_int, default=3, help="classes to list per input (default 3)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--show", metavar="OUT.png", help="also write the inputs as the model saw them")
    add_data_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_model(args.model, trust_pickle=args.trust_pickle)
    if args.index is not None:
        results = classify_indices(loaded, args.index, args.split, args.data_dir, args.top_k)
        tensors = list(dataset_samples(loaded, args.index, args.split, args.data_dir)[0]) if args.show else []
    else:
        tensors, blanks = load_images(args.image)
        results = classify_tensors(loaded, tensors, args.image, blanks, args.top_k)
    if args.show:
        show_inputs(tensors, results, args.show)
    if args.format == "json":
        print(json.dumps(results, indent=2))
    else:
        table(loaded, results, args)
    return 0


def table(loaded: Any, results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    acc = f", test accuracy {loaded.test_acc:.2f}%" if loaded.test_acc is not None else ""
    print(f"model {loaded.name} ({loaded.format}, {loaded.params:,} parameters{acc}): {loaded.path}")
    t = Table()
    t.add_column(f"{args.split} index" if args.index is not None else "image")
    if args.index is not None:
        t.add_column("label")
    t.add_column("prediction")
    t.add_column(f"top {args.top_k}")
    for r in results:
        row = [str(r["input"])] + ([str(r["label"])] if "label" in r else [])
        if r["blank"]:
            row += ["blank", "blank image: no digit found, nothing to classify"]
        else:
            mark = "" if r.get("correct", True) else " (wrong)"
            row += [f"{r['prediction']}{mark}", "  ".join(f"{c}: {p:.1%}" for c, p in r["top_k"])]
        t.add_row(*row)
    console.print(t)
    if args.show:
        print(f"what the model saw: {args.show}")
