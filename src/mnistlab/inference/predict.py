"""Load a saved model (any format, safe by default) and classify dataset samples or the user's own images.

    loaded = load_model("runs/notebook-20260101-120000")        # or a .safetensors/.pt/.ts/.onnx file
    classify_indices(loaded, [0, 5, 9], split="train")          # Exercise 4: samples of the training set
    classify_images(loaded, ["my_digit.png"])                   # photos/scans/drawings, preprocessed like MNIST
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.data import load_split
from mnistlab.data.loader import scale_pixels
from mnistlab.data.preprocess import BLANK_CONTRAST, decode_image, prepare_batch, to_mnist
from mnistlab.errors import MnistlabError
from mnistlab.files.checkpoints import read_model
from mnistlab.files.runs import latest_run
from mnistlab.models import count_params
from mnistlab.training.engine import probabilities

BATCH = 1000  # images per forward pass


@dataclass
class LoadedModel:
    """A model ready to classify: eval mode, on the CPU, with what its file says about it.

    `normalise` is the (mean, std) applied to pixels before the model (None for graphs that bake it in).
    """

    model: nn.Module = field(repr=False)
    meta: dict[str, Any] = field(repr=False)
    name: str
    preset: str | None
    normalise: tuple[float, float] | None
    test_acc: float | None
    params: int
    path: Path
    format: str = "safetensors"

    @classmethod
    def of(cls, model: nn.Module, meta: dict[str, Any], path: Path, fmt: str) -> LoadedModel:
        norm = None if meta.get("normalise_baked") else meta.get("normalise")
        acc = meta.get("test_acc")
        return cls(
            model=model.eval(), meta=meta, name=str(meta.get("model", "unknown")), preset=meta.get("preset"),
            normalise=tuple(norm) if norm else None, test_acc=float(acc) if acc is not None else None,
            params=int(meta.get("params") or count_params(model)), path=path, format=fmt,
        )

    @property
    def dataset(self) -> str:
        return (self.meta.get("config") or {}).get("dataset", "mnist")

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 10) float32 class probabilities, computed in fp32, for images (N, 28, 28) (or (N, 1, 28, 28))
        in [0, 1], or uint8 pixels 0-255 (scaled exactly as the training loader scales them)."""
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
            batches = (scale_pixels(chunk, self.normalise) for chunk in images.reshape(-1, 28, 28).split(BATCH))
        else:
            images = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 28, 28)
            batches = (prepare_batch(list(chunk), self.normalise) for chunk in images.split(BATCH))
        out = [probabilities(self.model(x).float()) for x in batches]
        return torch.cat(out) if out else torch.zeros(0, 10)


def model_file(path: str | Path | None = None) -> Path:
    """The file behind `path`: itself, a run directory's model.safetensors (else checkpoint.pt), or the latest run."""
    if path is None:
        run = latest_run()
        if run is None:
            raise MnistlabError("no trained model found under ./runs; train one first (mnistlab train "
                                "--epochs 1) or pass --model FILE|RUN_DIR")
        path = run
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "checkpoint.pt"):
            if (path / name).is_file():
                return path / name
        raise MnistlabError(f"{path}: no model.safetensors or checkpoint.pt here (not a run directory?)")
    return path


def load_model(path: str | Path | None = None, trust_pickle: bool = False) -> LoadedModel:
    """A saved model from a file of any format, a run directory, or (None) the latest run under ./runs.

    Nothing in the file can run code unless `trust_pickle` is given for a pickled whole model, which is
    otherwise refused with UnsafeFileError.
    """
    file = model_file(path)
    model, meta, fmt = read_model(file, trust_pickle=trust_pickle)
    return LoadedModel.of(model, meta, file, fmt)


def load_images(paths: Sequence[str | Path]) -> tuple[list[torch.Tensor], list[bool]]:
    """Decode and preprocess user images like MNIST: ((28, 28) tensors in [0, 1], blank flags)."""
    tensors, blanks = [], []
    for p in paths:
        t, blank = to_mnist(decode_image(p))
        tensors.append(t)
        blanks.append(blank)
    return tensors, blanks


def classify_tensors(loaded: LoadedModel, tensors: Sequence[torch.Tensor], inputs: Sequence[Any],
                     blanks: Sequence[bool], top_k: int = 3) -> list[dict[str, Any]]:
    """One result dict per (28, 28) input; a blank input gets prediction None, never a guess."""
    if not tensors:
        return []
    probs = loaded.probabilities(torch.stack([t.reshape(28, 28) for t in tensors]))
    k = max(1, min(top_k, probs.shape[1]))
    results = []
    for name, p, blank in zip(inputs, probs, blanks, strict=True):
        values, classes = p.topk(k)
        results.append({
            "input": name,
            "prediction": None if blank else int(classes[0]),
            "probabilities": [round(float(v), 6) for v in p],
            "blank": bool(blank),
            "top_k": [] if blank else [[int(c), round(float(v), 6)] for c, v in zip(classes, values, strict=True)],
        })
    return results


def classify_images(loaded: LoadedModel, paths: Sequence[str | Path], top_k: int = 3) -> list[dict[str, Any]]:
    """Classify image files (any size, either polarity); bad files raise InputImageError (one line)."""
    tensors, blanks = load_images(paths)
    return classify_tensors(loaded, tensors, [str(p) for p in paths], blanks, top_k)


def dataset_samples(loaded: LoadedModel, indices: Sequence[int], split: str = "test",
                    data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 28, 28) in [0, 1], labels (N,)) of `indices` in the model's dataset split."""
    if split not in ("train", "test"):
        raise MnistlabError(f"unknown split {split!r}; use train or test")
    images, labels = load_split(loaded.dataset, split, data_dir)
    bad = [i for i in indices if not 0 <= i < len(labels)]
    if bad:
        raise MnistlabError(f"index {bad[0]} out of range: the {split} split has {len(labels):,} images "
                            f"(0..{len(labels) - 1})")
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    return images[idx].float() / 255.0, labels[idx]


def classify_indices(loaded: LoadedModel, indices: Sequence[int], split: str = "test",
                     data_dir: str | Path | None = None, top_k: int = 3) -> list[dict[str, Any]]:
    """Classify samples of the model's dataset by index; each result also has the true "label"."""
    images, labels = dataset_samples(loaded, indices, split, data_dir)
    blanks = [float(im.max()) < BLANK_CONTRAST for im in images]
    results = classify_tensors(loaded, list(images), list(indices), blanks, top_k)
    for r, y in zip(results, labels.tolist(), strict=True):
        r["label"] = int(y)
        r["correct"] = r["prediction"] == r["label"]
    return results


def show_inputs(tensors: Sequence[torch.Tensor], results: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """A grid of what the model saw (the preprocessed 28x28 inputs), captioned with its predictions."""
    from mnistlab.plots import sample_grid

    names = [str(d) for d in range(10)] + ["blank"]
    preds = [10 if r["blank"] else r["prediction"] for r in results]
    probs = [0.0 if r["blank"] else r["top_k"][0][1] for r in results]
    if all("label" in r for r in results):  # dataset samples: prediction against the true label
        return sample_grid(torch.stack(list(tensors)), [r["label"] for r in results], out, preds=preds,
                           probs=probs, class_names=names, title="what the model saw")
    return sample_grid(torch.stack(list(tensors)), preds, out, class_names=names,
                       title="what the model saw (prediction above each)")
