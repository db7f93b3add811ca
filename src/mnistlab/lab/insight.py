"""The lab report's pictures of what the trained notebook network learned (question 4) and why it makes its
most confident mistakes: its filters, the feature maps of one test digit, and Integrated Gradients of the
mistakes for the predicted and the true class side by side (inference/explain.py; the last needs Captum)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnistlab import plots
from mnistlab.inference.explain import METHODS, attribute, captum_available, feature_maps, first_filters
from mnistlab.inference.predict import dataset_samples, load_model

DIGIT = 0  # the test digit whose feature maps question 4 shows (a 7)
MISTAKES = 8


def insight_figures(run_dir: str | Path, mistakes: list[dict[str, Any]],
                    data_dir: str | Path | None = None) -> dict[str, Path]:
    """filters.png, feature-maps.png and (with Captum) mistakes-ig.png in `run_dir`, from its model.safetensors;
    `mistakes` are evaluate_model's rows (index, label, prediction), most confident first."""
    run_dir = Path(run_dir)
    loaded = load_model(run_dir / "model.safetensors")
    files: dict[str, Path] = {}
    filt = first_filters(loaded)
    if filt is not None:
        name, w = filt
        files["filters"] = plots.filters_plot(
            w, run_dir / "filters.png", title=f"the {len(w)} learned {w.shape[1]}x{w.shape[2]} filters of {name}")
        x, y = dataset_samples(loaded, [DIGIT], "test", data_dir)
        files["feature_maps"] = plots.feature_maps_plot(
            x[0], feature_maps(loaded, x[0]), run_dir / "feature-maps.png",
            title=f"test image #{DIGIT} (a {int(y[0])}) through {name}: one map per filter")
    rows = mistakes[:MISTAKES]
    if rows and captum_available():
        idx = [r["index"] for r in rows]
        x, _ = dataset_samples(loaded, idx, "test", data_dir)
        pred = attribute(loaded, x, "ig", [r["prediction"] for r in rows])
        true = attribute(loaded, x, "ig", [r["label"] for r in rows])
        p = pred.probabilities
        figure_rows = [{"image": x[i], "label": f"test #{r['index']}",
                        "maps": [(f"why {r['prediction']} ({float(p[i, r['prediction']]):.0%})", pred.maps[i]),
                                 (f"why {r['label']} ({float(p[i, r['label']]):.0%}, true)", true.maps[i])]}
                       for i, r in enumerate(rows)]
        files["mistakes_ig"] = plots.attribution_plot(
            figure_rows, run_dir / "mistakes-ig.png",
            title=f"{METHODS['ig']}: red speaks for the class, blue against it")
    return files
