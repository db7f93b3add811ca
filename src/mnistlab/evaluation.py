"""Evaluate a saved model on a whole split: accuracy, per-class accuracy, confusion matrix, worst mistakes.

    result = evaluate_model(load_model("runs/notebook-..."), out="runs/notebook-.../evaluation")
    # writes confusion.png, mistakes.png and evaluation.json into `out`
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mnistlab.data import get_spec, load_split
from mnistlab.plots import confusion_plot, mistakes_plot
from mnistlab.predict import LoadedModel
from mnistlab.runs import write_json


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """(classes, classes) int64 counts: row = true class, column = predicted class."""
    return torch.bincount(labels * classes + preds, minlength=classes * classes).reshape(classes, classes)


def evaluate_model(loaded: LoadedModel, split: str = "test", data_dir: str | Path | None = None,
                   out: str | Path | None = None, worst: int = 24) -> dict[str, Any]:
    """Score `loaded` on every image of `split`; with `out`, also write the figures and evaluation.json.

    Returns {"model", "path", "split", "images", "accuracy", "correct", "per_class": [{"class", "images",
    "accuracy"}...], "confusion": 10x10 list, "mistakes": [{"index", "label", "prediction", "confidence"}...]
    (the `worst` most confident wrong predictions), "files": {...}}. Accuracies are percentages.
    """
    spec = get_spec(loaded.dataset)
    images, labels = load_split(loaded.dataset, split, data_dir)
    probs = loaded.probabilities(images)  # uint8: the pixels exactly as training evaluated them
    conf, preds = probs.max(1)
    cm = confusion_matrix(labels, preds, len(spec.classes))
    correct = int(cm.diag().sum())
    per_class = [{"class": spec.classes[c], "images": int(cm[c].sum()),
                  "accuracy": 100.0 * float(cm[c, c]) / max(int(cm[c].sum()), 1)} for c in range(len(cm))]
    wrong = (preds != labels).nonzero().flatten()
    order = wrong[conf[wrong].argsort(descending=True)][:worst]
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
