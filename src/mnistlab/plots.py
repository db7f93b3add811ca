"""Figures written as PNG files (headless: the Agg backend), each saved atomically."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _savefig(fig: Figure, out: str | Path, dpi: int = 120) -> Path:
    """Save `fig` to a temporary file beside `out`, rename it into place, and close the figure."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = out.suffix.lstrip(".").lower() or "png"
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _numpy(x: Any) -> np.ndarray:
    """A numpy copy of a tensor (any device) or array-like."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


def sample_grid(
    images: Any,
    labels: Any,
    out: str | Path,
    preds: Any = None,
    probs: Any = None,
    cols: int = 10,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """A grid of images, each captioned with its label (and prediction, green if right, red if wrong).

    `images`: (N, 28, 28) or (N, 1, 28, 28), uint8 or float; `labels`, `preds`: (N,) class indices;
    `probs`: (N,) confidence of each prediction in [0, 1]. Returns `out`.
    """
    imgs = _numpy(images)
    if imgs.ndim == 4:
        imgs = imgs[:, 0]
    labels_np = _numpy(labels).astype(int)
    preds_np = None if preds is None else _numpy(preds).astype(int)
    probs_np = None if probs is None else _numpy(probs).astype(float)
    n = len(imgs)
    if n == 0:
        raise ValueError("sample_grid needs at least one image")
    name = (lambda k: class_names[k]) if class_names else str  # noqa: E731
    vmax = 255 if imgs.dtype == np.uint8 or imgs.max() > 1 else 1
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * 1.1, rows * (1.55 if preds_np is not None else 1.25)), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(imgs[i], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        caption, color = name(labels_np[i]), "black"
        if preds_np is not None:
            conf = f" ({probs_np[i]:.0%})" if probs_np is not None else ""
            caption = f"pred {name(preds_np[i])}{conf}\ntrue {name(labels_np[i])}"
            color = "tab:green" if preds_np[i] == labels_np[i] else "tab:red"
        ax.set_title(caption, fontsize=7, color=color, pad=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _savefig(fig, out)
