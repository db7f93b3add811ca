"""What a model gets wrong, from its predictions on a split: the confusion matrix and the most confident
mistakes. `evaluate_model` (a saved model) and the TensorBoard summaries (the model just trained) share them."""

from __future__ import annotations

import torch


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """(classes, classes) int64 counts: row = true class, column = predicted class."""
    return torch.bincount(labels * classes + preds, minlength=classes * classes).reshape(classes, classes)


def confident_mistakes(labels: torch.Tensor, preds: torch.Tensor, confidence: torch.Tensor,
                       k: int | None = None) -> torch.Tensor:
    """Indices of the wrong predictions, most confident first (the first `k` of them when given)."""
    wrong = (preds != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True, stable=True)]
    return order if k is None else order[:k]
