"""Figures written as PNG files, each saved atomically. Figures are built with matplotlib's object API, not
pyplot, so drawing needs no display and leaves the caller's matplotlib backend alone."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def _figure(*grid: int, figsize: tuple[float, float], **kwargs: Any):
    """A figure that belongs to no pyplot window, and its axes (as `plt.subplots` returns them)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def _savefig(fig: Figure, out: str | Path, dpi: int = 120) -> Path:
    """Save `fig` to a temporary file beside `out` and rename it into place."""
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
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _numpy(x: Any) -> np.ndarray:
    """A numpy copy of a tensor (any device) or array-like."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


def figure_rgb(fig: Figure, dpi: int = 100) -> np.ndarray:
    """The figure rendered to an (H, W, 3) uint8 array (for image summaries such as TensorBoard's)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


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
    return _savefig(grid_figure(images, labels, preds, probs, cols, title, class_names), out)


def grid_figure(images: Any, labels: Any, preds: Any = None, probs: Any = None, cols: int = 10,
                title: str | None = None, class_names: Sequence[str] | None = None) -> Figure:
    """The figure `sample_grid` saves."""
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
    h, w = imgs.shape[1:]
    cap = 0.55 * h if preds_np is not None else 0.3 * h  # caption room above each image, in pixels
    cell_w, cell_h = w + 0.12 * w, h + cap
    # One axes showing every image at its place: 30 sub-axes took 3 s to draw, this takes a tenth of that.
    fig, ax = _figure(figsize=(cols * 1.1, rows * (1.55 if preds_np is not None else 1.25)))
    ax.set_axis_off()
    ax.set_xlim(0, cols * cell_w)
    ax.set_ylim(rows * cell_h, 0)
    for i in range(n):
        x0, y0 = (i % cols) * cell_w + 0.06 * w, (i // cols) * cell_h + cap
        ax.imshow(imgs[i], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest",
                  extent=(x0, x0 + w, y0 + h, y0))
        caption, color = name(labels_np[i]), "black"
        if preds_np is not None:
            conf = f" ({probs_np[i]:.0%})" if probs_np is not None else ""
            caption = f"pred {name(preds_np[i])}{conf}\ntrue {name(labels_np[i])}"
            color = "tab:green" if preds_np[i] == labels_np[i] else "tab:red"
        ax.text(x0 + w / 2, y0 - 1, caption, ha="center", va="bottom", fontsize=7, color=color)
    ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def confusion_plot(cm: Any, out: str | Path, class_names: Sequence[str] | None = None,
                   title: str | None = None) -> Path:
    """A confusion matrix (rows: true class, columns: predicted), each cell's count written in it.

    Colours show each row's share (so errors stand out whatever the class sizes). Returns `out`.
    """
    return _savefig(confusion_figure(cm, class_names, title), out)


def confusion_figure(cm: Any, class_names: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """The figure `confusion_plot` saves."""
    counts = _numpy(cm).astype(np.int64)
    k = counts.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(k)]
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = _figure(figsize=(0.55 * k + 2.2, 0.55 * k + 1.6))
    ax.imshow(np.sqrt(share), cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                dark = share[i, j] > 0.4
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if dark else ("black" if i == j else "tab:red"))
    long = max(map(len, names)) > 2
    ax.set_xticks(range(k), names, rotation=45 if long else 0, ha="right" if long else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def mistakes_plot(images: Any, true: Any, pred: Any, probs: Any, out: str | Path) -> Path:
    """The given misclassified images, each captioned "pred P (confidence) / true T". Returns `out`."""
    return _savefig(mistakes_figure(images, true, pred, probs), out)


def mistakes_figure(images: Any, true: Any, pred: Any, probs: Any) -> Figure:
    """The figure `mistakes_plot` saves."""
    return grid_figure(images, true, pred, probs, cols=8, title="mistakes: prediction (confidence) and true class")


def _epochs(history: Sequence[dict[str, Any]]) -> list[int]:
    return [int(r["epoch"]) for r in history]


def curves_plot(history: Sequence[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Train/validation/test accuracy (left) and loss (right) per epoch of one run's metrics (validation when
    the run holds it out). Returns `out`."""
    fig, (acc, loss) = _figure(1, 2, figsize=(9, 3.4))
    ep = _epochs(history)
    for split, style in (("train", "o-"), ("val", "^-"), ("test", "s-")):
        if history and f"{split}_acc" in history[0]:
            acc.plot(ep, [r[f"{split}_acc"] for r in history], style, label=split)
            loss.plot(ep, [r[f"{split}_loss"] for r in history], style, label=split)
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    loss.set(xlabel="epoch", ylabel="loss", title="loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _savefig(fig, out)


def compare_plot(histories: dict[str, Sequence[dict[str, Any]]], out: str | Path, title: str = "") -> Path:
    """Overlaid test (solid) and train (dashed) accuracy curves, one colour per optimizer. Returns `out`."""
    fig, ax = _figure(figsize=(6.5, 3.8))
    for i, (label, history) in enumerate(histories.items()):
        color = f"C{i}"
        ep = _epochs(history)
        ax.plot(ep, [r["test_acc"] for r in history], "o-", color=color, label=f"{label} test")
        ax.plot(ep, [r["train_acc"] for r in history], "--", color=color, alpha=0.7, label=f"{label} train")
    return _epoch_axes(fig, ax, out, "accuracy (%)", title or "optimizers from the same initial weights")


def sweep_plot(curves: dict[str, Sequence[dict[str, Any]]], points: Sequence[dict[str, Any]], out: str | Path,
               chosen: dict[str, Any] | None = None, title: str = "") -> Path:
    """Validation accuracy per epoch of each swept setting (`curves`: label -> history), with the grid's
    configurations (`points`: rows with label, model_epoch, val_acc) marked and the `chosen` row starred.
    Returns `out`."""
    fig, ax = _figure(figsize=(6.5, 3.8))
    colors = {label: f"C{i}" for i, label in enumerate(curves)}
    for label, history in curves.items():
        ax.plot(_epochs(history), [r["val_acc"] for r in history], "-", color=colors[label], label=label)
    for p in points:
        ax.plot(p["model_epoch"], p["val_acc"], "o", color=colors.get(p["label"], "k"), markersize=7)
    if chosen is not None:
        ax.plot(chosen["model_epoch"], chosen["val_acc"], "*", color="k", markersize=14, label="chosen")
    return _epoch_axes(fig, ax, out, "validation accuracy (%)", title or "sweep: validation accuracy per epoch")


def lr_find_plot(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float],
                 marks: dict[str, float], out: str | Path, title: str = "") -> Path:
    """The range test: loss per step (faint) and smoothed against the learning rate (log scale), with
    vertical lines at the `marks` (label -> rate). Returns `out`."""
    fig, ax = _figure(figsize=(6.5, 3.8))
    ax.plot(lrs, losses, "-", color="C0", alpha=0.25, linewidth=0.8, label="loss per step")
    ax.plot(lrs, smoothed, "-", color="C0", label="smoothed loss")
    for i, (label, lr) in enumerate(marks.items(), 1):
        ax.axvline(lr, color=f"C{i}", linestyle="--", linewidth=1, label=f"{label}: {lr:.2g}")
    ax.set_xscale("log")
    top = max(smoothed[0], min(smoothed) * 2.0)  # the divergence tail would squash the interesting part
    ax.set_ylim(min(smoothed) * 0.9 if min(smoothed) > 0 else None, top * 1.05)
    ax.set(xlabel="learning rate", ylabel="training loss", title=title or "learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _savefig(fig, out)


def _epoch_axes(fig: Figure, ax: Any, out: str | Path, ylabel: str, title: str) -> Path:
    """Label, grid and legend an accuracy-per-epoch axis (integer epochs), then save the figure."""
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return _savefig(fig, out)


# ---------------------------------------------------------------- what the network learned (inference/explain.py)
HEAT_CMAP = "RdBu_r"  # red: pixels speaking for the class, blue: against it, white: no say


def _mosaic(maps: np.ndarray, cols: int, pad: int = 1) -> np.ndarray:
    """(C, H, W) -> one (rows*(H+pad), cols*(W+pad)) array of the maps in a grid, NaN (blank) between them."""
    c, h, w = maps.shape
    rows = math.ceil(c / cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), np.nan)
    for i in range(c):
        y, x = (i // cols) * (h + pad), (i % cols) * (w + pad)
        out[y : y + h, x : x + w] = maps[i]
    return out


def filters_plot(weights: Any, out: str | Path, title: str = "") -> Path:
    """A convolution's learned filters (C, kh, kw), one tile each, on a shared scale around zero (red: positive
    weight, blue: negative). Returns `out`."""
    w = _numpy(weights).astype(np.float64)
    cols = min(8, len(w))
    m = np.abs(w).max() or 1.0
    mosaic = _mosaic(w, cols)
    fig, ax = _figure(figsize=(cols * 0.75 + 0.9, math.ceil(len(w) / cols) * 0.75 + 0.7))
    im = ax.imshow(mosaic, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
    ax.set_axis_off()
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="weight")
    ax.set_title(title or f"{len(w)} learned filters", fontsize=9)
    fig.tight_layout()
    return _savefig(fig, out)


def feature_maps_plot(image: Any, layers: Sequence[tuple[str, Any]], out: str | Path, title: str = "",
                      max_maps: int = 32) -> Path:
    """The input image, then each layer's feature maps (name, (C, H, W)), the first `max_maps` channels of
    each, every map scaled to its own range (bright: strong response). Returns `out`."""
    img = _numpy(image).reshape(28, 28)
    fig, axes = _figure(1, 1 + len(layers), figsize=(2.2 + 4.2 * len(layers), 3.4), squeeze=False,
                        gridspec_kw={"width_ratios": [1] + [3] * len(layers)})
    axes = axes[0]
    axes[0].imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    for ax, (name, maps) in zip(axes[1:], layers, strict=True):
        a = _numpy(maps).astype(np.float64)[:max_maps]
        lo, hi = a.min(axis=(1, 2), keepdims=True), a.max(axis=(1, 2), keepdims=True)
        a = (a - lo) / np.where(hi > lo, hi - lo, 1.0)
        ax.imshow(_mosaic(a, 8), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        shown = f"first {len(a)} of {len(_numpy(maps))}" if len(_numpy(maps)) > len(a) else f"{len(a)}"
        ax.set_title(f"{name}: {shown} maps, {a.shape[1]}x{a.shape[2]}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _savefig(fig, out)


def attribution_plot(rows: Sequence[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Heat maps over images: each row is {"image": (28, 28) in [0, 1], "label": text, "maps": [(caption,
    (28, 28) attribution), ...]}. The first column shows the image; each heat map is drawn in red (for the
    class) and blue (against it), on one scale per row, with the digit's outline on top. Returns `out`."""
    if not rows:
        raise ValueError("attribution_plot needs at least one row")
    cols = 1 + max(len(r["maps"]) for r in rows)
    w, cap = 28, 12  # cell width and caption room, in pixels
    cell_w, cell_h = w + 4, w + cap
    fig, ax = _figure(figsize=(cols * 1.45, len(rows) * 1.6 + (0.3 if title else 0)))
    ax.set_axis_off()
    ax.set_xlim(0, cols * cell_w)
    ax.set_ylim(len(rows) * cell_h, 0)
    for i, r in enumerate(rows):
        img = _numpy(r["image"]).reshape(28, 28).astype(np.float64)
        y0 = i * cell_h + cap
        ext = (2, 2 + w, y0 + w, y0)
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest", extent=ext)
        ax.text(2 + w / 2, y0 - 1, r.get("label", ""), ha="center", va="bottom", fontsize=7)
        maps = [(c, _numpy(m).reshape(28, 28).astype(np.float64)) for c, m in r["maps"]]
        m = max([np.abs(a).max() for _, a in maps] + [1e-12])
        for j, (caption, a) in enumerate(maps, 1):
            x0 = j * cell_w + 2
            ext = (x0, x0 + w, y0 + w, y0)
            ax.imshow(a, cmap=HEAT_CMAP, vmin=-m, vmax=m, interpolation="bilinear", extent=ext)
            ax.contour(np.linspace(x0 + 0.5, x0 + w - 0.5, 28), np.linspace(y0 + 0.5, y0 + w - 0.5, 28), img,
                       levels=[0.5], colors="k", linewidths=0.5, alpha=0.6)
            ax.text(x0 + w / 2, y0 - 1, caption, ha="center", va="bottom", fontsize=7)
    ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _savefig(fig, out)


def heat_rgba(attribution: Any, scale: float | None = None) -> np.ndarray:
    """An (H, W) attribution as (H, W, 4) uint8 RGBA to lay over the image: red for, blue against, and
    transparent where a pixel has no say (opacity grows with |attribution| / `scale`, default its max)."""
    from matplotlib import colormaps

    a = _numpy(attribution).astype(np.float64)
    m = scale or float(np.abs(a).max()) or 1.0
    rgba = colormaps[HEAT_CMAP](np.clip(0.5 + 0.5 * a / m, 0.0, 1.0))
    rgba[..., 3] = np.clip(np.abs(a) / m, 0.0, 1.0) ** 0.5
    return np.rint(rgba * 255).astype(np.uint8)


def histogram_plot(values: Sequence[float], out: str | Path, xlabel: str, title: str = "") -> Path:
    """A histogram of `values` (bins of a tenth of the range, at least 0.1 wide), counts on the y axis."""
    fig, ax = _figure(figsize=(6, 3))
    values = list(values)
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    width = max((hi - lo) / 10, 0.1)
    bins = np.arange(lo, hi + width, width) if values else 10
    ax.hist(values, bins=bins, color="#4c72b0", edgecolor="white")
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    ax.yaxis.get_major_locator().set_params(integer=True)
    return _savefig(fig, out)
