"""Deployable graphs: TorchScript and ONNX files with the model's input normalisation baked in.

Graphs take `pixels`: float32 (N, 1, 28, 28) in [0, 1], white digit on black (MNIST's polarity), and return
`logits` (N, 10); apply softmax for probabilities. The mnistlab metadata rides along (ONNX
metadata_props["mnistlab"], TorchScript extra file "mnistlab.json"). onnx and onnxruntime are imported only
when an ONNX file is written or read (they take seconds to import).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnistlab.errors import MnistlabError
from mnistlab.files.runs import atomic_path
from mnistlab.models import unwrap

META_KEY = "mnistlab"  # ONNX metadata_props key
META_FILE = "mnistlab.json"  # TorchScript extra file


class PixelInput(nn.Module):
    """`model` fed raw pixels in [0, 1]: its input normalisation (mean, std) is applied first."""

    def __init__(self, model: nn.Module, normalise: tuple[float, float] | None) -> None:
        super().__init__()
        self.model = model
        self.normalised = normalise is not None
        mean, std = normalise if normalise is not None else (0.0, 1.0)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.normalised:
            pixels = (pixels - self.mean) / self.std
        return self.model(pixels)


def graph_of(model: nn.Module, meta: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """A CPU, eval-mode copy of `model` taking pixels in [0, 1], and the metadata saying so."""
    if meta.get("normalise_baked"):
        raise MnistlabError("this model is already an exported graph; export from its weights "
                            "(a run directory, .safetensors or .pt) instead")
    normalise = meta.get("normalise")
    graph = PixelInput(copy.deepcopy(unwrap(model)).cpu().eval(), tuple(normalise) if normalise else None)
    meta = {**meta, "normalise_baked": True,
            "input": "pixels: float32 (N, 1, 28, 28) in [0, 1], white digit on black",
            "output": "logits: (N, 10); softmax gives the probabilities"}
    return graph.eval(), meta


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation warnings and log lines."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def save_torchscript(model: nn.Module, path: str | Path, meta: dict[str, Any]) -> Path:
    """A traced TorchScript module taking pixels in [0, 1], with the metadata as an extra file."""
    graph, meta = graph_of(model, meta)
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(graph, torch.rand(2, 1, 28, 28))
            with atomic_path(path) as tmp:
                torch.jit.save(traced, str(tmp), _extra_files={META_FILE: json.dumps(meta)})
    except (RuntimeError, TypeError) as e:
        raise MnistlabError(f"cannot export {meta.get('model')!r} to TorchScript: {e}") from None
    return Path(path)


def save_onnx(model: nn.Module, path: str | Path, meta: dict[str, Any]) -> Path:
    """A single-file ONNX graph (dynamic batch) taking pixels in [0, 1], with the metadata in metadata_props."""
    graph, meta = graph_of(model, meta)
    try:
        with _quiet():
            program = torch.onnx.export(
                graph, (torch.rand(2, 1, 28, 28),), dynamo=True, input_names=["pixels"],
                output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
            )
            program.model.metadata_props[META_KEY] = json.dumps(meta)
            with atomic_path(path) as tmp:
                program.save(str(tmp), external_data=False)
    except ImportError as e:
        raise MnistlabError(f"ONNX export needs the export extras (pip install 'mnistlab[export]'): {e}") \
            from None
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
        raise MnistlabError(f"cannot export {meta.get('model')!r} to ONNX: {type(e).__name__}: {e}") from None
    return Path(path)


def load_torchscript(path: str | Path) -> tuple[nn.Module, dict[str, Any], str]:
    """(module, metadata, "torchscript"); a TorchScript file holds no Python pickle of arbitrary objects."""
    extra = {META_FILE: ""}
    try:
        with _quiet():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # noqa: BLE001
        raise MnistlabError(f"{path}: not a readable TorchScript file ({type(e).__name__})") from None
    meta = json.loads(extra[META_FILE] or "{}") or {"model": "torchscript", "normalise_baked": True}
    return module.eval(), meta, "torchscript"


class OnnxModule(nn.Module):
    """An onnxruntime session behind the nn.Module call interface (CPU, float32 in, float32 logits out)."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def load_onnx(path: str | Path) -> tuple[nn.Module, dict[str, Any], str]:
    """(OnnxModule, metadata, "onnx") through onnxruntime on the CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MnistlabError("loading ONNX needs onnxruntime (pip install 'mnistlab[export]')") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own kinds
        raise MnistlabError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None
    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    meta = json.loads(raw) if raw else {"model": "onnx", "normalise_baked": True}
    return OnnxModule(session), meta, "onnx"
