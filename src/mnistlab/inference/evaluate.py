"""Evaluate a saved model on a whole split: accuracy, per-class accuracy, confusion matrix, worst mistakes.

    result = evaluate_model(load_model("runs/notebook-..."), out="runs/notebook-.../evaluation")
    # writes confusion.png, mistakes.png and evaluation.json into `out`
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab.data import get_spec, load_split
from mnistlab.data.loader import DeviceLoader
from mnistlab.files.runs import write_json
from mnistlab.inference.predict import BATCH, LoadedModel
from mnistlab.plots import confusion_plot, mistakes_plot
from mnistlab.training.engine import confident_mistakes, confusion_matrix, evaluate


@dataclass(frozen=True)
class SplitPredictions:
    """A model's fp32 predictions on every image of a split, in the split's order."""

    split: str
    images: torch.Tensor  # uint8 (N, 28, 28)
    labels: torch.Tensor  # (N,)
    preds: torch.Tensor  # (N,) most probable class
    confidence: torch.Tensor  # (N,) its probability

    def cell(self, true: int, pred: int) -> torch.Tensor:
        """Indices of the images of class `true` predicted as `pred` (one confusion-matrix cell)."""
        return ((self.labels == true) & (self.preds == pred)).nonzero().flatten()


def predict_split(loaded: LoadedModel, split: str = "test", data_dir: str | Path | None = None) -> SplitPredictions:
    """`loaded`'s predictions on every image of `split`, from the engine's one evaluation (`engine.evaluate`,
    fp32, eval mode) over the split's uint8 pixels, scaled exactly as training evaluated them."""
    images, labels = load_split(loaded.dataset, split, data_dir)
    split_loader = DeviceLoader(images, labels, BATCH, normalise=loaded.normalise)
    conf, preds = evaluate(loaded.model, split_loader, predictions=True)["probs"].max(1)
    return SplitPredictions(split, images, labels, preds, conf)


def evaluate_model(loaded: LoadedModel, split: str = "test", data_dir: str | Path | None = None,
                   out: str | Path | None = None, worst: int = 24,
                   predictions: SplitPredictions | None = None) -> dict[str, Any]:
    """Score `loaded` on every image of `split`; with `out`, also write the figures and evaluation.json.

    Returns {"model", "path", "split", "images", "accuracy", "correct", "per_class": [{"class", "images",
    "accuracy"}...], "confusion": 10x10 list, "mistakes": [{"index", "label", "prediction", "confidence"}...]
    (the `worst` most confident wrong predictions), "files": {...}}. Accuracies are percentages.
    `predictions` are `predict_split(loaded, split, data_dir)` when the caller already has them.
    """
    spec = get_spec(loaded.dataset)
    p = predictions if predictions is not None else predict_split(loaded, split, data_dir)
    split, images, labels, preds, conf = p.split, p.images, p.labels, p.preds, p.confidence
    cm = confusion_matrix(labels, preds, len(spec.classes))
    correct = int(cm.diag().sum())
    per_class = [{"class": spec.classes[c], "images": int(cm[c].sum()),
                  "accuracy": 100.0 * float(cm[c, c]) / max(int(cm[c].sum()), 1)} for c in range(len(cm))]
    order = confident_mistakes(labels, preds, conf, worst)
    mistakes = [{"index": int(i), "label": int(labels[i]), "prediction": int(preds[i]),
                 "confidence": round(float(conf[i]), 6)} for i in order]
    result: dict[str, Any] = {
        "model": loaded.name, "path": str(loaded.path), "format": loaded.format, "dataset": loaded.dataset,
        "split": split, "images": len(labels), "correct": correct, "accuracy": 100.0 * correct / len(labels),
        "per_class": per_class, "confusion": cm.tolist(), "mistakes": mistakes, "files": {},
    }
    if out is not None:
        out = Path(out)
        title = f"{loaded.name} on {loaded.dataset} {split}: {result['accuracy']:.2f}% of {len(labels):,}"
        files = {"confusion": confusion_plot(cm, out / "confusion.png", spec.classes, title=title)}
        if len(order):
            files["mistakes"] = mistakes_plot(images[order], labels[order], preds[order], conf[order],
                                              out / "mistakes.png")
        result["files"] = {k: str(v) for k, v in files.items()}
        write_json(out / "evaluation.json", result)
    return result
