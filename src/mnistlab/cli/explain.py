"""`mnistlab explain`: what a saved model learned (filters, feature maps) and why it answered what it did
(attribution heat maps by Captum), for dataset samples, your own images or its most confident mistakes."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistlab.cli.common import add_data_options, positive_int
from mnistlab.cli.predict import add_model_options, indices
from mnistlab.errors import MnistlabError


def target_class(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 9:
        raise argparse.ArgumentTypeError(f"expected a class 0-9, got {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    from mnistlab.inference.explain import METHODS

    p = sub.add_parser("explain", help="see what a model learned and why it answered what it did",
                       description="Write a folder of figures a student can read without code: the first "
                                   "convolution's filters, each input's feature maps, and per method the heat map "
                                   "of the pixels that speak for the predicted class and for a second class "
                                   "(--target, else the true class of a mistake, else the runner-up), with "
                                   "explain.json and a README.md. Needs Captum (pip install 'mnistlab[explain]').")
    add_model_options(p)
    p.add_argument("--index", type=indices, action="extend", metavar="I,J,K", help="test-set indices, e.g. 0,5,9")
    p.add_argument("--image", nargs="+", action="extend", metavar="FILE",
                   help="your own images, preprocessed as `mnistlab predict` does")
    p.add_argument("--mistakes", type=positive_int, metavar="K", help="the K most confident test-set mistakes")
    p.add_argument("--method", action="append", choices=list(METHODS), metavar="|".join(METHODS),
                   help="attribution method (repeat for several; default ig: Integrated Gradients)")
    p.add_argument("--target", type=target_class, metavar="CLASS",
                   help="explain this class (0-9) beside the predicted one, for every input (default: the "
                        "true class of a mistake, else the runner-up)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN/explain for a run directory, else "
                                                "./explain-<model file name>); replaced if explain wrote it")
    add_data_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnistlab.inference.explain import EXTRA, captum_available

    if not captum_available():
        raise MnistlabError(f"explain needs Captum, which is not installed: {EXTRA}")
    if not (args.index or args.image or args.mistakes):
        raise MnistlabError("nothing to explain: give --index, --image and/or --mistakes")
    from mnistlab.inference.explain import explain, explain_inputs
    from mnistlab.inference.predict import load_model

    loaded = load_model(args.model, trust_pickle=args.trust_pickle)
    if args.dataset and args.dataset != loaded.dataset:
        raise MnistlabError(f"the model was trained on {loaded.dataset}, not {args.dataset}")
    inputs = explain_inputs(loaded, args.index or [], args.image or [], args.mistakes or 0, args.data_dir)
    out = Path(args.out) if args.out else default_out(loaded.path)
    result = explain(loaded, inputs, args.method or ["ig"], args.target, out)
    for note in result["notes"]:
        print(f"note: {note}")
    for r in result["inputs"]:
        if r.get("blank"):
            continue
        p = r["prediction"]
        label = "" if r["label"] is None else f", true {r['label']}"
        delta = [a["convergence_delta"] for a in r["attributions"] if a["convergence_delta"] is not None]
        ig = f", IG delta {max(map(abs, delta)):.2g}" if delta else ""
        print(f"{r['input']}: predicted {p} ({r['probabilities'][p]:.1%}){label}{ig}")
    print(f"explanations: {out} (start with {out / 'README.md'})")
    return 0


def default_out(model_path: Path) -> Path:
    """RUN/explain for a run's model, else ./explain-<file stem>."""
    if (model_path.parent / "config.json").is_file():
        return model_path.parent / "explain"
    return Path(f"explain-{model_path.stem}")
