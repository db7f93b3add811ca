"""Export a loaded model to another format; an ONNX file is checked with onnxruntime against PyTorch before
it is put in place (the graphs themselves are written by `mnistlab.files.graphs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mnistlab.data import load_split
from mnistlab.errors import MnistlabError
from mnistlab.files.checkpoints import save_model
from mnistlab.files.graphs import load_onnx
from mnistlab.files.runs import atomic_path
from mnistlab.inference.predict import LoadedModel

ONNX_TOLERANCE = 1e-4  # max abs difference of probabilities accepted against PyTorch (fp32)
CHECK_IMAGES = 1000


def onnx_parity(loaded: LoadedModel, onnx_path: str | Path, images: torch.Tensor) -> dict[str, Any]:
    """Compare an ONNX file with PyTorch on images (N, 28, 28) in [0, 1]."""
    module, meta, _ = load_onnx(onnx_path)
    graph = LoadedModel.of(module, meta, Path(onnx_path), "onnx")
    ref, got = loaded.probabilities(images), graph.probabilities(images)
    same = int((ref.argmax(1) == got.argmax(1)).sum())
    return {"images": len(images), "argmax_equal": same, "max_abs_diff": float((ref - got).abs().max()),
            "tolerance": ONNX_TOLERANCE}


def export_model(loaded: LoadedModel, out: str | Path, format: str, data_dir: str | Path | None = None,
                 check_images: int = CHECK_IMAGES) -> dict[str, Any]:
    """Write `loaded` to `out` in `format`; ONNX is checked before it is put in place.

    Returns {"path", "format", "bytes", "check"}: check is onnx_parity's result (ONNX only, else None).
    Raises MnistlabError when the ONNX graph disagrees with PyTorch (argmax or > ONNX_TOLERANCE).
    """
    if loaded.format in ("onnx", "torchscript"):
        raise MnistlabError(f"{loaded.path} is already an exported graph; export from its weights "
                            "(a run directory, .safetensors or .pt) instead")
    check = None
    with atomic_path(out) as tmp:
        save_model(loaded.model, tmp, loaded.meta, format)
        if format == "onnx":
            dataset = (loaded.meta.get("config") or {}).get("dataset", "mnist")
            images = load_split(dataset, "test", data_dir)[0][:check_images].float() / 255.0
            check = onnx_parity(loaded, tmp, images)
            if check["argmax_equal"] != check["images"] or check["max_abs_diff"] > ONNX_TOLERANCE:
                raise MnistlabError(
                    f"ONNX check failed on {check['images']} test images: argmax equal on "
                    f"{check['argmax_equal']}, max abs probability difference {check['max_abs_diff']:.2e} "
                    f"(> {ONNX_TOLERANCE:g} allowed); {out} not written"
                )
    return {"path": str(out), "format": format, "bytes": Path(out).stat().st_size, "check": check}
