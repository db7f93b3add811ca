"""`mnistlab evaluate`: test accuracy, per-class accuracy, confusion.png and mistakes.png of a saved model,
or of an ensemble of several (--model repeated)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnistlab.cli.common import add_data_options, positive_int
from mnistlab.cli.predict import add_model_options
from mnistlab.inference.ensemble import evaluate_ensemble
from mnistlab.inference.evaluate import evaluate_model
from mnistlab.inference.predict import load_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy, confusion matrix, worst mistakes",
                       description="Evaluate a saved model on the test split: accuracy, per-class accuracy, "
                                   "confusion.png, mistakes.png and evaluation.json.")
    add_model_options(p, many=True)
    p.add_argument("--out", metavar="DIR", help="where to write the figures (default: <run dir>/evaluation, "
                   "or <model file name>-evaluation beside a model file)")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--worst", type=positive_int, default=24, help="mistakes to show (default 24)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    add_data_options(p)
    p.set_defaults(func=run)


def default_out(model_path: Path, ensemble: bool = False) -> Path:
    if (model_path.parent / "config.json").exists():  # a run directory's model
        return model_path.parent / ("ensemble-evaluation" if ensemble else "evaluation")
    return model_path.with_name(f"{model_path.stem}-evaluation")


def run(args: argparse.Namespace) -> int:
    members = [load_model(m, trust_pickle=args.trust_pickle) for m in (args.model or [None])]
    loaded = members[0]
    out = Path(args.out) if args.out else default_out(loaded.path, ensemble=len(members) > 1)
    if len(members) > 1:
        result = evaluate_ensemble(members, args.split, args.data_dir, out, args.worst)
    else:
        result = evaluate_model(loaded, args.split, args.data_dir, out, args.worst)
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    print(f"model {result['model']} ({result['format']}): {result['path']}")
    if len(members) > 1:
        print(f"ensemble of {len(members)}: " + "  ".join(f"{m.path}: {acc:.2f}%" for m, acc in
                                                           zip(members, result["member_accuracies"], strict=True)))
    print(f"{args.split} accuracy {result['accuracy']:.2f}% ({result['correct']:,}/{result['images']:,})")
    print("per class: " + "  ".join(f"{c['class']}: {c['accuracy']:.1f}%" for c in result["per_class"]))
    worst = min(result["per_class"], key=lambda c: c["accuracy"])
    print(f"weakest class {worst['class']} ({worst['accuracy']:.1f}%); "
          f"{result['images'] - result['correct']:,} mistakes")
    for name, path in result["files"].items():
        print(f"{name}: {path}")
    print(f"all numbers: {out / 'evaluation.json'}")
    return 0
