"""Model files, safe by default: safetensors weights and weights_only-loadable training checkpoints.

The model's name, constructor arguments and training config travel with the weights (safetensors
metadata, checkpoint dict, TorchScript extra file, ONNX metadata_props), so `read_model(path)` needs no
extra flags. Formats (`save_model`, `read_model`):

    safetensors  .safetensors   weights + metadata; never executes anything (the default)
    state_dict   .pt .pth       {"format": "mnistlab-state-dict", "state_dict", "meta"}; weights_only-loadable
    checkpoint   .ckpt          a training checkpoint as RunWriter writes it; weights_only-loadable
    pickle       .pkl .pickle   torch.save(model), the PyTorch tutorial's way; loading runs code from the
                                file, so it is refused unless trusted (trust_pickle=True / --trust-pickle)
    torchscript  .ts .torchscript  traced, input normalisation baked in (feed pixels in [0, 1])
    onnx         .onnx          the same graph for onnxruntime, normalisation baked in
"""

from __future__ import annotations

import copy
import io
import json
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from mnistlab.errors import ConfigError, MnistlabError, UnsafeFileError
from mnistlab.files import graphs
from mnistlab.files.runs import atomic_write
from mnistlab.models import MODELS, build_model, count_params, unwrap
from mnistlab.presets import PRESETS, Config

FORMATS = ("safetensors", "state_dict", "checkpoint", "pickle", "torchscript", "onnx")
EXTENSIONS = {".safetensors": "safetensors", ".pt": "state_dict", ".pth": "state_dict", ".ckpt": "checkpoint",
              ".pkl": "pickle", ".pickle": "pickle", ".ts": "torchscript", ".torchscript": "torchscript",
              ".onnx": "onnx"}
PICKLE_ATTR = "_mnistlab_meta"  # where a pickled model carries its metadata


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
    return atomic_write(path, safetensors_bytes(state, metadata={k: json.dumps(v) for k, v in meta.items()}))


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


def save_checkpoint(path: str | Path, state: Any) -> Path:
    """torch.save(`state`) atomically (a training checkpoint: tensors, numbers, strings, dicts only).

    Serialised in memory first, then written: a failed write is then Python's OSError (a full disk: a
    WriteError with the size it needs), not torch's zip writer's C++ error, and nothing partial is left.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write(path, buf.getbuffer())


def load_checkpoint(path: str | Path) -> Any:
    """A torch.save file loaded with weights_only=True: no code in the file can run.

    A file that needs arbitrary Python objects (a pickled model, a planted payload) raises UnsafeFileError.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols it was not written with
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MnistlabError(f"{path}: not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad, truncated or unsafe file
        if _needs_code(Path(path)):
            raise UnsafeFileError(unsafe_message(path)) from None
        raise MnistlabError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {_first_line(e)})") \
            from None


CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}
SCAN_LIMIT = 64 << 20  # bytes of pickle read when classifying a refused file


def _needs_code(path: Path) -> bool:
    """True when `path` is a well-formed pickle (raw, or torch.save's zip) that imports or calls objects.

    Read with pickletools, which only parses opcodes and never executes them.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                info = next((i for i in z.infolist() if i.filename.endswith("data.pkl")), None)
                if info is None or info.file_size > SCAN_LIMIT:
                    return False
                data = z.read(info)
        else:
            with open(path, "rb") as f:
                data = f.read(SCAN_LIMIT)  # the pickle comes first (legacy torch.save appends raw storages)
            if not data.startswith(b"\x80"):  # binary pickles (protocol 2+) begin with PROTO
                return False
        ops = [op.name for op, _, _ in pickletools.genops(data)]  # raises unless it parses to STOP
    except Exception:  # noqa: BLE001 - anything malformed is simply not a pickle
        return False
    return bool(CODE_OPCODES & set(ops))


def unsafe_message(path: str | Path) -> str:
    """The one-line refusal for a file whose loading would run code from it."""
    return (f"{path}: refusing to load a pickled Python object (e.g. a whole model saved with torch.save(model)): "
            "unpickling runs code from the file, which can do anything your account can; pass --trust-pickle "
            "(trust_pickle=True) only if you trust where it came from, or use a safe format "
            "(mnistlab export --format safetensors, or torch.save(model.state_dict()))")


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def model_from(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
    """Rebuild the model named in `meta` and load `state` into it strictly, in the memory format it was trained
    in (channels_last convolutions round differently, by about 1e-7: the same format gives the same numbers)."""
    if "model" not in meta:
        raise MnistlabError("the file does not say which model it holds (no 'model' in its metadata)")
    model = build_model(meta["model"], **(meta.get("model_args") or {}))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise MnistlabError(f"weights do not fit model {meta['model']!r}: {str(e).splitlines()[0]}") from None
    if (meta.get("config") or {}).get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


# ---------------------------------------------------------------- every format
def format_for(path: str | Path, format: str | None = None) -> str:
    """The format named explicitly, else the one `path`'s extension implies (safetensors when unknown)."""
    if format is not None:
        if format not in FORMATS:
            raise ConfigError(f"unknown model format {format!r}; choose from {', '.join(FORMATS)}")
        return format
    return EXTENSIONS.get(Path(path).suffix.lower(), "safetensors")


def save_model(model: nn.Module, path: str | Path, meta: dict[str, Any], format: str | None = None) -> Path:
    """Write `model` (CPU copy) with `meta` to `path` in `format` (default: from the extension), atomically.

    `meta` should hold at least "model" and "model_args" (see `model_metadata`); "params" is added.
    """
    fmt = format_for(path, format)
    model = unwrap(model)
    meta = {**meta, "params": count_params(model)}
    if fmt == "safetensors":
        return save_safetensors(model, path, meta)
    if fmt in ("torchscript", "onnx"):
        return (graphs.save_torchscript if fmt == "torchscript" else graphs.save_onnx)(model, path, meta)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if fmt == "state_dict":
        return save_checkpoint(path, {"format": "mnistlab-state-dict", "state_dict": state, "meta": meta})
    if fmt == "checkpoint":
        return save_checkpoint(path, {
            "format": "mnistlab-checkpoint", "epoch": int(meta.get("epoch", 0)), "model": state,
            "optimizer": None, "scheduler": None, "rng": {"torch": torch.get_rng_state()},
            "history": list(meta.get("history", [])), "meta": meta,
        })
    carrier = copy.copy(model)  # shares the weights; the metadata rides along as an attribute
    setattr(carrier, PICKLE_ATTR, meta)
    return save_checkpoint(path, carrier)


def read_model(path: str | Path, trust_pickle: bool = False) -> tuple[nn.Module, dict[str, Any], str]:
    """(model in eval mode on the CPU, its metadata, its format) from a file of any format in FORMATS.

    Only a pickled object with `trust_pickle` ever runs code from the file; everything else goes through
    safetensors, torch.load(weights_only=True), TorchScript or onnxruntime.
    """
    path = Path(path)
    if not path.is_file():
        raise MnistlabError(f"{path}: not found" if not path.exists() else f"{path}: not a file")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise MnistlabError(f"{path}: empty file, not a model")
    if path.suffix.lower() == ".onnx":
        return graphs.load_onnx(path)
    if len(head) > 8 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
        state, meta = read_safetensors(path)
        return model_from(state, meta), meta, "safetensors"
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        return graphs.load_torchscript(path)
    try:
        obj = load_checkpoint(path)
    except UnsafeFileError:
        if not trust_pickle:
            raise
        obj = _load_trusted(path)
    return _model_of(obj, path)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_trusted(path: Path) -> Any:
    """torch.load without weights_only: runs code from the file. Only with the user's explicit trust."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - whatever the pickle raises
        raise MnistlabError(f"{path}: cannot be unpickled ({type(e).__name__}: {_first_line(e)})") from None


def _model_of(obj: Any, path: Path) -> tuple[nn.Module, dict[str, Any], str]:
    """Interpret what torch.load returned: our dicts, a plain state_dict, or (trusted) a whole model."""
    try:
        if isinstance(obj, nn.Module):
            meta = getattr(obj, PICKLE_ATTR, None)
            if meta is None:  # torch.save(model) without mnistlab: recognise the model if it is ours
                try:
                    meta = guess_model(obj.state_dict(), path)
                except MnistlabError:
                    meta = {"model": type(obj).__name__}
            if hasattr(obj, PICKLE_ATTR):
                delattr(obj, PICKLE_ATTR)
            return obj.cpu().eval(), dict(meta), "pickle"
        if isinstance(obj, dict) and obj.get("format") == "mnistlab-state-dict":
            return model_from(obj["state_dict"], obj["meta"]), dict(obj["meta"]), "state_dict"
        if isinstance(obj, dict) and obj.get("format") == "mnistlab-checkpoint":
            meta = dict(obj["meta"], epoch=obj.get("epoch"))
            if obj.get("history"):
                meta["test_acc"] = obj["history"][-1].get("test_acc")
            return model_from(obj["model"], obj["meta"]), meta, "checkpoint"
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise MnistlabError(f"{path}: a malformed mnistlab model file ({type(e).__name__}: {e})") from None
    state = plain_state(obj)
    if state is None:
        raise MnistlabError(f"{path}: holds a {type(obj).__name__}, not model weights mnistlab can rebuild")
    meta = guess_model(state, path)
    return model_from(state, meta), meta, "state_dict"


def plain_state(obj: Any) -> dict[str, torch.Tensor] | None:
    """A bare state_dict (torch.save(model.state_dict())), also under a "state_dict"/"model_state_dict" key."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    return None


def guess_model(state: dict[str, torch.Tensor], path: str | Path = "weights") -> dict[str, Any]:
    """Metadata naming the registered model (default arguments) whose state_dict matches `state` exactly."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in MODELS:
        try:
            expected = {k: tuple(v.shape) for k, v in build_model(name).state_dict().items()}
        except (ConfigError, TypeError):
            continue
        if expected == shapes:  # the input normalisation is that of the preset training this model
            normalise = next((c.normalise for c in PRESETS.values() if c.model == name), None)
            return {"format": "mnistlab", "model": name, "model_args": {}, "normalise": normalise,
                    "note": "bare state_dict: model guessed from its weights"}
    raise MnistlabError(f"{path}: a bare state_dict that matches no registered model ({', '.join(MODELS)}); "
                        "save it with mnistlab.files.checkpoints.save_model to keep its metadata")
