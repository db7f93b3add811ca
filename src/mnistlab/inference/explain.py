"""What a model learned and why it answered what it did: its first convolution's filters, the feature maps of an
input at each convolution, and attributions (which pixels made it say "7") computed by Captum.

    loaded = load_model("runs/notebook-...")
    att = attribute(loaded, images, "ig")              # images (N, 28, 28) in [0, 1]; the predicted classes
    att.maps, att.delta                                # (N, 28, 28) heat maps, IG's convergence delta per image
    first_filters(loaded), feature_maps(loaded, image) # None / [] for a model without a convolution
    explain(loaded, inputs, methods=["ig"], out="explain-dir")   # the figures, explain.json and README.md

Attributions are taken with respect to the pixels in [0, 1] as a person sees them (the model's input
normalisation is applied inside), against a blank (all-zero) image, in fp32 with the model in eval mode.
The attribution methods are Captum's; none is written here.
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.data import get_spec
from mnistlab.errors import MnistlabError
from mnistlab.files.runs import atomic_write, write_json
from mnistlab.inference.predict import LoadedModel

METHODS = {
    "ig": "Integrated Gradients",
    "saliency": "Saliency (|gradient|)",
    "occlusion": "Occlusion (4x4 patches)",
    "gradcam": "Grad-CAM (last convolution)",
}
# Integrated Gradients: 64 Gauss-Legendre steps keep the completeness gap |delta| under 1% of f(x) - f(blank)
# (plus a hundredth of a logit) on MNIST test digits (tests/test_explain.py); 32 steps left 2% on some. One
# image's 64 steps are one batch through the model (about 16 ms for the notebook model on 2 CPU cores);
# IG_ROWS rows per forward pass bound the memory of many images.
IG_STEPS = 64
IG_ROWS = 256
OCCLUSION_WINDOW = (1, 4, 4)  # (channel, height, width) of the blanked patch
OCCLUSION_STRIDES = (1, 2, 2)
EXTRA = "pip install 'mnistlab[explain]'"
_LOCK = threading.Lock()  # Captum's layer methods hook the shared module: one attribution at a time


def captum_available() -> bool:
    return importlib.util.find_spec("captum") is not None


def _captum():
    try:
        import captum.attr
    except ImportError:
        raise MnistlabError(f"attributions need Captum, which is not installed: {EXTRA}") from None
    return captum.attr


def check_method(method: str) -> str:
    if method not in METHODS:
        raise MnistlabError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return method


class PixelModel(nn.Module):
    """The loaded model on pixels in [0, 1]: its input normalisation applied first, fp32 logits out."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.net = loaded.model
        self.mean, self.std = loaded.normalise or (0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean or self.std != 1.0:
            x = (x - self.mean) / self.std
        return self.net(x).float()


def _check_gradients(loaded: LoadedModel, method: str) -> None:
    if loaded.format == "onnx" and method != "occlusion":
        raise MnistlabError(f"{METHODS[method]} needs gradients, which an ONNX graph does not give; use the "
                            "run's model.safetensors, or --method occlusion")


def convolutions(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The model's Conv2d layers in the order they were defined (the order the zoo's models apply them)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _batch(images: Any) -> torch.Tensor:
    """(N, 1, 28, 28) float32 pixels in [0, 1] from (N, 28, 28) / (28, 28) floats in [0, 1] or uint8."""
    x = torch.as_tensor(images)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.reshape(-1, 1, 28, 28).contiguous()


def _check_target(target: int) -> int:
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target <= 9:
        raise MnistlabError(f"target class must be an integer 0-9, got {target!r}")
    return target


@dataclass
class Attribution:
    """Per image: the heat map (28, 28), the class it explains, and (IG) the convergence delta."""

    method: str
    targets: list[int]
    maps: torch.Tensor  # (N, 28, 28) float32
    settings: dict[str, Any]
    delta: list[float] | None = None
    probabilities: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 10))  # (N, 10), fp32


def attribute(loaded: LoadedModel, images: Any, method: str = "ig", targets: int | Sequence[int] | None = None,
              n_steps: int = IG_STEPS) -> Attribution:
    """Attributions of `images` for `targets` (one class for all, one per image, or None: each image's
    predicted class) by `method` (one of METHODS), in fp32 with the model in eval mode."""
    check_method(method)
    ca = _captum()
    x = _batch(images)
    _check_gradients(loaded, method)
    model = PixelModel(loaded).eval()
    loaded.model.eval()
    with _LOCK, torch.autocast("cpu", enabled=False), torch.enable_grad():
        with torch.no_grad():
            probs = loaded.probabilities(x[:, 0])
        if targets is None:
            t = probs.argmax(1).tolist()
        elif isinstance(targets, int):
            t = [_check_target(targets)] * len(x)
        else:
            t = [_check_target(int(v)) for v in targets]
            if len(t) != len(x):
                raise MnistlabError(f"{len(t)} targets for {len(x)} images")
        target = torch.tensor(t, dtype=torch.long)
        delta = None
        if method == "ig":
            ig = ca.IntegratedGradients(model)
            maps, d = ig.attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=n_steps,
                                   internal_batch_size=max(n_steps, IG_ROWS // n_steps * n_steps),
                                   return_convergence_delta=True)
            delta = [float(v) for v in d]
            settings = {"n_steps": n_steps, "integration": "gausslegendre", "baseline": "blank image (zeros)"}
        elif method == "saliency":
            maps = ca.Saliency(model).attribute(x.clone().requires_grad_(), target=target, abs=True)
            settings = {"abs": True}
        elif method == "occlusion":
            with torch.no_grad():
                maps = ca.Occlusion(model).attribute(x, sliding_window_shapes=OCCLUSION_WINDOW,
                                                     strides=OCCLUSION_STRIDES, baselines=0.0, target=target,
                                                     perturbations_per_eval=64)
            settings = {"window": list(OCCLUSION_WINDOW), "strides": list(OCCLUSION_STRIDES), "baseline": 0.0}
        else:
            convs = convolutions(loaded.model)
            if not convs:
                raise MnistlabError(f"Grad-CAM needs a convolution, and model {loaded.name!r} has none; use "
                                    "--method ig, saliency or occlusion")
            name, layer = convs[-1]
            cam = ca.LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
            maps = ca.LayerAttribution.interpolate(cam.detach(), (28, 28), "bilinear")
            settings = {"layer": name, "layer_shape": list(cam.shape[1:]), "upsampling": "bilinear",
                        "relu": True}
    return Attribution(method, t, maps.detach().float().reshape(-1, 28, 28), settings, delta, probs)


def first_filters(loaded: LoadedModel) -> tuple[str, torch.Tensor] | None:
    """(name, (C_out, kh, kw)) weights of the first convolution (averaged over input channels), or None."""
    convs = convolutions(loaded.model)
    if not convs:
        return None
    name, conv = convs[0]
    return name, conv.weight.detach().float().mean(1).cpu()


def feature_maps(loaded: LoadedModel, image: Any) -> list[tuple[str, torch.Tensor]]:
    """[(name, (C, H, W))] the output of each convolution for one image (forward hooks; [] without one)."""
    convs = convolutions(loaded.model)
    if not convs:
        return []
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            seen[name] = output.detach().float()[0].clone()  # before an in-place ReLU changes it

        return hook

    with _LOCK:
        handles = [conv.register_forward_hook(keep(name)) for name, conv in convs]
        try:
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                PixelModel(loaded).eval()(_batch(image)[:1])
        finally:
            for h in handles:
                h.remove()
    return [(name, seen[name]) for name, _ in convs if name in seen]


# ---------------------------------------------------------------- the explain folder
@dataclass
class Input:
    """One thing to explain: a (28, 28) image in [0, 1] as the model sees it, where it came from."""

    name: str  # "test #8", "my_digit.png"
    slug: str  # for file names: "test-8", "my_digit"
    image: torch.Tensor
    label: int | None = None
    blank: bool = False


def explain_inputs(loaded: LoadedModel, indices: Sequence[int] = (), images: Sequence[str | Path] = (),
                   mistakes: int = 0, data_dir: str | Path | None = None) -> list[Input]:
    """Test-set samples by index, the user's images (preprocessed as `predict` does) and the `mistakes` most
    confident test-set mistakes, as Inputs."""
    from mnistlab.data.preprocess import BLANK_CONTRAST
    from mnistlab.inference.evaluate import predict_split
    from mnistlab.inference.predict import dataset_samples, load_images
    from mnistlab.training.engine import confident_mistakes

    out: list[Input] = []
    if indices:
        x, y = dataset_samples(loaded, list(indices), "test", data_dir)
        out += [Input(f"test #{i}", f"test-{i}", im, int(t), float(im.max()) < BLANK_CONTRAST)
                for i, im, t in zip(indices, x, y.tolist(), strict=True)]
    if images:
        tensors, blanks = load_images(images)
        out += [Input(Path(p).name, slug(Path(p).stem), t, None, b)
                for p, t, b in zip(images, tensors, blanks, strict=True)]
    if mistakes:
        p = predict_split(loaded, "test", data_dir)
        for i in confident_mistakes(p.labels, p.preds, p.confidence, mistakes).tolist():
            out.append(Input(f"test #{i}", f"mistake-test-{i}", p.images[i].float() / 255.0, int(p.labels[i])))
    return out


def _classes(loaded: LoadedModel) -> list[str]:
    try:
        return list(get_spec(loaded.dataset).classes)
    except MnistlabError:
        return [str(i) for i in range(10)]


def _compare_class(probs: torch.Tensor, pred: int, label: int | None, target: int | None) -> tuple[int, str]:
    """The class shown beside the prediction: --target, else the true class of a mistake, else the runner-up."""
    if target is not None:
        return target, "target"
    if label is not None and label != pred:
        return label, "true class"
    return int(probs.topk(2).indices[1]), "runner-up"


@dataclass
class Explanations:
    """What `explanations` computed for a model and its inputs, before anything is drawn or written."""

    loaded: LoadedModel
    inputs: Sequence[Input]
    live: list[Input]  # the inputs that are not blank, in order: the rows of every tensor below
    methods: Sequence[str]
    target: int | None
    filters: tuple[str, torch.Tensor] | None  # the first convolution's name and weights
    feature_maps: list[list[tuple[str, torch.Tensor]]]  # per live input, each convolution's output
    results: dict[str, tuple[Attribution, Attribution]]  # per method: for the predicted class, the second class
    probs: torch.Tensor  # (live, classes)
    preds: list[int]
    notes: list[str]

    def second(self, i: int) -> tuple[int, str]:
        """The class shown beside live input i's prediction, and why it is that one."""
        return _compare_class(self.probs[i], self.preds[i], self.live[i].label, self.target)


def explanations(loaded: LoadedModel, inputs: Sequence[Input], methods: Sequence[str] = ("ig",),
                 target: int | None = None) -> Explanations:
    """Per method, each input's attributions for its predicted class and a second class (`--target`, else the
    true class of a mistake, else the runner-up); the first convolution's filters and each input's feature
    maps. Checks the methods, the target and that something is left to explain (MnistlabError otherwise)."""
    for m in methods:
        check_method(m)
        _check_gradients(loaded, m)
    if "gradcam" in methods and not convolutions(loaded.model):
        raise MnistlabError(f"Grad-CAM needs a convolution, and model {loaded.name!r} has none; use --method ig, "
                            "saliency or occlusion")
    if target is not None:
        _check_target(target)
    _captum()
    if not inputs:
        raise MnistlabError("nothing to explain: give --index, --image or --mistakes")
    live = [x for x in inputs if not x.blank]
    notes = [f"{x.name}: blank image, no digit found: nothing to explain" for x in inputs if x.blank]
    if not live:
        raise MnistlabError("every input is blank: nothing to explain")
    filters = first_filters(loaded)
    if filters is None:
        notes.append(f"model {loaded.name!r} has no convolution: no filters or feature maps to show")
    images = torch.stack([x.image.reshape(28, 28).float() for x in live])
    results: dict[str, tuple[Attribution, Attribution]] = {}
    for m in methods:
        pred_att = attribute(loaded, images, m)
        probs = pred_att.probabilities
        second = [_compare_class(p, t, x.label, target) for p, t, x in zip(probs, pred_att.targets, live, strict=True)]
        results[m] = (pred_att, attribute(loaded, images, m, [c for c, _ in second]))
    probs = next(iter(results.values()))[0].probabilities
    maps = [feature_maps(loaded, x.image) for x in live] if filters is not None else []
    return Explanations(loaded, inputs, live, methods, target, filters, maps, results, probs,
                        probs.argmax(1).tolist(), notes)


def write_explanations(e: Explanations, out: str | Path = "explain", title: str = "") -> dict[str, Any]:
    """Write into `out`: the first convolution's filters, each input's feature maps, per method one heat-map
    figure per input (predicted class beside the second class) and one of every input, explain.json and a
    README.md saying what each file shows. Returns explain.json's content."""
    from mnistlab import plots

    out = _fresh_folder(out)
    loaded, names, files = e.loaded, _classes(e.loaded), {}
    if e.filters is not None:
        fname, w = e.filters
        files["filters"] = plots.filters_plot(
            w, out / f"filters-{fname.replace('.', '-')}.png",
            title=f"{loaded.name}: the {len(w)} learned {w.shape[1]}x{w.shape[2]} filters of {fname}").name
    records: list[dict[str, Any]] = [{"input": x.name, "label": x.label, "blank": True} for x in e.inputs if x.blank]
    for i, x in enumerate(e.live):
        n, pred = f"{i + 1:02d}-{x.slug}", e.preds[i]
        other, why = e.second(i)
        rec: dict[str, Any] = {
            "input": x.name, "label": x.label, "blank": False, "prediction": pred,
            "probabilities": [round(float(v), 6) for v in e.probs[i]], "files": {}, "attributions": [],
        }
        if e.feature_maps:
            rec["files"]["feature_maps"] = plots.feature_maps_plot(
                x.image, e.feature_maps[i], out / f"{n}-feature-maps.png",
                title=f"{x.name}: the output of each convolution of {loaded.name} (before its activation)").name
        for m, (pa, oa) in e.results.items():
            for att, cls, role in ((pa, pred, "predicted"), (oa, other, why)):
                rec["attributions"].append({
                    "method": m, "class": cls, "role": role, "settings": att.settings,
                    "sum": round(float(att.maps[i].sum()), 6),
                    "convergence_delta": None if att.delta is None else round(att.delta[i], 6)})
            rec["files"][m] = plots.attribution_plot(
                [_row(x, names, pred, e.probs[i], pa.maps[i], other, why, oa.maps[i])],
                out / f"{n}-{m}.png", title=f"{METHODS[m]}: which pixels speak for each class").name
        records.append(rec)
    for m, (pa, oa) in e.results.items():
        rows = [_row(x, names, e.preds[i], e.probs[i], pa.maps[i], oa.targets[i], e.second(i)[1], oa.maps[i])
                for i, x in enumerate(e.live)]
        files[f"all-{m}"] = plots.attribution_plot(
            rows, out / f"all-{m}.png", title=f"{METHODS[m]} of {loaded.name}: red pixels speak for the class, "
                                               "blue against it").name
    result = {"model": loaded.name, "file": str(loaded.path), "format": loaded.format, "dataset": loaded.dataset,
              "methods": {m: METHODS[m] for m in e.methods}, "target": e.target, "files": files,
              "notes": e.notes, "inputs": records}
    write_json(out / "explain.json", result)
    atomic_write(out / "README.md", readme(result, title))
    return result


def _check_out(out: str | Path) -> Path:
    """`out` if explain may write there: a new folder, an empty one or an earlier explain's."""
    out = Path(out)
    if out.exists() and not (out / "explain.json").is_file() and any(out.iterdir()):
        raise MnistlabError(f"{out} exists and was not written by mnistlab explain; choose another --out")
    return out


def _fresh_folder(out: str | Path) -> Path:
    """`out` emptied (an earlier explain's: no figure of other inputs stays behind) or made."""
    out = _check_out(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def explain(loaded: LoadedModel, inputs: Sequence[Input], methods: Sequence[str] = ("ig",),
            target: int | None = None, out: str | Path = "explain", title: str = "") -> dict[str, Any]:
    """`explanations` of `inputs`, written into `out` (`write_explanations`); returns explain.json's content.
    An `out` that holds anything but an earlier explain is refused before anything is computed."""
    _check_out(out)
    return write_explanations(explanations(loaded, inputs, methods, target), out, title)


def _row(x: Input, names: list[str], pred: int, probs: torch.Tensor, pmap: torch.Tensor, other: int, why: str,
         omap: torch.Tensor) -> dict[str, Any]:
    label = f"{x.name}" + (f", true {names[x.label]}" if x.label is not None else "")
    return {"image": x.image, "label": label,
            "maps": [(f"predicted {names[pred]} ({float(probs[pred]):.0%})", pmap),
                     (f"{why} {names[other]} ({float(probs[other]):.0%})", omap)]}


def readme(result: dict[str, Any], title: str = "") -> str:
    """The folder's README.md: what was explained and what every file shows, for a reader who has no code."""
    lines = [f"# {title or 'Why the model answered what it did'}", "",
             f"Model: `{result['model']}` from `{result['file']}` ({result['format']}), dataset {result['dataset']}.",
             "", "## The files", ""]
    files = result["files"]
    if "filters" in files:
        lines.append(f"- `{files['filters']}`: the first convolution's learned filters, each a small grid of "
                     "weights (red positive, blue negative). Each filter is slid over the image; it responds where "
                     "the image looks like it (edges, strokes in one direction, ...).")
    for m, desc in result["methods"].items():
        lines.append(f"- `all-{m}.png`: {desc} for every input, one row each: the input, then the heat map for "
                     "the predicted class, then for a second class (the `--target`, else the true class of a "
                     "mistake, else the runner-up).")
    lines += ["- `NN-<input>-feature-maps.png`: what each convolution computes from that input (one small map "
              "per filter, bright where it responds).",
              "- `NN-<input>-<method>.png`: that input's heat maps on their own.",
              "- `explain.json`: the same in numbers: per input the prediction, the ten probabilities, and per "
              "method and class the settings, the attributions' sum and (Integrated Gradients) the convergence "
              "delta.", "", "## Reading a heat map", "",
              "Red pixels pushed the model towards the class named above the map, blue pixels pushed it away, "
              "white pixels did not matter. The black line is the outline of the digit.", ""]
    explain_methods = {
        "ig": "Integrated Gradients: the image is faded in from a blank one; each pixel gets the share of the "
              "class score it added on the way. The shares add up to score(image) - score(blank); the "
              "convergence delta in explain.json is how far the sum is off (small is good).",
        "saliency": "Saliency: how strongly the class score reacts to a tiny change of each pixel (never blue).",
        "occlusion": "Occlusion: a 4x4 patch is blanked at every position (stride 2); red where blanking it "
                     "lowers the class score.",
        "gradcam": "Grad-CAM: where the last convolution's maps that matter for the class are active, at that "
                   "layer's resolution, stretched to 28x28 (coarse by design; never blue).",
    }
    lines += [f"- {explain_methods[m]}" for m in result["methods"]]
    lines += ["", "## The inputs", "", "| # | input | true | predicted | probability |",
              "| --- | --- | --- | --- | --- |"]
    for i, r in enumerate([r for r in result["inputs"] if not r.get("blank")], 1):
        p = r["prediction"]
        lines.append(f"| {i:02d} | {r['input']} | {'-' if r['label'] is None else r['label']} | {p} | "
                     f"{r['probabilities'][p]:.1%} |")
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_" else "-" for c in text)
    return "-".join(filter(None, keep.split("-")))[:40] or "input"


def heat_png(attribution: torch.Tensor, scale: float | None = None) -> bytes:
    """The heat map as a 28x28 RGBA PNG to lay over the image (plots.heat_rgba)."""
    import io

    from PIL import Image

    from mnistlab.plots import heat_rgba

    buf = io.BytesIO()
    Image.fromarray(heat_rgba(attribution, scale), "RGBA").save(buf, format="PNG")
    return buf.getvalue()
