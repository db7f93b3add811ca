"""`mnistlab export`: write a saved model as ONNX, TorchScript, safetensors, state_dict or a pickled model."""

from __future__ import annotations

import argparse

from mnistlab.cli.common import add_data_options
from mnistlab.cli.predict import add_model_options
from mnistlab.files.checkpoints import FORMATS, format_for
from mnistlab.inference.export import CHECK_IMAGES, export_model
from mnistlab.inference.predict import load_model

CHOICES = [f for f in FORMATS if f != "checkpoint"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a saved model (ONNX checked against PyTorch)",
                       description="Export a model. ONNX and TorchScript graphs take pixels in [0, 1] (the "
                                   "model's input normalisation is baked in) and return logits; the ONNX file "
                                   f"is checked with onnxruntime on {CHECK_IMAGES:,} test images first.")
    add_model_options(p)
    p.add_argument("--format", choices=CHOICES, help="default: from the --out extension (.onnx, .ts, "
                   ".safetensors, .pt, .pkl)")
    p.add_argument("--out", required=True, metavar="FILE", help="output file")
    add_data_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fmt = format_for(args.out, args.format)
    loaded = load_model(args.model, trust_pickle=args.trust_pickle)
    report = export_model(loaded, args.out, fmt, args.data_dir)
    print(f"wrote {report['path']} ({fmt}, {report['bytes']:,} bytes) from {loaded.path}")
    check = report["check"]
    if check is not None:
        print(f"onnxruntime vs PyTorch on {check['images']:,} test images: argmax identical on "
              f"{check['argmax_equal']:,}/{check['images']:,}, max abs probability difference "
              f"{check['max_abs_diff']:.2e} (limit {check['tolerance']:g})")
    if fmt in ("onnx", "torchscript"):
        print("input 'pixels': float32 (N, 1, 28, 28) in [0, 1], white digit on black (normalisation baked in); "
              "output 'logits' (N, 10)")
    if fmt == "pickle":
        print("note: a pickled model runs code when loaded; loading it needs --trust-pickle")
    return 0
