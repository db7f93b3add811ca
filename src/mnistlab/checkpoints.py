"""Model files, safe by default: safetensors weights and weights_only-loadable training checkpoints.

The model's name, constructor arguments and training config travel with the weights (safetensors
metadata, checkpoint dict), so `load_model(path)` needs no extra flags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from mnistlab.errors import MnistlabError
from mnistlab.models import build_model
from mnistlab.presets import Config
from mnistlab.runs import atomic_path


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_metadata(cfg: Config, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What is needed to rebuild and feed the model: its name, arguments, preset and input normalisation."""
    meta = {
        "format": "mnistlab",
        "model": cfg.model,
        "model_args": cfg.model_args,
        "preset": cfg.preset,
        "normalise": cfg.normalise,
        "config": cfg.to_dict(),
    }
    meta.update(extra or {})
    return meta


def save_safetensors(model: nn.Module, path: str | Path, meta: dict[str, Any]) -> Path:
    """Weights as safetensors, `meta` JSON-encoded into the header's metadata."""
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
    return Path(path)


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) of a safetensors file; never executes code."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        state = load_file(str(path))
    except FileNotFoundError:
        raise MnistlabError(f"{path}: not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise MnistlabError(f"{path}: not a readable safetensors file ({e})") from None
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return state, meta


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """A training checkpoint (tensors, numbers, strings, dicts only), written atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint loaded with weights_only=True: no code in the file can run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MnistlabError(f"{path}: not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad or unsafe file
        raise MnistlabError(f"{path}: cannot be loaded safely ({type(e).__name__}: {str(e).splitlines()[0]})") \
            from None


def model_from(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
    """Rebuild the model named in `meta` and load `state` into it strictly."""
    if "model" not in meta:
        raise MnistlabError("the file does not say which model it holds (no 'model' in its metadata)")
    model = build_model(meta["model"], **(meta.get("model_args") or {}))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise MnistlabError(f"weights do not fit model {meta['model']!r}: {str(e).splitlines()[0]}") from None
    return model.eval()
